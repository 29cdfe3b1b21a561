"""Every file probekit writes and reads back is checked like the store: crafted files, full disks.

Crafted files are built here from real ones: a field of the wrong type, a basis that is not what
the file says, a tensor missing or extra, a duplicated key, a changed number. Each is refused with
the exact probekit error class, a message naming the field and a fix; most are crafted *with a
matching checksum* (as a buggy writer would leave them), so the schema and tensor checks are
shown to catch them on their own, and a few without (damage: the checksum catches it).
Formats: Direction, TunedLens, report JSON, checkpoints with a manifest (organisms, study caches).

Every writer is then run against a full disk (the write raises ENOSPC halfway): a StoreError naming
the path, the bytes needed and free, and nothing half-written left behind.
(Property-based mutations of the same formats: tests/test_reliability_mutations.py.)
"""

from __future__ import annotations

import errno
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import probekit
from probekit.errors import InputError, ProbekitWarning, StoreError
from probekit.files import MANIFEST, check_cache, checksum, write_manifest
from probekit import tiny
from probekit.readout.lens import TunedLens
from probekit.report import ScanReport
from probekit.steering import Direction
from _errors import check

pytestmark = pytest.mark.usefixtures("one_thread")
D = 8


# ----------------------------------------------------------------------------- Direction files
def _directions() -> dict[str, Direction]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 2
    acts = {f"lm.{i}.resid": torch.randn(60, D, generator=g) + 2 * y[:, None] for i in range(2)}
    means = Direction.from_means(acts, y)
    means.meta["fit_images"] = ["a" * 16, "b" * 16]
    return {"means": means, "leace": Direction.leace(acts, y),
            "plane": Direction.from_vectors({"lm.0.resid": torch.randn(2, D, generator=g)})}


def _read(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["probekit"]), {k: f.get_tensor(k) for k in f.keys()}


def _write(path: Path, header: dict | str, tensors: dict, rechecksum: bool = True) -> None:
    if isinstance(header, dict) and rechecksum:
        header = {k: v for k, v in header.items() if k != "checksum"}
        header["checksum"] = checksum(header, tensors)
    save_file(tensors, str(path), metadata={"probekit": header if isinstance(header, str) else json.dumps(header)})


def _set(key, value):
    return lambda h, t: (h.update({key: value}), h, t)[1:]


def _tensor(name, fn):
    return lambda h, t: (h, {**t, name: fn(t[name])})


def _non_orthogonal(t):
    q = t.clone()
    q[1] = (q[0] + q[1]) / math.sqrt(2)
    return q


DIRECTION_CASES = {  # id: (direction, craft(header, tensors) -> (header, tensors), words)
    "version-str": ("means", _set("version", "2"), ["'version'", "str", "not an integer"]),
    "version-null": ("means", _set("version", None), ["'version'", "NoneType"]),
    "version-future": ("means", _set("version", 99), ["version 99", "reads up to 2"]),
    "points-int": ("means", _set("points", 3), ["'points'", "int", "not a list"]),
    "points-of-ints": ("means", _set("points", [0, 1]), ["'points'", "not only strings"]),
    "points-repeated": ("means", _set("points", ["lm.0.resid", "lm.0.resid"]), ["repeats"]),
    "erasers-int": ("leace", _set("erasers", 3), ["'erasers'", "int", "not a list"]),
    "meta-list": ("means", _set("meta", [1, 2]), ["'meta'", "list", "not an object"]),
    "fit-images-ints": ("means", lambda h, t: (h["meta"].update(fit_images=[1, 2]), h, t)[1:], ["fit_images"]),
    "d-model-str": ("means", _set("d_model", "8"), ["'d_model'"]),
    "d-model-wrong": ("means", _set("d_model", 9), ["'lm.0.resid/basis'", "shape [1, 8]", "[?, 9]"]),
    "claims-missing": ("means", _set("orthonormal", {"lm.0.resid": True}), ["'orthonormal'"]),
    "norms-1000": ("means", _tensor("lm.0.resid/basis", lambda b: b * 1000), ["declared orthonormal", "1000"]),
    "not-orthogonal": ("plane", _tensor("lm.0.resid/basis", _non_orthogonal), ["declared orthonormal"]),
    "integer-basis": ("means", _tensor("lm.0.resid/basis", lambda b: (b * 10).round().long()), ["dtype int64"]),
    "nan-basis": ("means", _tensor("lm.1.resid/basis", lambda b: b.index_fill(1, torch.tensor([2]), float("nan"))),
                  ["'lm.1.resid/basis'", "NaN"]),
    "eraser-shape": ("leace", _tensor("lm.0.resid/right", lambda r: torch.cat([r, r])),
                     ["'lm.0.resid/right'", "shape"]),
    "eraser-mean-width": ("leace", _tensor("lm.1.resid/mean", lambda m: m[:-1]), ["'lm.1.resid/mean'", "[8]"]),
    "tensor-missing": ("means", lambda h, t: (h, {k: v for k, v in t.items() if k != "lm.1.resid/basis"}),
                       ["missing tensor 'lm.1.resid/basis'"]),
    "tensor-extra": ("means", lambda h, t: (h, {**t, "x/basis": t["lm.0.resid/basis"].clone()}), ["'x/basis'", "does not name"]),
    "format-other": ("means", _set("format", "someone.else"), ["not a probekit direction file"]),
    "checksum-int": ("means", _set("checksum", 5), ["'checksum'", "not a string"]),
}


@pytest.mark.parametrize("case", list(DIRECTION_CASES))
def test_crafted_direction_file_is_refused(tmp_path, case):
    name, craft, words = DIRECTION_CASES[case]
    path = tmp_path / "d.safetensors"
    _directions()[name].save(path)
    header, tensors = craft(*_read(path))
    rechecksum = case != "checksum-int"
    _write(path, header, tensors, rechecksum=rechecksum)  # with a matching checksum: the checks alone refuse it
    with pytest.raises(StoreError) as info:
        Direction.load(path)
    check(info, StoreError, "d.safetensors", *words)


@pytest.mark.parametrize("case, damage, words", [
    ("duplicate-key", lambda p: _write(p, json.dumps(_read(p)[0])[:-1] + ', "version": 2}', _read(p)[1]),
     ["key 'version' appears twice"]),
    ("header-not-json", lambda p: _write(p, '{"format": "probekit.direction", "ver', _read(p)[1]), ["not valid JSON"]),
    ("number-changed", lambda p: _write(p, _read(p)[0], {**_read(p)[1], "lm.0.resid/basis":
                                                          _read(p)[1]["lm.0.resid/basis"] * (1 - 1e-9)}, False),
     ["does not match its checksum"]),
    ("meta-changed", lambda p: _write(p, {**_read(p)[0], "method": "leace"}, _read(p)[1], False),
     ["does not match its checksum"]),
    ("checksum-dropped", lambda p: _write(p, {k: v for k, v in _read(p)[0].items() if k != "checksum"}, _read(p)[1],
                                          False), ["'checksum' is missing"]),
    ("truncated", lambda p: p.write_bytes(p.read_bytes()[:-20]), ["damaged"]),
    ("header-truncated", lambda p: p.write_bytes(p.read_bytes()[:60]), ["truncated"]),
    ("empty", lambda p: p.write_bytes(b""), ["0 bytes"]),
], ids=lambda v: v if isinstance(v, str) else "")
def test_damaged_direction_file_is_refused(tmp_path, case, damage, words):
    path = tmp_path / "d.safetensors"
    _directions()["means"].save(path)
    damage(path)
    with pytest.raises(StoreError) as info:
        Direction.load(path)
    check(info, StoreError, *words)


def test_direction_files_round_trip_exactly(tmp_path):
    for name, d in _directions().items():
        d.save(tmp_path / f"{name}.safetensors")
        back = Direction.load(tmp_path / f"{name}.safetensors")
        assert (back.points, back.method, back.meta, back.d_model) == (d.points, d.method, d.meta, d.d_model)
        assert all(torch.equal(back.basis(p), d.basis(p)) for p in d.points)
        for p, e in d.erasers.items():
            assert all(torch.equal(getattr(back.erasers[p], a), getattr(e, a)) for a in ("mean", "left", "right"))
    raw = Direction({"*": torch.full((D,), 3.0)}, method="vector")  # steer's raw vector: not unit, and says so
    raw.save(tmp_path / "raw.safetensors")
    assert torch.equal(Direction.load(tmp_path / "raw.safetensors").basis("*"), raw.basis("*"))


def _version_1(path: Path, d: Direction) -> None:
    """The file the previous probekit wrote (no checksum, no per-point claim)."""
    header = {"format": "probekit.direction", "version": 1, "method": d.method, "d_model": d.d_model,
              "points": d.points, "erasers": list(d.erasers), "meta": d.meta}
    save_file({f"{p}/basis": b for p, b in d.bases.items()}, str(path), metadata={"probekit": json.dumps(header)})


def test_version_1_direction_loads_with_a_warning_and_is_still_checked(tmp_path):
    d = _directions()["means"]
    _version_1(tmp_path / "old.safetensors", d)
    with pytest.warns(ProbekitWarning, match="without a checksum"):
        back = Direction.load(tmp_path / "old.safetensors")
    assert all(torch.equal(back.basis(p), d.basis(p)) for p in d.points)
    bad = Direction({p: b * 1000 for p, b in d.bases.items()}, method="means")
    _version_1(tmp_path / "bad.safetensors", bad)
    with pytest.raises(StoreError) as info:
        Direction.load(tmp_path / "bad.safetensors")
    check(info, StoreError, "declared orthonormal")


# ----------------------------------------------------------------------------- tuned lenses
def _lens_file(tmp_path: Path) -> Path:
    lens = TunedLens(D, ["lm.0.resid", "lm.1.resid"], meta={"model": "m"})
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in lens.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    path = tmp_path / "lens.safetensors"
    lens.save(path)
    return path


def _lens_parts(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}


def _lens_write(path: Path, fields: dict, state: dict, rechecksum: bool = True) -> None:
    if rechecksum:  # the values the reader parses (unparsable ones as they are: refused before the checksum)
        def value(key, parse):
            try:
                return parse(fields[key])
            except (KeyError, ValueError):
                return fields.get(key)
        content = {"format": "probekit.tuned_lens", "version": value("version", int), "points": value("points", json.loads),
                   "meta": value("meta", json.loads), "d_model": value("d_model", int)}
        fields = {**{k: v for k, v in fields.items() if k != "checksum"}, "checksum": checksum(content, state)}
    save_file(state, str(path), metadata=fields)


W0, B1 = "translators.lm_0_resid.weight", "translators.lm_1_resid.bias"
LENS_CASES = {
    "version-word": (lambda f, s: ({**f, "version": "x"}, s), ["'version'", "not a whole number"]),
    "version-future": (lambda f, s: ({**f, "version": "9"}, s), ["version 9", "reads 1 to 2"]),
    "points-not-json": (lambda f, s: ({**f, "points": "[lm.0"}, s), ["points", "not valid JSON"]),
    "points-int": (lambda f, s: ({**f, "points": "3"}, s), ["'points'", "int"]),
    "points-missing": (lambda f, s: ({k: v for k, v in f.items() if k != "points"}, s), ["'points' is missing"]),
    "point-not-stream": (lambda f, s: ({**f, "points": '["lm.0.resid", "vision.1.resid"]'}, s),
                         ["'vision.1.resid'", "not a residual-stream point"]),
    "points-repeated": (lambda f, s: ({**f, "points": '["lm.0.resid", "lm.0.resid"]'}, s), ["repeats"]),
    "meta-list": (lambda f, s: ({**f, "meta": "[1]"}, s), ["'meta'", "not an object"]),
    "d-model-word": (lambda f, s: ({**f, "d_model": "eight"}, s), ["'d_model'"]),
    "tensor-missing": (lambda f, s: (f, {k: v for k, v in s.items() if k != B1}), ["missing tensor", B1]),
    "tensor-extra": (lambda f, s: (f, {**s, "translators.x.bias": s[B1].clone()}), ["'translators.x.bias'"]),
    "weight-shape": (lambda f, s: (f, {**s, W0: s[W0][:, :4].contiguous()}), [W0, "[8, 4]", "[8, 8]"]),
    "weight-int": (lambda f, s: (f, {k: (v * 10).long() for k, v in s.items()}), ["dtype int64"]),
    "bias-nan": (lambda f, s: (f, {**s, B1: s[B1].index_fill(0, torch.tensor([1]), float("nan"))}), [B1, "NaN"]),
    "mixed-dtypes": (lambda f, s: (f, {**s, W0: s[W0].double()}), ["mixes tensor dtypes"]),
    "format-other": (lambda f, s: ({**f, "format": "x"}, s), ["not a probekit tuned lens"]),
}


@pytest.mark.parametrize("case", list(LENS_CASES))
def test_crafted_tuned_lens_is_refused(tmp_path, case):
    craft, words = LENS_CASES[case]
    path = _lens_file(tmp_path)
    _lens_write(path, *craft(*_lens_parts(path)))
    with pytest.raises(StoreError) as info:
        TunedLens.load(path)
    check(info, StoreError, "lens.safetensors", *words)


@pytest.mark.parametrize("case", ["number-changed", "meta-changed", "checksum-dropped", "truncated"])
def test_damaged_tuned_lens_is_refused(tmp_path, case):
    path = _lens_file(tmp_path)
    fields, state = _lens_parts(path)
    if case == "number-changed":
        _lens_write(path, fields, {**state, W0: state[W0] * 1.0001}, rechecksum=False)
    elif case == "meta-changed":
        _lens_write(path, {**fields, "meta": '{"model": "other"}'}, state, rechecksum=False)
    elif case == "checksum-dropped":
        _lens_write(path, {k: v for k, v in fields.items() if k != "checksum"}, state, rechecksum=False)
    else:
        path.write_bytes(path.read_bytes()[:-9])
    with pytest.raises(StoreError) as info:
        TunedLens.load(path)
    check(info, StoreError, {"number-changed": "checksum", "meta-changed": "checksum",
                             "checksum-dropped": "'checksum' is missing", "truncated": "damaged"}[case])


def test_tuned_lens_round_trips_exactly(tmp_path):
    path = _lens_file(tmp_path)
    _, state = _lens_parts(path)
    back = TunedLens.load(path)
    assert back.points == ["lm.0.resid", "lm.1.resid"] and back.meta == {"model": "m"}
    assert all(torch.equal(back.state_dict()[k], v) for k, v in state.items())
    fields, _ = _lens_parts(path)  # version 1 (no checksum, no d_model) still loads, with a warning
    old = {"format": fields["format"], "version": "1", "points": fields["points"], "meta": fields["meta"]}
    save_file(state, str(tmp_path / "old.safetensors"), metadata=old)
    with pytest.warns(ProbekitWarning, match="without a checksum"):
        again = TunedLens.load(tmp_path / "old.safetensors")
    assert all(torch.equal(again.state_dict()[k], v) for k, v in state.items())


# ----------------------------------------------------------------------------- report JSON
@pytest.fixture(scope="module")
def report(llava):
    ims, y = tiny.fixture_images(12, 32, seed=3), [i % 2 for i in range(12)]
    return probekit.scan(llava, ims, y, "What?", points="lm.*.resid", positions="last", cv=2, n_boot=10, topk=3,
                         targets=["red"], progress=False)


def _rechecksum(obj: dict) -> str:
    body = {k: v for k, v in obj.items() if k != "checksum"}
    return json.dumps({**body, "checksum": checksum(body)})


def _edit(fn):
    def run(text):
        obj = json.loads(text)
        fn(obj)
        return _rechecksum(obj)
    return run


REPORT_CASES = {
    "not-json": (lambda s: s[: len(s) // 2], ["not valid JSON"]),
    "not-utf8": (lambda s: b"\xff\xfe" + s.encode(), ["not valid JSON"]),
    "not-a-string": (lambda s: 12, ["is a string, got int"]),
    "kind-other": (_edit(lambda o: o.update(kind="other")), ["not a probekit scan report"]),
    "version-str": (_edit(lambda o: o.update(probekit_report="2")), ["'probekit_report'", "str"]),
    "version-future": (_edit(lambda o: o.update(probekit_report=7)), ["format 7", "upgrade"]),
    "settings-list": (_edit(lambda o: o.update(settings=[1])), ["'settings'", "not an object"]),
    "notes-ints": (_edit(lambda o: o.update(notes=[1, 2])), ["'notes'", "not only strings"]),
    "table-list": (_edit(lambda o: o["tables"].update(table=[1])), ["table 'table'", "not an object or null"]),
    "columns-int": (_edit(lambda o: o["tables"]["table"].update(columns=3)), ["'columns'", "not a list"]),
    "record-short": (_edit(lambda o: o["tables"]["table"]["records"][0].pop("accuracy")), ["record 0", "columns"]),
    "dtypes-list": (_edit(lambda o: o["tables"]["table"].update(dtypes=["float64"])), ["'dtypes'", "not an object"]),
    "duplicate-key": (lambda s: s[:-1] + ', "kind": "scan"}', ["key 'kind' appears twice"]),
    "nan": (lambda s: s.replace('"kind": "scan"', '"kind": "scan", "x": NaN'), ["NaN is not a JSON number"]),
    # a byte inserted into a number ('1e999') overflows to inf: found by the mutation test in CI
    "overflow": (lambda s: s.replace('"kind": "scan"', '"kind": "scan", "x": 1e999'), ["1e999", "out of a float's range"]),
    "number-changed": (lambda s: _number_changed(s), ["does not match its checksum"]),
    "checksum-dropped": (lambda s: json.dumps({k: v for k, v in json.loads(s).items() if k != "checksum"}),
                         ["'checksum' is missing"]),
}


def _number_changed(s: str) -> str:
    obj = json.loads(s)
    rec = obj["tables"]["table"]["records"][0]
    rec["accuracy"] = round(rec["accuracy"] + 0.25, 6)
    return json.dumps(obj)


@pytest.mark.parametrize("case", list(REPORT_CASES))
def test_crafted_report_json_is_refused(report, case):
    craft, words = REPORT_CASES[case]
    with pytest.raises(InputError) as info:
        ScanReport.from_json(craft(report.to_json()))
    check(info, InputError, *words)


def test_report_json_round_trips_and_format_1_still_loads(report):
    assert ScanReport.from_json(report.to_json()) == report
    assert ScanReport.from_json(report.to_json(indent=2).encode()) == report
    old = json.loads(report.to_json())
    old.pop("checksum")
    old["probekit_report"] = 1
    with pytest.warns(ProbekitWarning, match="without a checksum"):
        assert ScanReport.from_json(json.dumps(old)) == report


# ----------------------------------------------------------------------------- checkpoints with a manifest
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny.build("llava", tmp_path_factory.mktemp("ck") / "m", seed=0, manifest=True)


def _flip(f: Path, at: float = 0.5) -> None:
    data = bytearray(f.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    f.write_bytes(bytes(data))


def _manifest(d: Path, fn, rechecksum: bool = True) -> None:
    m = json.loads((d / MANIFEST).read_text())
    fn(m)
    if rechecksum:
        m["checksum"] = checksum({k: v for k, v in m.items() if k != "checksum"})
    (d / MANIFEST).write_text(json.dumps(m))


CHECKPOINT_CASES = {
    "weights-flipped": (lambda d: _flip(d / "model.safetensors"), ["model.safetensors changed after it was written"]),
    "weights-truncated": (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-8]),
                          ["model.safetensors changed"]),
    "config-edited": (lambda d: (d / "config.json").write_text((d / "config.json").read_text().replace("2", "3", 1)),
                      ["config.json changed"]),
    "file-missing": (lambda d: (d / "tokenizer.json").unlink(), ["missing ['tokenizer.json']"]),
    "file-extra": (lambda d: (d / "extra.bin").write_bytes(b"x"), ["files it was not written with ['extra.bin']"]),
    "manifest-files-list": (lambda d: _manifest(d, lambda m: m.update(files=[])), ["'files'", "not an object"]),
    "manifest-bytes-str": (lambda d: _manifest(d, lambda m: m["files"]["config.json"].update(bytes="9")),
                           ["'config.json'", "needs bytes"]),
    "manifest-version": (lambda d: _manifest(d, lambda m: m.update(version=2)), ["manifest version 2"]),
    "manifest-hash-edited": (lambda d: _manifest(d, lambda m: m["files"]["config.json"].update(xxh3="0" * 32), False),
                             ["does not match its checksum"]),
    "manifest-duplicate": (lambda d: (d / MANIFEST).write_text((d / MANIFEST).read_text().rstrip()[:-1] +
                                                               ', "version": 1}'), ["'version' appears twice"]),
    "manifest-not-json": (lambda d: (d / MANIFEST).write_text("{"), ["not valid JSON"]),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_damaged_checkpoint_is_refused_by_load_and_by_the_cache(checkpoint, tmp_path, case):
    damage, words = CHECKPOINT_CASES[case]
    d = Path(shutil.copytree(checkpoint, tmp_path / "m"))
    damage(d)
    with pytest.raises(InputError) as info:  # load: before transformers reads a byte of it
        probekit.load(d)
    check(info, InputError, str(d), *words)
    with pytest.raises(StoreError) as info:  # a study's or an organism's cache
        check_cache(d, "cached checkpoint", "delete it; it is built again")
    check(info, StoreError, *words)


def test_intact_checkpoints_load_and_the_shipped_reader_is_checked(checkpoint, tmp_path):
    assert probekit.load(checkpoint).family == "llava"
    from probekit.organisms.reader import SHIPPED, reader

    assert check_cache(SHIPPED, "shipped reader", "x") is None  # its manifest is in the repository, and it matches
    copy = Path(shutil.copytree(SHIPPED, tmp_path / "reader"))
    assert reader(copy) == copy
    _flip(copy / "model.safetensors", 0.9)
    with pytest.raises(StoreError) as info:
        reader(copy)
    check(info, StoreError, "reader checkpoint", "model.safetensors changed", f"delete {copy}")


@pytest.mark.parametrize("losses, words", [
    ([0.5, float("nan")], ["NaN is not a JSON number"]),
    (["0.5"], ["not a non-empty list of finite numbers"]),
    ([], ["not a non-empty list"]),
    ({"loss": 1}, ["not a non-empty list"]),
])
def test_study_cache_with_crafted_losses_is_refused(checkpoint, tmp_path, losses, words):
    from probekit.studies.unlearning.study import _cached

    d = Path(shutil.copytree(checkpoint, tmp_path / "tuned"))
    (d / MANIFEST).unlink()
    (d / "losses.json").write_text(json.dumps(losses))
    write_manifest(d)  # the crafted losses are listed: only their schema can refuse them
    with pytest.raises(StoreError) as info:
        _cached(d)
    check(info, StoreError, "losses.json", *words)
    (d / "losses.json").write_text("[0.5, 0.25]")  # changed after the manifest: refused as a changed file
    with pytest.raises(StoreError) as info:
        _cached(d)
    check(info, StoreError, "losses.json changed")


# ----------------------------------------------------------------------------- a full disk
@pytest.fixture
def full_disk(monkeypatch):
    """The disk fills up halfway through the next write probekit makes (through probekit.files)."""
    import probekit.files.writing as writing

    real = writing._write_fd

    def write(fd, data):
        real(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writing, "_write_fd", write)


def _save_png(path):
    from probekit.report.figures.png import pyplot, save_png

    fig, ax = pyplot().subplots()
    ax.plot([0, 1])
    return save_png(fig, path)


WRITERS = {
    "direction": lambda p: _directions()["leace"].save(p),
    "tuned-lens": lambda p: TunedLens(D, ["lm.0.resid"]).save(p),
    "report-html": lambda p: ScanReport(None, notes=["n"]).save(p),
    "figure": _save_png,
    "results-page": lambda p: __import__("probekit.files", fromlist=["x"]).atomic_write(p, "# Results\n" * 50, "page"),
}


@pytest.mark.parametrize("writer", list(WRITERS))
@pytest.mark.parametrize("old", [False, True], ids=["new", "overwrite"])
def test_full_disk_leaves_nothing_half_written(tmp_path, full_disk, writer, old):
    path = tmp_path / "out" / "file.bin"
    path.parent.mkdir()
    if old:
        path.write_bytes(b"the previous version")
    with pytest.raises(StoreError) as info:
        WRITERS[writer](path)
    text = check(info, StoreError, str(path), "no space left on device", "it needs", "free there")
    assert int(text.split("it needs ")[1].split(" ")[0].split(".")[0]) > 0
    assert sorted(f.name for f in path.parent.iterdir()) == (["file.bin"] if old else [])
    if old:
        assert path.read_bytes() == b"the previous version"


def test_full_disk_while_building_a_checkpoint_leaves_nothing(tmp_path, monkeypatch):
    import transformers

    def save_pretrained(self, directory, *a, **k):
        (Path(directory) / "model.safetensors").write_bytes(b"\0" * 100)  # part of the weights, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", save_pretrained)
    with pytest.raises(StoreError) as info:
        tiny.build("llava", tmp_path / "m", manifest=True)
    check(info, StoreError, str(tmp_path / "m"), "no space left on device", "free there")
    assert list(tmp_path.iterdir()) == []


def test_full_disk_while_building_the_reader_names_the_bytes_needed(tmp_path, monkeypatch):
    """The organism cache: the model is built and 'trained', then the save fails."""
    import importlib

    import transformers

    import probekit.models.loading as loading

    R = importlib.import_module("probekit.organisms.reader")
    monkeypatch.setattr(R, "pretrain", lambda model, cfg, progress, snapshot=None: [1.0])
    real, real_load = transformers.PreTrainedModel.save_pretrained, loading.load
    state = {"loaded": False}

    def save_pretrained(self, directory, *a, **k):
        if state["loaded"]:  # the trained model's save: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, directory, *a, **k)

    def load(*a, **k):
        state["loaded"] = True
        return real_load(*a, **k)

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", save_pretrained)
    monkeypatch.setattr(loading, "load", load)
    with pytest.raises(StoreError) as info:
        R.reader(tmp_path / "r", config=R.ReaderConfig(steps=1))
    text = check(info, StoreError, str(tmp_path / "r"), "no space left on device")
    assert "it needs ?" not in text  # the model's size is known by then
    assert [f.name for f in tmp_path.iterdir()] == []


def test_report_save_refuses_a_directory_and_keeps_permissions(tmp_path):
    with pytest.raises(InputError):
        ScanReport(None).save(tmp_path)
    p = ScanReport(None).save(tmp_path / "r.html")
    assert p.read_text().startswith("<!DOCTYPE html>") or "<html" in p.read_text()[:200]
    assert np.all([not f.name.endswith(".tmp") for f in tmp_path.iterdir()])


def test_store_index_with_a_damaged_checksum_key_is_refused(llava, tmp_path):
    """A flipped bit in the key "checksum" used to make an index load unchecked (as a store written before the
    index had one), so a second flipped bit in its numbers went unseen (found by the mutation test)."""
    from _stores import tiny_store

    from probekit.hooks import ActivationStore

    d = tmp_path / "s"
    tiny_store(llava, d, positions=("last",))
    obj = json.loads((d / "index.json").read_text())
    obj["bhecksum"] = obj.pop("checksum")
    (d / "index.json").write_text(json.dumps(obj))
    with pytest.raises(StoreError) as info:
        ActivationStore.open(d)
    check(info, StoreError, "unknown fields ['bhecksum']", "collect again")
