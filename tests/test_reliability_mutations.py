"""Property: a mutated file gives a probekit error or the identical data, never a raw exception and
never other numbers. For each format probekit writes and reads back, hypothesis mutates a valid file
(truncate, flip bits, insert or delete bytes; in its JSON: change a value's type, drop a key or an
item, duplicate a key with the same or another value, or only reorder / re-indent it) and loads it.

Formats: Direction and TunedLens (safetensors: the container's header, the probekit header inside
it, the bytes), report JSON, the activation store (index.json and a shard), a checkpoint with a
manifest (the shipped reader organism) and a study cache (a fine-tune with its losses.json).
Each test counts its cases and outcomes and prints them (run with -s to see them).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import probekit
from probekit.errors import ProbekitError
from probekit.files import MANIFEST, write_manifest
from probekit.hooks import ActivationStore
from probekit import tiny
from probekit.readout.lens import TunedLens
from probekit.report import ScanReport
from probekit.steering import Direction

from _mutate import apply_bytes, apply_json, byte_mutation, json_mutation, safetensors_join, safetensors_parts
from _stores import tiny_store

pytestmark = pytest.mark.usefixtures("one_thread")
# The same examples on every run (CI must not fail on which mutations a run happens to draw); set
# PROBEKIT_EXPLORE=1 to draw new ones (how the overflowing number and the renamed checksum key were found).
_EXPLORE = os.environ.get("PROBEKIT_EXPLORE") == "1"
CHEAP = settings(max_examples=500, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                 derandomize=not _EXPLORE)
SLOW = settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                derandomize=not _EXPLORE)


def outcome(load, same, counts: Counter, expect_same: bool) -> None:
    """Load; a ProbekitError or identical data pass, anything else fails the property."""
    import warnings

    counts["cases"] += 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = load()
    except ProbekitError:
        counts["probekit error"] += 1
        assert not expect_same, "a mutation that keeps the data was refused"
        return
    assert same(got), "the mutated file loaded with other data"
    counts["identical data"] += 1


def report_counts(name: str, counts: Counter) -> None:
    print(f"\n{name}: {dict(counts)}")
    assert counts["cases"] >= 50 and counts["cases"] == counts["probekit error"] + counts["identical data"]
    assert counts["probekit error"] > 0 and counts["identical data"] > 0  # both outcomes were exercised


def container_mutation():
    """A mutation of a safetensors file: its bytes, its header JSON, or (Direction) the JSON inside it."""
    return st.one_of(st.tuples(st.just("bytes"), byte_mutation()), st.tuples(st.just("header"), json_mutation()),
                     st.tuples(st.just("inner"), json_mutation()))


def mutate_container(data: bytes, m: tuple, inner_key: str | None) -> tuple[bytes, bool]:
    where, mm = m
    if where == "bytes":
        return apply_bytes(data, mm), False
    header, rest = safetensors_parts(data)
    if where == "header" or inner_key is None:
        text, same = apply_json(header, mm)
        return safetensors_join(text, rest), same
    h = json.loads(header)
    h["__metadata__"][inner_key], same = apply_json(h["__metadata__"][inner_key], mm)
    return safetensors_join(json.dumps(h), rest), same


def mutate_container_files(data: bytes, inner_key: str | None, load, same, counts: Counter, tmp_path: Path) -> None:
    """Write each mutation of the safetensors file ``data`` and load it (the property, over CHEAP's examples)."""
    @CHEAP
    @given(container_mutation())
    def run(m):
        mutated, keep = mutate_container(data, m, inner_key)
        path = tmp_path / "m.safetensors"
        path.write_bytes(mutated)
        outcome(lambda: load(path), same, counts, keep)

    run()


# ----------------------------------------------------------------------------- Direction
def test_mutated_direction_files(tmp_path):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 2
    acts = {f"lm.{i}.resid": torch.randn(40, 6, generator=g) + y[:, None] for i in range(2)}
    d = Direction.leace(acts, y)
    d.meta.update(model="m", fit_images=["a", "b"])
    src = tmp_path / "d.safetensors"
    d.save(src)
    data, counts = src.read_bytes(), Counter()

    def same(b: Direction) -> bool:
        return ((b.points, b.method, b.meta, list(b.erasers)) == (d.points, d.method, d.meta, list(d.erasers))
                and all(torch.equal(b.basis(p), d.basis(p)) and b.basis(p).dtype == d.basis(p).dtype for p in d.points)
                and all(torch.equal(getattr(b.erasers[p], a), getattr(e, a)) for p, e in d.erasers.items()
                        for a in ("mean", "left", "right")))

    mutate_container_files(data, "probekit", Direction.load, same, counts, tmp_path)
    report_counts("Direction", counts)


# ----------------------------------------------------------------------------- TunedLens
def test_mutated_tuned_lens_files(tmp_path):
    lens = TunedLens(6, ["lm.0.resid", "lm.1.resid"], meta={"model": "m"})
    with torch.no_grad():
        for i, p in enumerate(lens.parameters()):
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    src = tmp_path / "lens.safetensors"
    lens.save(src)
    data, counts = src.read_bytes(), Counter()
    want = lens.state_dict()

    def same(b: TunedLens) -> bool:
        got = b.state_dict()
        return (b.points, b.meta) == (lens.points, lens.meta) and set(got) == set(want) and all(
            torch.equal(got[k], v) and got[k].dtype == v.dtype for k, v in want.items())

    mutate_container_files(data, "meta", TunedLens.load, same, counts, tmp_path)
    report_counts("TunedLens", counts)


# ----------------------------------------------------------------------------- report JSON
@pytest.fixture(scope="module")
def report(llava):
    ims, y = tiny.fixture_images(12, 32, seed=3), [i % 2 for i in range(12)]
    return probekit.scan(llava, ims, y, "What?", points="lm.*.resid", positions="last", cv=2, n_boot=10, topk=3,
                         targets=["red"], progress=False)


def test_mutated_report_json(report):
    text, counts = report.to_json(), Counter()
    assert ScanReport.from_json(text) == report

    @CHEAP
    @given(st.one_of(st.tuples(st.just("bytes"), byte_mutation()), st.tuples(st.just("json"), json_mutation())))
    def run(m):
        if m[0] == "bytes":
            mutated, keep = apply_bytes(text.encode(), m[1]), False
        else:
            mutated, keep = apply_json(text, m[1])
        outcome(lambda: ScanReport.from_json(mutated), lambda r: r == report, counts, keep)

    run()
    report_counts("report JSON", counts)


# ----------------------------------------------------------------------------- the activation store
@pytest.fixture(scope="module")
def store(llava, tmp_path_factory):
    d = tmp_path_factory.mktemp("mut") / "s"
    tiny_store(llava, d, positions=("last", "image_mean"))
    s = ActivationStore.open(d)
    return d, s["lm.0.resid"].clone(), dict(s.meta), s.positions("lm.0.resid")


def test_mutated_store_index_and_shard(store, tmp_path):
    src, ref, meta, positions = store
    counts = Counter()
    index = (src / "index.json").read_text()
    shard = (src / "shard-00001.safetensors").read_bytes()

    def load(d):
        s = ActivationStore.open(d)
        return s["lm.0.resid"], s.meta, s.positions("lm.0.resid")

    def same(got) -> bool:
        t, m, pos = got
        return torch.equal(t, ref) and t.dtype == ref.dtype and m == meta and pos == positions

    @CHEAP
    @given(st.one_of(st.tuples(st.just("index-bytes"), byte_mutation()), st.tuples(st.just("index"), json_mutation()),
                     st.tuples(st.just("shard"), container_mutation())))
    def run(m):
        d = tmp_path / "s"
        if d.exists():
            shutil.rmtree(d)
        shutil.copytree(src, d)
        if m[0] == "index-bytes":
            (d / "index.json").write_bytes(apply_bytes(index.encode(), m[1]))
            keep = False
        elif m[0] == "index":
            text, keep = apply_json(index, m[1])
            (d / "index.json").write_text(text)
        else:
            data, keep = mutate_container(shard, m[1], None)
            (d / "shard-00001.safetensors").write_bytes(data)
        outcome(lambda: load(d), same, counts, keep)

    run()
    report_counts("activation store", counts)


# ----------------------------------------------------------------------------- checkpoints with a manifest
def _files_mutation(names: list[str]):
    """Which file of a checkpoint, and how: bytes anywhere, or JSON for the JSON files."""
    js = [n for n in names if n.endswith(".json")]
    return st.one_of(st.tuples(st.sampled_from(names), st.just("bytes"), byte_mutation()),
                     st.tuples(st.sampled_from(js), st.just("json"), json_mutation()))


def _mutate_dir(src: Path, d: Path, m: tuple) -> bool:
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(src, d)
    name, how, mm = m
    f = d / name
    if how == "bytes":
        f.write_bytes(apply_bytes(f.read_bytes(), mm))
        return False
    text, keep = apply_json(f.read_text(), mm)
    f.write_text(text)
    return keep and name == MANIFEST  # the manifest is parsed; the files it lists are compared byte for byte


def _weights(model) -> dict:
    return {k: v.clone() for k, v in model.hf.state_dict().items()}


def _config(model) -> dict:
    return {k: v for k, v in model.hf.config.to_dict().items() if k != "_name_or_path"}  # where it was read from


def _same_model(ref: dict, config: dict):
    def same(model) -> bool:
        got = model.hf.state_dict()
        return (set(got) == set(ref) and all(torch.equal(got[k], v) and got[k].dtype == v.dtype for k, v in ref.items())
                and _config(model) == config)
    return same


def test_mutated_organism_checkpoint(tmp_path):
    """The shipped reader organism (its manifest is in the repository): reader() then load()."""
    import importlib

    R = importlib.import_module("probekit.organisms.reader")
    ref_model = probekit.load(R.SHIPPED)
    ref, config = _weights(ref_model), _config(ref_model)
    names = sorted(f.name for f in R.SHIPPED.iterdir() if f.is_file())
    assert MANIFEST in names
    counts = Counter()

    @SLOW
    @given(_files_mutation(names))
    def run(m):
        d = tmp_path / "reader"
        keep = _mutate_dir(R.SHIPPED, d, m)
        outcome(lambda: probekit.load(R.reader(d)), _same_model(ref, config), counts, keep)

    run()
    report_counts("organism checkpoint", counts)


def test_mutated_study_cache(tmp_path, tiny_dir):
    """A fine-tune cached by the unlearning study: its checkpoint, losses.json and manifest."""
    from probekit.studies.unlearning.study import _cached

    src = Path(shutil.copytree(tiny_dir("llava"), tmp_path / "src"))
    (src / "losses.json").write_text(json.dumps([2.5, 1.25, 0.75]))
    write_manifest(src, {"generator": "test"})
    ref_model, losses = _cached(src)
    ref, config = _weights(ref_model), _config(ref_model)
    same_model = _same_model(ref, config)
    names = sorted(f.name for f in src.iterdir() if f.is_file())
    counts = Counter()

    @SLOW
    @given(_files_mutation(names))
    def run(m):
        d = tmp_path / "tuned"
        keep = _mutate_dir(src, d, m)
        outcome(lambda: _cached(d), lambda got: same_model(got[0]) and got[1] == losses, counts, keep)

    run()
    report_counts("study cache", counts)
