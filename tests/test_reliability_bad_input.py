"""Bad input: every case raises its own probekit error, says how to fix it, before any forward pass,
and leaves nothing half-written on disk.

Each case asserts the exact error class (not a parent), words naming the problem, the "How to fix"
hint, that the HF model's ``forward`` (or the probe solver, or ``from_pretrained``) never ran, and
that a ``store=`` directory or output path given to the call does not exist afterwards (or, for an
existing store, is byte-for-byte unchanged).
"""

from __future__ import annotations

import errno
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import SafetensorError

import probekit
from probekit.errors import (
    ImageError,
    InputError,
    LabelError,
    PositionError,
    ProbekitError,
    StoreError,
    UnknownPointError,
    UnsupportedModelError,
)
from probekit.hooks import ActivationStore
from probekit import tiny

from _stores import copy_store, count_prepare, edit_index, snapshot, tiny_store  # tests/ is on sys.path

N = 6


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- helpers (llava, no_forward: conftest.py)
@pytest.fixture
def no_fit(monkeypatch):
    """Fails the test if the probe solver starts (the readout's heavy work)."""
    import probekit.readout.scorers as scorers

    def forbidden(*a, **k):
        raise AssertionError("probes were fitted before the bad input was reported")

    # every held-out scorer is reached through the registry: no scorer may start
    for name, cls in scorers.SCORERS.items():
        monkeypatch.setattr(cls, "heldout", forbidden)


def check(excinfo, cls, *words):
    """The exact class, the problem named, a fix given."""
    err = excinfo.value
    assert type(err) is cls, f"expected {cls.__name__}, got {type(err).__name__}: {err}"
    assert isinstance(err, ProbekitError)
    text = str(err)
    for w in words:
        assert w in text, f"{w!r} not in message: {text}"
    assert "How to fix" in text and err.fix, f"no fix in: {text}"
    return text


def images(n=N):
    return tiny.fixture_images(n, 32, seed=1)


def save_images(folder: Path, n=N) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(images(n)):
        paths.append(folder / f"img{i}.png")
        im.save(paths[-1])
    return paths


# ----------------------------------------------------------------------------- collect
def _truncated_jpeg(tmp: Path) -> Path:
    buf = io.BytesIO()
    images(1)[0].resize((128, 128)).save(buf, format="JPEG")
    path = tmp / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # verify() alone does not notice this
    return path


def _truncated_png(tmp: Path) -> Path:
    buf = io.BytesIO()
    images(1)[0].resize((128, 128)).save(buf, format="PNG")
    path = tmp / "cut.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def _corrupt_png(tmp: Path) -> Path:
    path = tmp / "notanimage.png"
    path.write_bytes(b"this is a text file, not a PNG\n" * 10)
    return path


COLLECT_CASES = {
    # wrong types
    "images-int": (dict(images=5), ImageError, ["got int"]),
    "images-dict": (dict(images={"a": "x.png"}), ImageError, ["dict"]),
    "images-none-item": (dict(images=[None]), ImageError, ["image 0", "NoneType"]),
    "images-5d-array": (dict(images=np.zeros((2, 3, 8, 8, 1))), ImageError, ["4-D"]),
    "prompts-int": (dict(prompts=7), InputError, ["prompts", "int"]),
    "prompts-not-str": (dict(prompts=[b"bytes"] * N), InputError, ["prompt 0", "bytes"]),
    "points-not-str": (dict(points=["lm.0.resid", 3]), InputError, ["3", "not a string"]),
    "points-int": (dict(points=0), InputError, ["points must be"]),
    # empty inputs
    "images-empty": (dict(images=[]), ImageError, ["empty"]),
    "points-empty": (dict(points=[]), InputError, ["non-empty"]),
    "positions-empty": (dict(positions=()), PositionError, ["positions is empty"]),
    # mismatched lengths
    "prompts-length": (dict(prompts=["a", "b", "c"]), InputError, [f"{N} images but 3 prompts"]),
    # files
    "image-missing-file": (dict(images=lambda t: [t / "nope.png"]), ImageError, ["nope.png", "does not exist"]),
    "image-corrupt": (dict(images=lambda t: [*save_images(t / "ok", 2), _corrupt_png(t)]), ImageError,
                      ["image 2", "notanimage.png", "not a readable image"]),
    "image-truncated-jpeg": (dict(images=lambda t: [*save_images(t / "ok", 2), _truncated_jpeg(t)]), ImageError,
                             ["image 2", "cut.jpg", "truncated"]),
    "image-truncated-png": (dict(images=lambda t: [*save_images(t / "ok", 2), _truncated_png(t)]), ImageError,
                            ["image 2", "cut.png"]),
    "image-nan-array": (dict(images=[np.full((8, 8, 3), np.nan)]), ImageError, ["NaN"]),
    # points
    "unknown-point": (dict(points="lm.99.resid"), UnknownPointError, ["lm.99.resid", "lm.0.resid"]),
    "unknown-point-glob": (dict(points=["lm.0.resid", "decoder.*"]), UnknownPointError, ["decoder.*"]),
    # positions
    "position-typo": (dict(positions="lastt"), PositionError, ["'lastt'"]),
    "position-bool": (dict(positions=True), PositionError, ["True", "bool"]),
    "position-float": (dict(positions=1.5), PositionError, ["1.5", "float"]),
    "position-repeat": (dict(positions=("last", "last")), PositionError, ["repeat"]),
    "position-slice-step": (dict(positions=slice(None, None, -1)), PositionError, ["step"]),
    "position-slice-str": (dict(positions=slice("a", None)), PositionError, ["slice"]),
    "position-out-of-range": (dict(positions=1000), PositionError, ["1000", "outside"]),
    "position-text-uneven": (dict(prompts=["Hi", "What colour is the big square on the left?"] * 3, positions="text"),
                             PositionError, ["'text'", "different number"]),
    # settings
    "batch-size-zero": (dict(batch_size=0), InputError, ["batch_size", "0"]),
    "batch-size-float": (dict(batch_size=2.5), InputError, ["batch_size", "2.5"]),
    "batch-size-bool": (dict(batch_size=True), InputError, ["batch_size", "True"]),
    "shard-size-zero": (dict(shard_size=0), InputError, ["shard_size"]),
    "unknown-backend": (dict(backend="jax"), InputError, ["'jax'", "torch"]),
    "padding-side": (dict(padding_side="middle"), InputError, ["padding_side", "'middle'"]),
    "store-dtype-str": (dict(store_dtype="float16"), InputError, ["store_dtype", "'float16'"]),
    "store-dtype-int": (dict(store_dtype=torch.int8), InputError, ["store_dtype", "int8"]),
}


@pytest.mark.parametrize("case", list(COLLECT_CASES))
def test_collect_bad_input(no_forward, tmp_path, case):
    kwargs, cls, words = COLLECT_CASES[case]
    args = dict(images=images(), prompts="What shape?", points="lm.*.resid", positions="last")
    args.update(kwargs)
    if callable(args["images"]):
        args["images"] = args["images"](tmp_path)
    store = tmp_path / "store"
    with pytest.raises(cls) as info:
        probekit.collect(no_forward, args.pop("images"), args.pop("prompts"), store=store, progress=False, **args)
    check(info, cls, *words)
    assert not store.exists(), f"{case}: a half-written store was left at {store}"


def test_position_error_on_the_first_batch_leaves_no_store_to_trip_over(no_forward, tmp_path):
    """A selector that only fails once the prompt is tokenized still fails before the forward, and
    the retry with a fixed selector is not refused as 'another collection'."""
    store = tmp_path / "s"
    with pytest.raises(PositionError):
        probekit.collect(no_forward, images(2), "x", positions=500, store=store, progress=False)
    assert not store.exists()
    store.mkdir()  # an existing empty directory is fine too, and stays empty
    with pytest.raises(PositionError):
        probekit.collect(no_forward, images(2), "x", positions=-500, store=store, progress=False)
    assert store.is_dir() and not any(store.iterdir())


# ----------------------------------------------------------------------------- scan
def _labels_csv(tmp: Path, text: str) -> Path:
    path = tmp / "labels.csv"
    path.write_text(text)
    return path


SCAN_CASES = {
    "labels-length": (lambda t: dict(images=images(), labels=[0, 1, 0]), LabelError, [f"{N} images but 3 labels"]),
    "labels-one-class": (lambda t: dict(images=images(), labels=["cat"] * N), LabelError, ["single class", "cat"]),
    "labels-nan": (lambda t: dict(images=images(), labels=[0.0, 1.0, np.nan, 1.0, 0.0, 1.0]), LabelError, ["NaN", "[2]"]),
    "csv-no-label-column": (lambda t: dict(images=str(t / "imgs"), labels=_labels_csv(t, "image,cls\nimg0.png,a\n")),
                            LabelError, ["no 'label' column", "cls"]),
    "csv-missing-rows": (lambda t: dict(images=str(t / "imgs"),
                                        labels=_labels_csv(t, "image,label\nimg0.png,a\nimg1.png,b\n")),
                         LabelError, ["no row for 4 images", "img2.png"]),
    "csv-too-few-rows": (lambda t: dict(images=str(t / "imgs"), labels=_labels_csv(t, "label\na\nb\n")),
                         LabelError, [f"{N} images but 2 labels"]),
    "csv-missing-file": (lambda t: dict(images=str(t / "imgs"), labels=t / "absent.csv"), LabelError,
                         ["absent.csv", "does not exist"]),
    "folder-without-images": (lambda t: dict(images=str(t / "docs"), labels=None), ImageError,
                              ["docs", "holds no image files"]),
    "class-folders-without-images": (lambda t: dict(images=str(t / "classes"), labels=None), ImageError,
                                     ["class folders but no image files"]),
    "cv-above-class-count": (lambda t: dict(images=images(), labels=[0, 1] * 3, cv=4), LabelError,
                             ["cv=4", "only 3 samples"]),
    "cv-one": (lambda t: dict(images=images(), labels=[0, 1] * 3, cv=1), InputError, ["cv must be", "1"]),
    "groups-fewer-than-folds": (lambda t: dict(images=images(), labels=[0, 1] * 3, groups=[0, 0, 0, 1, 1, 1], cv=3),
                                LabelError, ["cv=3", "only 2 distinct groups"]),
    "groups-length": (lambda t: dict(images=images(), labels=[0, 1] * 3, groups=[0, 1], cv=3), LabelError,
                      ["groups of shape (2,)", f"{N} samples"]),
    "topk-negative": (lambda t: dict(images=images(), labels=[0, 1] * 3, cv=3, topk=-1), InputError, ["topk", "-1"]),
    "n-boot-negative": (lambda t: dict(images=images(), labels=[0, 1] * 3, cv=3, n_boot=-1), InputError, ["n_boot"]),
    "seed-str": (lambda t: dict(images=images(), labels=[0, 1] * 3, cv=3, seed="a"), InputError, ["seed", "'a'"]),
    "targets-empty-string": (lambda t: dict(images=images(), targets=[""]), InputError, ["targets"]),
    "scan-batch-size": (lambda t: dict(images=images(), labels=[0, 1] * 3, cv=3, batch_size=-2), InputError,
                        ["batch_size", "-2"]),
    "scan-unknown-point": (lambda t: dict(images=images(), labels=[0, 1] * 3, cv=3, points="lm.7.resid"),
                           UnknownPointError, ["lm.7.resid"]),
}


@pytest.mark.parametrize("case", list(SCAN_CASES))
def test_scan_bad_input(no_forward, tmp_path, case):
    save_images(tmp_path / "imgs")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("no images here")
    (tmp_path / "classes" / "cat").mkdir(parents=True)
    (tmp_path / "classes" / "dog").mkdir()
    make, cls, words = SCAN_CASES[case]
    kwargs = make(tmp_path)
    store = tmp_path / "store"
    with pytest.raises(cls) as info:
        probekit.scan(no_forward, kwargs.pop("images"), kwargs.pop("labels", None), store=str(store),
                      n_boot=kwargs.pop("n_boot", 10), progress=False, **kwargs)
    check(info, cls, *words)
    assert not store.exists()


# ----------------------------------------------------------------------------- readout
def _acts(n=20, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"lm.0.resid": torch.randn(n, d, generator=g), "lm.1.resid": torch.randn(n, d, generator=g)}


def test_probe_layers_nan_activations_name_the_point(no_fit):
    acts = _acts()
    acts["lm.1.resid"][7, 2] = float("nan")
    with pytest.raises(InputError) as info:
        probekit.probe_layers(acts, [0, 1] * 10, cv=2, n_boot=10, progress=False)
    check(info, InputError, "'lm.1.resid'", "NaN", "[7]")


def test_probe_layers_inf_in_a_multi_position_point_names_point_and_position(no_fit):
    x = torch.randn(20, 2, 4)
    x[3, 1, 0] = float("inf")
    with pytest.raises(InputError) as info:
        probekit.probe_layers({"lm.0.resid": x}, [0, 1] * 10, positions=["last", "image_mean"], cv=2,
                              n_boot=10, progress=False)
    check(info, InputError, "lm.0.resid@image_mean", "[3]")


@pytest.mark.parametrize("labels, cls, words", [
    ([1] * 20, LabelError, ["single class"]),
    ([0, 1] * 9, LabelError, ["18 labels for 20 samples"]),
    ([[0, 1]] * 20, LabelError, ["one-dimensional"]),
    (["a", None] * 10, LabelError, ["None"]),
])
def test_probe_layers_bad_labels(no_fit, labels, cls, words):
    with pytest.raises(cls) as info:
        probekit.probe_layers(_acts(), labels, cv=2, n_boot=10, progress=False)
    check(info, cls, *words)


@pytest.mark.parametrize("kwargs, words", [
    (dict(cv=11), ["cv=11", "only 10 samples"]),
    (dict(groups=[0, 1] * 10, cv=3), ["only 2 distinct groups"]),
    (dict(device="cuda:99"), ["cuda:99", "not available"]),
    (dict(dtype=torch.float16), ["float16"]),
    (dict(n_boot=-5), ["n_boot"]),
])
def test_probe_layers_bad_settings(no_fit, kwargs, words):
    with pytest.raises(ProbekitError) as info:
        probekit.probe_layers(_acts(), [0, 1] * 10, progress=False, **{"n_boot": 10, **kwargs})
    text = str(info.value)
    assert isinstance(info.value, (InputError, LabelError)) and "How to fix" in text
    for w in words:
        assert w in text


def test_probe_layers_mismatched_point_lengths(no_fit):
    acts = {"lm.0.resid": torch.randn(20, 4), "lm.1.resid": torch.randn(19, 4)}
    with pytest.raises(InputError) as info:
        probekit.probe_layers(acts, [0, 1] * 10, cv=2, n_boot=10, progress=False)
    check(info, InputError, "'lm.1.resid' has 19 samples", "20")


def test_logit_lens_decode_wrong_width(llava, monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("the unembedding ran on vectors of the wrong width")

    monkeypatch.setattr(llava.unembed, "forward", forbidden)
    with pytest.raises(InputError) as info:
        probekit.LogitLens(llava).decode(torch.randn(3, llava.d_model + 1))
    check(info, InputError, f"width {llava.d_model + 1}", f"width {llava.d_model}")


def test_logit_lens_on_a_store_without_lens_points(llava):
    with pytest.raises(InputError) as info:
        probekit.LogitLens(llava).top_k({"projector": torch.randn(3, 64)})
    check(info, InputError, "no lm.embed / lm.*.resid")


# ----------------------------------------------------------------------------- models
def test_wrap_an_unsupported_model():
    with pytest.raises(UnsupportedModelError) as info:
        probekit.wrap(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU()), processor=object())
    check(info, UnsupportedModelError, "Sequential")
    with pytest.raises(UnsupportedModelError) as info:
        probekit.wrap({"weights": 1}, processor=object())
    check(info, UnsupportedModelError, "dict")


def test_wrap_without_processor(llava):
    with pytest.raises(InputError) as info:
        probekit.wrap(llava.hf, processor=None)
    check(info, InputError, "processor")


@pytest.fixture
def no_from_pretrained(monkeypatch):
    import probekit.models.loading as loading

    def forbidden(config):
        raise AssertionError("weights were loaded before the bad argument was reported")

    monkeypatch.setattr(loading, "_model_class", forbidden)


def test_load_a_directory_without_config(tmp_path, no_from_pretrained):
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(InputError) as info:
        probekit.load(tmp_path)
    check(info, InputError, str(tmp_path), "no config.json")


@pytest.mark.parametrize("kwargs, words", [
    (dict(dtype="float8"), ["'float8'", "bf16"]),
    (dict(dtype="int4"), ["'int4'"]),
    (dict(device="cuda:99"), ["cuda:99", "not available"]),
    (dict(device="warp-drive"), ["warp-drive", "not a torch device"]),
])
def test_load_bad_dtype_or_device(tiny_dir, no_from_pretrained, kwargs, words):
    with pytest.raises(InputError) as info:
        probekit.load(tiny_dir("llava"), **kwargs)
    check(info, InputError, *words)


def test_load_not_a_path():
    with pytest.raises(InputError) as info:
        probekit.load(42)
    check(info, InputError, "int", "probekit.wrap")


# ----------------------------------------------------------------------------- stores
@pytest.fixture(scope="module")
def finished_store(llava, tmp_path_factory):
    """A complete disk store of the tiny LLaVA (lm.0.resid, last) over 6 images."""
    d = tmp_path_factory.mktemp("stores") / "base"
    tiny_store(llava, d, images())
    return d


def test_store_from_another_model_is_refused(no_forward, finished_store, tmp_path, tiny_dir):
    # a second model: the same architecture saved elsewhere, so another name and fingerprint
    other_dir = shutil.copytree(tiny_dir("llava"), tmp_path / "other-llava")
    other = probekit.load(other_dir)
    foreign = tmp_path / "foreign"
    probekit.collect(other, images(), "x", points="lm.0.resid", store=foreign, batch_size=3, shard_size=3,
                     progress=False)
    before = snapshot(foreign)
    with pytest.raises(StoreError) as info:
        probekit.collect(no_forward, images(), "x", points="lm.0.resid", store=foreign, batch_size=3, shard_size=3,
                         progress=False)
    check(info, StoreError, str(foreign), "another collection")
    assert snapshot(foreign) == before


@pytest.mark.parametrize("change", ["points", "positions", "prompts", "images", "shard_size"])
def test_store_from_another_collection_is_refused(no_forward, finished_store, tmp_path, change):
    store = copy_store(finished_store, tmp_path)
    before = snapshot(store)
    args = dict(images=images(), prompts="x", points="lm.0.resid", positions="last", shard_size=3)
    other = {"points": "lm.1.resid", "positions": "image_mean", "prompts": "y",
             "images": tiny.fixture_images(N, 32, seed=9), "shard_size": 6}
    args[change] = other[change]
    with pytest.raises(StoreError) as info:
        probekit.collect(no_forward, args.pop("images"), args.pop("prompts"), store=store, batch_size=3,
                         progress=False, **args)
    check(info, StoreError, "another collection")
    assert snapshot(store) == before


@pytest.mark.parametrize("damage, words", [
    (lambda s: edit_index(s, lambda i: i.update(version=3)), ["format version 3", "reads up to 2", "upgrade"]),
    (lambda s: edit_index(s, lambda i: i.update(version="two")), ["version", "'two'"]),
    (lambda s: (s / "index.json").write_text('{"format": "probekit.activ'), ["index.json is corrupt"]),
    (lambda s: (s / "index.json").write_bytes(b"\xff\xfe\x00garbage"), ["index.json is corrupt"]),
    (lambda s: (s / "index.json").write_text("[1, 2, 3]"), ["not a probekit activation store"]),
    (lambda s: edit_index(s, lambda i: i.update(format="someone.else")), ["not a probekit activation store"]),
    (lambda s: edit_index(s, lambda i: i.pop("shards")), ["corrupt", "shards"]),
    (lambda s: edit_index(s, lambda i: i.update(n="six")), ["corrupt", "n"]),
], ids=["newer-version", "version-str", "truncated-json", "binary", "json-list", "other-format", "no-shards",
        "n-not-int"])
def test_damaged_store_index(no_forward, finished_store, tmp_path, damage, words):
    store = copy_store(finished_store, tmp_path)
    damage(store)
    before = snapshot(store)
    with pytest.raises(StoreError) as info:
        ActivationStore.open(store)
    check(info, StoreError, *words)
    with pytest.raises(StoreError) as info:  # collecting into it is refused the same way, before any forward
        probekit.collect(no_forward, images(), "x", points="lm.0.resid", store=store, batch_size=3, shard_size=3,
                         progress=False)
    check(info, StoreError, *words)
    assert snapshot(store) == before


@pytest.mark.parametrize("damage, words", [
    (lambda s: (s / "shard-00001.safetensors").unlink(), ["shard-00001.safetensors"]),
    (lambda s: (s / "shard-00001.safetensors").write_bytes(b"\x00" * 7), ["shard-00001.safetensors"]),
    (lambda s: (s / "shard-00000.safetensors").write_bytes((s / "shard-00000.safetensors").read_bytes()[:60]),
     ["shard-00000.safetensors"]),
], ids=["missing", "garbage", "truncated"])
def test_damaged_shard_is_a_store_error(finished_store, tmp_path, damage, words):
    store = copy_store(finished_store, tmp_path)
    damage(store)
    with pytest.raises(StoreError) as info:
        ActivationStore.open(store)["lm.0.resid"]
    check(info, StoreError, *words)


def test_incomplete_store_and_non_store_dirs(no_forward, finished_store, tmp_path):
    store = copy_store(finished_store, tmp_path)
    edit_index(store, lambda i: (i.update(complete=False), i["shards"].pop()))
    with pytest.raises(StoreError) as info:
        ActivationStore.open(store)
    check(info, StoreError, "incomplete", "3 of 6")
    with pytest.raises(StoreError) as info:
        ActivationStore.open(tmp_path / "nothing-here")
    check(info, StoreError, "no index.json")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(StoreError) as info:
        probekit.collect(no_forward, images(), "x", store=mine, progress=False)
    check(info, StoreError, "not an activation store")
    assert snapshot(mine) == {"notes.txt": b"keep me"}


# ----------------------------------------------------------------------------- a full disk
def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def _assert_consistent(store: Path, expected_ranges: list[tuple[int, int]]) -> None:
    """index.json lists exactly the finished shards, each on disk; no partial or unlisted files."""
    index = json.loads((store / "index.json").read_text())
    assert [(s["start"], s["stop"]) for s in index["shards"]] == expected_ranges
    listed = {s["file"] for s in index["shards"]}
    on_disk = {f.name for f in store.iterdir()}
    assert on_disk == listed | {"index.json"}, f"partial or unlisted files: {sorted(on_disk - listed)}"


@pytest.mark.parametrize("where", ["save_file", "save_file-rust", "replace-shard", "replace-index"])
def test_full_disk_mid_collect_then_resume(llava, tmp_path, monkeypatch, where):
    import os

    import probekit.hooks.store_writer as store_mod  # where shards and the index are written

    ims = images()
    ref = probekit.collect(llava, ims, "x", points="lm.*.resid", batch_size=2, progress=False)
    store = tmp_path / "s"
    real_save, real_replace = store_mod.save_file, os.replace
    state = {"armed": True, "shards": 0}

    def save_file(tensors, filename, metadata=None):
        state["shards"] += 1
        if state["armed"] and where.startswith("save_file") and state["shards"] == 2:
            Path(filename).write_bytes(b"\0" * 100)  # the disk filled up halfway through the file
            if where == "save_file-rust":  # what safetensors itself raises on a full disk
                raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
            _enospc()
        return real_save(tensors, filename, metadata=metadata)

    def replace(src, dst):
        name = Path(dst).name
        if state["armed"] and state["shards"] == 2 and (
                (where == "replace-shard" and name.startswith("shard-")) or (where == "replace-index" and name == "index.json")):
            _enospc()
        return real_replace(src, dst)

    monkeypatch.setattr(store_mod, "save_file", save_file)
    monkeypatch.setattr(store_mod.os, "replace", replace)
    with pytest.raises(StoreError) as info:
        probekit.collect(llava, ims, "x", points="lm.*.resid", batch_size=2, shard_size=2, store=store,
                         progress=False)
    text = check(info, StoreError, "shard-00001.safetensors", "No space left", "free disk space", "resume")
    assert str(store) in text
    _assert_consistent(store, [(0, 2)])  # shard 1 neither half-written nor left unlisted

    state["armed"] = False
    calls = count_prepare(llava, monkeypatch)
    resumed = probekit.collect(llava, ims, "x", points="lm.*.resid", batch_size=2, shard_size=2, store=store,
                               progress=False)
    assert calls["n"] == 2  # shards 1 and 2 only: shard 0 was kept
    _assert_consistent(store, [(0, 2), (2, 4), (4, 6)])
    assert json.loads((store / "index.json").read_text())["complete"]
    for p in ref.points:
        assert torch.equal(resumed[p], ref[p])


def test_full_disk_on_the_first_write_leaves_nothing(llava, tmp_path, monkeypatch):
    import probekit.hooks.store_writer as store_mod  # where shards and the index are written

    monkeypatch.setattr(store_mod, "save_file", _enospc)
    store = tmp_path / "new" / "s"
    with pytest.raises(StoreError) as info:
        probekit.collect(llava, images(2), "x", points="lm.0.resid", store=store, progress=False)
    check(info, StoreError, "No space left")
    assert not store.exists()


def test_full_disk_when_marking_the_store_complete(llava, tmp_path, monkeypatch):
    import probekit.hooks.store_writer as store_mod  # where shards and the index are written

    real = store_mod._atomic_write_json

    def atomic(path, obj):
        if obj.get("complete"):
            _enospc()
        return real(path, obj)

    monkeypatch.setattr(store_mod, "_atomic_write_json", atomic)
    store = tmp_path / "s"
    with pytest.raises(StoreError) as info:
        probekit.collect(llava, images(4), "x", points="lm.0.resid", batch_size=2, shard_size=2, store=store,
                         progress=False)
    check(info, StoreError, "complete", "No space left")
    _assert_consistent(store, [(0, 2), (2, 4)])
    monkeypatch.setattr(store_mod, "_atomic_write_json", real)
    calls = count_prepare(llava, monkeypatch)
    done = probekit.collect(llava, images(4), "x", points="lm.0.resid", batch_size=2, shard_size=2, store=store,
                            progress=False)
    assert calls["n"] == 0 and len(done) == 4 and ActivationStore.open(store).meta["n"] == 4


@pytest.mark.parametrize("where", ["disk-full", "parent-is-a-file"])
def test_tuned_lens_save_failure_leaves_nothing(tmp_path, monkeypatch, where):
    import probekit.files.writing as files
    import probekit.readout.lens as lens_mod

    lens = lens_mod.TunedLens(8, ["lm.0.resid"])
    target = tmp_path / "lens.safetensors"
    if where == "disk-full":
        real = files._write_fd

        def write(fd, data):
            real(fd, data[: len(data) // 2])  # half a file, then the disk is full
            _enospc()

        monkeypatch.setattr(files, "_write_fd", write)
    else:
        (tmp_path / "no").write_text("a file where the directory should be")
        target = tmp_path / "no" / "lens.safetensors"
    with pytest.raises(StoreError) as info:
        lens.save(target)
    check(info, StoreError, "lens.safetensors", "it needs")
    assert not any(tmp_path.rglob("*lens*")), "a partial tuned-lens file was left behind"
