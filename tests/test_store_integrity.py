"""A damaged or crafted store never returns wrong data: every case is a StoreError naming the file,
what is wrong and the fix; resume rewrites damaged shards; a second writer is refused; bad inputs
that used to reach a raw error get a probekit error before any forward.

Every damaged file is built here from a real 6-sample store (shards of 3 rows: shard 0 = rows
0..3, shard 1 = rows 3..6).
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import probekit
from probekit.errors import ImageError, InputError, ProbekitError, StoreError
from probekit.hooks import ActivationStore
from probekit.hooks.store_writer import StoreWriter
from probekit import tiny

from _errors import check as check_error  # tests/ is on sys.path
from _stores import count_prepare, edit_index, snapshot, tiny_images, tiny_store

pytestmark = pytest.mark.usefixtures("one_thread")
ARGS = dict(points="lm.0.resid", batch_size=3, shard_size=3, progress=False)


def images(n=6):
    return tiny_images(n, seed=1)


@pytest.fixture(scope="module")
def base(llava, tmp_path_factory):
    d = tmp_path_factory.mktemp("integrity") / "base"
    ref = tiny_store(llava, d, images())
    return d, ref["lm.0.resid"].clone()


def check(info, *words) -> str:
    return check_error(info, StoreError, *words)


# ----------------------------------------------------------------------------- damaged shards
def flip_byte(d: Path) -> None:
    f = d / "shard-00001.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0x01  # inside the tensor data: still a valid safetensors file
    f.write_bytes(bytes(data))


def fewer_rows(d: Path) -> None:
    f = d / "shard-00001.safetensors"
    t = load_file(str(f))
    save_file({k: v[:2].contiguous() for k, v in t.items()}, str(f), metadata={"start": "3", "stop": "6"})


def swap(d: Path) -> None:
    a, b = d / "shard-00000.safetensors", d / "shard-00001.safetensors"
    tmp = d / "x"
    a.rename(tmp), b.rename(a), tmp.rename(b)


@pytest.mark.parametrize("damage, words, rewritten", [
    (flip_byte, ["shard-00001.safetensors", "hash of lm.0.resid does not match", "rewrite shard 1"], [1]),
    (fewer_rows, ["shard-00001.safetensors", "[2, 64]", "index says [3, 64]", "rewrite shard 1"], [1]),
    (swap, ["shard-00000.safetensors", "holds rows 3..6", "lists it for rows 0..3", "rewrite shard 0"], [0, 1]),
], ids=["byte-flipped", "fewer-rows", "swapped"])
def test_damaged_shard_is_refused_then_rewritten_on_resume(llava, base, tmp_path, monkeypatch, damage, words, rewritten):
    d = Path(shutil.copytree(base[0], tmp_path / "s"))
    damage(d)
    store = ActivationStore.open(d)  # the index is intact; the damage shows on reading
    with pytest.raises(StoreError) as info:
        store["lm.0.resid"]
    check(info, *words)
    with pytest.raises(StoreError) as info:
        ActivationStore.open(d, verify=True)
    text = check(info, *words)
    assert f"{len(rewritten)} damaged shard(s)" in text
    calls = count_prepare(llava, monkeypatch)
    with pytest.warns(UserWarning, match="rewriting shard"):
        again = probekit.collect(llava, images(), "x", store=d, **ARGS)
    assert calls["n"] == len(rewritten)  # one batch per damaged shard; the good one was kept
    assert torch.equal(again["lm.0.resid"], base[1])
    assert torch.equal(ActivationStore.open(d, verify=True)["lm.0.resid"], base[1])


# ----------------------------------------------------------------------------- damaged or crafted index
def _drop(i, k):
    i["shards"].pop(k)


@pytest.mark.parametrize("edit, words", [
    (lambda i: i["shards"].insert(1, dict(i["shards"][0])), ["shard-00000.safetensors is listed twice"]),
    (lambda i: i["shards"][1].update(file="shard-00000.safetensors"), ["'shard-00000.safetensors' for rows 3..6"]),
    (lambda i: _drop(i, 1), ["marked complete", "rows 3..6 are in no shard"]),
    (lambda i: i["shards"][0].update(stop=2, rows=2), ["covers rows 0..2", "holds rows 0..3"]),
    (lambda i: i.update(n=7), ["n = 7", "n = 6"]),
    (lambda i: (i.update(n=9), i["meta"].update(n=9)), ["n = 9", "rows 6..9 are in no shard"]),
    (lambda i: (i.update(n=5), i["meta"].update(n=5)), ["shard-00001.safetensors", "rows 3..6", "3..5"]),
    (lambda i: i["shards"][1].update(file="../other-store/shard-00001.safetensors"),
     ["'../other-store/shard-00001.safetensors'", "not a plain shard file name"]),
    (lambda i: i["shards"][1].update(file="/tmp/shard-00001.safetensors"),
     ["'/tmp/shard-00001.safetensors'", "not a plain shard file name"]),
    (lambda i: i["shards"][0].update(file=3), ["file 3", "not a file name"]),
    (lambda i: i["shards"][0].update(start="0"), ["start = '0'", "not an integer"]),
    (lambda i: i["shards"][0]["hashes"].clear(), ["hash for every point"]),
    (lambda i: i["points"]["lm.0.resid"].update(dtype="int8"), ["lm.0.resid", "dtype"]),
    (lambda i: i["points"]["lm.0.resid"].update(dtype=["float32"]), ["lm.0.resid", "dtype"]),  # was a raw TypeError
    (lambda i: i["points"]["lm.0.resid"].update(positions=[0]), ["lm.0.resid", "positions"]),
    (lambda i: i["meta"].update(model="another"), ["does not match its checksum"]),
], ids=["listed-twice", "same-file-twice", "gap-missing-shard", "gap-short-range", "wrong-n", "wrong-n-both",
        "n-too-small", "path-outside", "absolute-path", "file-not-str", "start-str", "no-hashes", "bad-dtype",
        "dtype-list", "positions-ints", "meta-edited"])
def test_crafted_index_is_refused_by_open_and_collect(no_forward, base, tmp_path, edit, words):
    d = Path(shutil.copytree(base[0], tmp_path / "s"))
    edit_index(d, edit, checksum="checksum" not in words[0])  # crafted with a matching checksum, but for the damage
    before = snapshot(d)
    with pytest.raises(StoreError) as info:
        ActivationStore.open(d)
    check(info, "index.json", *words)
    with pytest.raises(StoreError) as info:  # resume refuses it too, before any forward, touching nothing
        probekit.collect(no_forward, images(), "x", store=d, **ARGS)
    check(info, "index.json", *words)
    assert snapshot(d) == before


def test_shard_outside_the_store_is_never_read(no_forward, base, tmp_path):
    """The crafted path points at a real, valid shard of another store: it is still refused."""
    other = Path(shutil.copytree(base[0], tmp_path / "other-store"))
    d = Path(shutil.copytree(base[0], tmp_path / "s"))
    (d / "shard-00001.safetensors").unlink()
    (d / "shard-00001.safetensors").symlink_to(other / "shard-00001.safetensors")
    with pytest.raises(StoreError) as info:
        ActivationStore.open(d)["lm.0.resid"]
    check(info, "shard-00001.safetensors", "symbolic link", "rewrite shard 1")


def test_index_that_is_a_directory(no_forward, base, tmp_path):
    d = Path(shutil.copytree(base[0], tmp_path / "s"))
    (d / "index.json").unlink()
    (d / "index.json").mkdir()
    with pytest.raises(StoreError) as info:
        ActivationStore.open(d)
    check(info, "cannot read", "index.json")
    with pytest.raises(StoreError) as info:
        probekit.collect(no_forward, images(), "x", store=d, **ARGS)
    check(info, "cannot read", "index.json")


def test_old_format_without_hashes_is_refused(base, tmp_path):
    d = Path(shutil.copytree(base[0], tmp_path / "s"))
    edit_index(d, lambda i: i.update(version=1))
    with pytest.raises(StoreError) as info:
        ActivationStore.open(d)
    check(info, "format version 1", "without content hashes")


def test_reads_are_right_after_all_checks(base):
    """The checks are not a blanket refusal: an intact store reads back exactly."""
    s = ActivationStore.open(base[0], verify=True)
    assert torch.equal(s["lm.0.resid"], base[1]) and s["lm.0.resid"].shape == (6, 64)
    index = json.loads((base[0] / "index.json").read_text())
    assert [(e["file"], e["start"], e["stop"], e["rows"]) for e in index["shards"]] == [
        ("shard-00000.safetensors", 0, 3, 3), ("shard-00001.safetensors", 3, 6, 3)]
    assert all(len(e["hashes"]["lm.0.resid"]) == 32 for e in index["shards"])  # xxh3-128 hex


# ----------------------------------------------------------------------------- one writer at a time
def test_second_writer_is_refused_while_the_first_holds_the_lock(no_forward, tmp_path):
    d = tmp_path / "s"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, filelock; l = filelock.FileLock(sys.argv[1], timeout=0); l.acquire(); "
         "print('held', flush=True); sys.stdin.read()", str(d / "write.lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        d.mkdir()
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreError) as info:
            probekit.collect(no_forward, images(), "x", store=d, **ARGS)
        check(info, "another process is writing", str(d))
    finally:
        holder.communicate("")
    assert not (d / "index.json").exists()


def test_second_writer_in_this_process_is_refused_and_the_lock_is_released(llava, tmp_path):
    d = tmp_path / "s"
    first = StoreWriter(d, {}, 6, 3, fingerprint="f")
    with pytest.raises(StoreError) as info:
        StoreWriter(d, {}, 6, 3, fingerprint="f")
    check(info, "another process is writing")
    first.close()
    assert not (d / "write.lock").exists()
    with StoreWriter(d, {}, 6, 3, fingerprint="f") as again:  # free again
        assert again.done_ranges() == set()


# ----------------------------------------------------------------------------- bad inputs, before any forward
def _png(im: Image.Image) -> bytes:
    b = io.BytesIO()
    im.save(b, "PNG")
    return b.getvalue()


def _bomb(path: Path) -> Path:
    data = bytearray(_png(Image.new("RGB", (1, 1))))
    data[16:24] = struct.pack(">II", 30000, 30000)  # IHDR width, height: 9e8 pixels declared
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def _truncated(path: Path) -> Path:
    data = _png(tiny.fixture_images(1, 64)[0])
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def _sixteen_bit_file(path: Path) -> Path:
    Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)).save(path)
    return path


@pytest.mark.parametrize("make, error, words", [
    (lambda t: Image.fromarray((np.arange(1024).reshape(32, 32) * 60).astype(np.uint16)), ImageError, ["I;16", "8 bits"]),
    (lambda t: str(_sixteen_bit_file(t / "16.png")), ImageError, ["16.png", "I;16"]),
    (lambda t: Image.new("RGB", (0, 0)), ImageError, ["0x0", "empty"]),
    (lambda t: np.zeros((0, 0, 3), np.uint8), ImageError, ["(0, 0, 3)", "no pixels"]),
    (lambda t: torch.zeros(3, 0, 0), ImageError, ["(3, 0, 0)", "no pixels"]),
    (lambda t: str(_bomb(t / "bomb.png")), ImageError, ["bomb.png", "more pixels than PIL will decode"]),
    (lambda t: str(_truncated(t / "cut.png")), ImageError, ["cut.png", "not a readable image"]),
    (lambda t: Image.open(_truncated(t / "cut.png")), ImageError, ["cannot be decoded"]),
    (lambda t: np.array([["a", "b"], ["c", "d"]], dtype=object), ImageError, ["dtype object"]),
    (lambda t: np.full((4, 4, 3), 40000, np.uint16), ImageError, ["40000", "above 255"]),
], ids=["I16-pil", "I16-file", "0x0-pil", "0x0-array", "0x0-tensor", "bomb-header", "truncated-file",
        "truncated-lazy-pil", "object-array", "uint16-array"])
def test_bad_image_is_refused_before_any_forward(no_forward, tmp_path, make, error, words):
    bad = make(tmp_path)
    with pytest.raises(error) as info:
        probekit.collect(no_forward, [images(1)[0], bad], "x", store=tmp_path / "s", **ARGS)
    err = info.value
    assert type(err) is error and "image 1" in str(err) and "How to fix" in str(err)
    for w in words:
        assert w in str(err), f"{w!r} not in {err}"
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("prompts", ["<image> What is this?", ["ok", "Look: <image>"]], ids=["one", "per-image"])
def test_prompt_with_the_image_token_is_refused(no_forward, tmp_path, prompts):
    with pytest.raises(InputError) as info:
        probekit.collect(no_forward, images(2), prompts, store=tmp_path / "s", **ARGS)
    assert "already contains the image token '<image>'" in str(info.value) and "How to fix" in str(info.value)
    assert not (tmp_path / "s").exists()


def test_store_that_is_a_file(no_forward, tmp_path):
    f = tmp_path / "store.bin"
    f.write_bytes(b"mine")
    with pytest.raises(StoreError) as info:
        probekit.collect(no_forward, images(2), "x", store=f, **ARGS)
    check(info, "is a file, not a directory")
    assert f.read_bytes() == b"mine"
    with pytest.raises(StoreError) as info:
        ActivationStore.open(f)
    check(info, "is a file")


def test_checkpoint_with_truncated_weights(tiny_dir, tmp_path):
    d = Path(shutil.copytree(tiny_dir("llava"), tmp_path / "m"))
    (w,) = d.glob("*.safetensors")
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(ProbekitError) as info:
        probekit.load(d)
    assert type(info.value) is InputError
    assert "weights" in str(info.value) and "damaged" in str(info.value) and "How to fix" in str(info.value)


_KILLED = r"""
import os, signal, sys
os.environ["HF_HUB_OFFLINE"] = "1"
import torch; torch.set_num_threads(1)
import probekit
from probekit import tiny
model = probekit.load(sys.argv[1])
calls = {"n": 0}
real = type(model).prepare
def prepare(*a, **k):
    calls["n"] += 1
    if calls["n"] == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # mid-run, holding write.lock, no cleanup
    return real(model, *a, **k)
model.prepare = prepare
probekit.collect(model, tiny.fixture_images(6, 32, seed=1), "x", store=sys.argv[2], points="lm.0.resid",
                 batch_size=3, shard_size=3, progress=False)
"""


def test_kill_9_leaves_a_stale_lock_that_does_not_block_the_resume(llava, base, tiny_dir, tmp_path, monkeypatch):
    d = tmp_path / "s"
    res = subprocess.run([sys.executable, "-c", _KILLED, tiny_dir("llava"), str(d)], capture_output=True, text=True,
                         timeout=240)
    assert res.returncode == -9, res.stderr[-2000:]
    assert (d / "write.lock").exists()  # the kernel dropped the lock; the file stays
    assert [s["file"] for s in json.loads((d / "index.json").read_text())["shards"]] == ["shard-00000.safetensors"]
    calls = count_prepare(llava, monkeypatch)
    again = probekit.collect(llava, images(), "x", store=d, **ARGS)
    assert calls["n"] == 1 and torch.equal(again["lm.0.resid"], base[1])
    assert sorted(f.name for f in d.iterdir()) == ["index.json", "shard-00000.safetensors", "shard-00001.safetensors"]
