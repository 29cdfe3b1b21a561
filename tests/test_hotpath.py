"""The scan hot path (issue 13): each image decoded once, activations written into one buffer, the
logits cut to what output probes read, one ``as_store`` for every input kind, lazy point-by-point reads."""

from __future__ import annotations

import io
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

import probekit
from probekit.data.images import check_images, image_hashes
from probekit.errors import ImageError, InputError, PositionError, UnknownPointError
from probekit.hooks import ActivationStore
from probekit.hooks import store_index
from probekit.hooks.coerce import as_store
from probekit import tiny

from _stores import tiny_store  # tests/ is on sys.path

pytestmark = pytest.mark.usefixtures("one_thread")


def _pngs(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(tiny.fixture_images(n, 32, seed=3)):
        paths.append(folder / f"{i}.png")
        im.save(paths[-1])
    return paths


def _count_file_work(monkeypatch) -> tuple[Counter, Counter]:
    """Image.open calls per path, and pixel decodes (ImageFile.load of a file not yet loaded) per path."""
    opens, decodes = Counter(), Counter()
    real_open, real_load = Image.open, ImageFile.ImageFile.load

    def counting_open(fp, *a, **k):
        im = real_open(fp, *a, **k)
        if isinstance(fp, (str, Path)):
            opens[str(fp)] += 1
            im._probekit_test_path = str(fp)
        return im

    def counting_load(self):
        path = getattr(self, "_probekit_test_path", None)
        if path is not None and getattr(self, "_im", None) is None:  # a real decode, not a no-op load
            decodes[path] += 1
        return real_load(self)

    monkeypatch.setattr(Image, "open", counting_open)
    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    return opens, decodes


def test_scan_decodes_every_image_file_once(llava, tmp_path, monkeypatch):
    paths = _pngs(tmp_path / "imgs", 8)
    opens, decodes = _count_file_work(monkeypatch)
    report = probekit.scan(llava, paths, labels=[i % 2 for i in range(8)], cv=2, n_boot=50, progress=False)
    assert len(report.table)
    # one decode of each file (it was 4 before issue 13: two checks, the hash, the forward); two opens:
    # the header + PNG structure check before any model work, then the decode (it was 6)
    assert decodes == {str(p): 1 for p in paths}
    assert opens == {str(p): 2 for p in paths}


def test_collect_of_checked_images_does_not_check_again(llava, tmp_path, monkeypatch):
    paths = _pngs(tmp_path / "imgs", 4)
    checked = check_images(paths)
    assert check_images(checked) is checked
    opens, decodes = _count_file_work(monkeypatch)
    store = probekit.collect(llava, checked, "x", points="lm.0.resid", batch_size=2, progress=False)
    assert opens == decodes == {str(p): 1 for p in paths}
    monkeypatch.undo()
    # the hashes computed while decoding for the forward are the ones image_hashes computes
    assert store.meta["image_hashes"] == image_hashes(paths)


def test_hashes_of_a_resumed_disk_store(llava, tmp_path, monkeypatch):
    paths = _pngs(tmp_path / "imgs", 6)
    args = dict(points="lm.0.resid", batch_size=2, shard_size=2, progress=False)
    real = type(llava).prepare
    calls = {"n": 0}

    def crashing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash")
        return real(llava, *a, **k)

    monkeypatch.setattr(llava, "prepare", crashing)
    with pytest.raises(KeyboardInterrupt):
        probekit.collect(llava, paths, "x", store=tmp_path / "s", **args)
    monkeypatch.undo()
    done = probekit.collect(llava, paths, "x", store=tmp_path / "s", **args)
    assert ActivationStore.open(tmp_path / "s").meta["image_hashes"] == done.meta["image_hashes"] == image_hashes(paths)


def _jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG")
    return buf.getvalue()


def test_jpeg_with_bytes_after_its_end_marker_is_decoded_to_check_it(llava, tmp_path):
    im = tiny.fixture_images(1, 32)[0]
    ok = tmp_path / "trailer.jpg"
    ok.write_bytes(_jpeg(im) + b"camera trailer")
    assert check_images([ok]) == [ok]
    cut = tmp_path / "cut.jpg"
    data = _jpeg(im.resize((128, 128)))
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated"):
        check_images([cut])


def _png_with_bad_pixels(path: Path) -> Path:
    """A PNG whose chunks and checksums are valid (verify() passes) but whose pixel data does not inflate."""
    buf = io.BytesIO()
    tiny.fixture_images(1, 32)[0].save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    at = data.index(b"IDAT") - 4
    length = struct.unpack(">I", data[at:at + 4])[0]
    body = bytearray(data[at + 8:at + 8 + length])
    body[2:] = bytes(len(body) - 2)  # keep the zlib header, zero the deflate stream
    data[at + 8:at + 8 + length] = body
    data[at + 8 + length:at + 12 + length] = struct.pack(">I", zlib.crc32(b"IDAT" + bytes(body)))
    path.write_bytes(bytes(data))
    return path


def test_a_file_that_passes_the_structure_check_but_does_not_decode_is_named(llava, tmp_path):
    bad = _png_with_bad_pixels(tmp_path / "bad.png")
    good = _pngs(tmp_path / "imgs", 1)[0]
    assert check_images([good, bad]) == [good, bad]  # structure only: the one decode comes later
    with pytest.raises(ImageError) as info:
        probekit.collect(llava, [good, bad], "x", points="lm.0.resid", store=tmp_path / "s", progress=False)
    assert "image 1" in str(info.value) and "bad.png" in str(info.value) and "How to fix" in str(info.value)
    assert not (tmp_path / "s").exists()  # the first shard failed: nothing half-written


# ----------------------------------------------------------------------------- logits cut to top-k

@pytest.mark.parametrize("store_dtype", [None, torch.float16])
def test_logits_topk_keeps_the_readouts_numbers_not_the_vocabulary(llava, tmp_path, store_dtype):
    ims = tiny.fixture_images(6, 32, seed=2)
    args = dict(points=["lm.0.resid", "logits"], positions=("last", "image_mean"), batch_size=4,
                store_dtype=store_dtype, progress=False)
    full = probekit.collect(llava, ims, "x", **args)
    vocab = full["logits"].shape[-1]
    for store in (probekit.collect(llava, ims, "x", logits_topk=5, **args),
                  probekit.collect(llava, ims, "x", logits_topk=5, store=tmp_path / str(store_dtype), shard_size=4, **args)):
        assert store.points == ["lm.0.resid", "logits.topk", "logits.topk_ids"]  # forward order, no full logits
        vals, ids = store["logits.topk"], store["logits.topk_ids"]
        assert vals.shape == ids.shape == (6, 2, 5) and vals.dtype == torch.float32 and ids.dtype == torch.int64
        assert vocab > 1000 and store.info("logits.topk")["vocab"] == vocab
        assert store.positions("logits.topk") == ["last", "image_mean"]
        # what leakage.topk_features / the ladder compute from the full stored logits, to the bit
        want_vals, want_ids = torch.log_softmax(full["logits"].float(), -1).topk(5, dim=-1)
        assert torch.equal(vals, want_vals) and torch.equal(ids, want_ids)
        assert torch.equal(store["lm.0.resid"], full["lm.0.resid"])


def test_logits_topk_is_checked(llava):
    with pytest.raises(InputError, match="logits_topk"):
        probekit.collect(llava, tiny.fixture_images(2, 32), "x", points="logits", logits_topk=0, progress=False)


# ----------------------------------------------------------------------------- as_store

def test_as_store_on_every_input_kind(llava, tmp_path):
    x = torch.randn(5, 2, 3)
    mem = as_store({"lm.0.resid": x, "lm.1.resid": np.ones((5, 3), np.float32)}, positions=["last", "image_mean"])
    assert isinstance(mem, ActivationStore) and as_store(mem) is mem and len(mem) == 5
    assert mem.positions("lm.0.resid") == ["last", "image_mean"] and mem.positions("lm.1.resid") == []
    assert torch.equal(mem.read("lm.0.resid", "image_mean"), x[:, 1]) and torch.equal(mem.read("lm.0.resid", 0), x[:, 0])
    assert mem["lm.1.resid"].dtype == torch.float32
    # a store built from a dict without point_info names positions instead of indexing None
    plain = ActivationStore({"a": x})
    assert plain.positions("a") == ["0", "1"] and ActivationStore({"a": x[:, 0]}, meta={"positions": ["last"]}).positions("a") == ["last"]
    assert list(as_store(torch.zeros(4, 3)).points) == ["x"]
    assert list(as_store(torch.zeros(2, 4, 3)).points) == ["layer.0", "layer.1"]
    on_disk = probekit.collect(llava, tiny.fixture_images(4, 32), "x", points="lm.0.resid",
                               positions=("last", "image_mean"), store=tmp_path / "s", shard_size=2, batch_size=2,
                               progress=False)
    opened = as_store(str(tmp_path / "s"))
    assert opened.directory == tmp_path / "s" and torch.equal(opened["lm.0.resid"], on_disk["lm.0.resid"])
    assert torch.equal(opened.read("lm.0.resid", "image_mean"), on_disk["lm.0.resid"][:, 1])

    class Duck:  # any object with points and store[point]
        points = ["p"]
        positions = staticmethod(lambda p: ["last"])

        def __getitem__(self, p):
            return torch.ones(3, 2)

    duck = as_store(Duck())
    assert duck.points == ["p"] and duck.positions("p") == ["last"]


@pytest.mark.parametrize("acts, words", [
    (42, "cannot read activations from a int"),
    ({"a": torch.zeros(3, 2), "b": torch.zeros(4, 2)}, "has 4 samples"),
    ({"a": [1, 2]}, "not a tensor"),
    ({"a": torch.zeros(3)}, "shape (3,)"),
    (torch.zeros(1, 2, 3, 4), "[n, d] or [layers, n, d]"),
])
def test_as_store_refuses_what_it_cannot_read(acts, words):
    with pytest.raises(InputError) as info:
        as_store(acts)
    assert words in str(info.value) and "How to fix" in str(info.value)


def test_as_store_position_errors():
    s = as_store({"a": torch.zeros(3, 2, 4)}, positions=["last", "image_mean"])
    with pytest.raises(PositionError, match="'text'"):
        s.read("a", "text")
    with pytest.raises(PositionError):
        s.read("a", 2)
    with pytest.raises(InputError, match="3 position names"):
        as_store({"a": torch.zeros(3, 2, 4)}, positions=["a", "b", "c"])
    with pytest.raises(UnknownPointError):
        s.select(["b"])


# ----------------------------------------------------------------------------- lazy reads

@pytest.fixture
def disk_store(llava, tmp_path):
    tiny_store(llava, tmp_path / "s", n=40, seed=5, points="lm.*.resid", positions=("last", "image_mean"),
               shard_size=16, batch_size=8)
    return ActivationStore.open(tmp_path / "s")


def test_a_position_is_read_shard_by_shard(disk_store, monkeypatch):
    whole = disk_store["lm.1.resid"]
    seen = []
    real = store_index.read_shard

    def reading(directory, index, entry, points, check_hash=True):
        seen.append((entry["start"], tuple(points)))
        return real(directory, index, entry, points, check_hash)

    monkeypatch.setattr(store_index, "read_shard", reading)
    part = disk_store.read("lm.1.resid", "image_mean")
    assert torch.equal(part, whole[:, 1]) and part.is_contiguous()
    assert seen == [(0, ("lm.1.resid",)), (16, ("lm.1.resid",)), (32, ("lm.1.resid",))]


def test_probes_on_a_disk_store_read_one_point_at_a_time_under_memory_limit(disk_store, monkeypatch):
    """A store (or a select() view of one) goes to the probes unread: each (point, position) is read
    alone when its chunk is filled, so a memory_limit of one [n, d] matrix holds one at a time."""
    from probekit.readout import scorers as information  # heldout_logits lives with the scorers

    events = []
    real_read, real_fit = store_index.read_point, information.heldout_logits

    def reading(directory, index, point, j=None, check_hash=True):
        events.append(("read", point))
        return real_read(directory, index, point, j, check_hash)

    def fitting(X, *a, **k):
        events.append(("fit", X.shape[0]))
        return real_fit(X, *a, **k)

    import probekit.hooks.store as store_mod

    monkeypatch.setattr(store_mod, "read_point", reading)
    monkeypatch.setattr(information, "heldout_logits", fitting)
    view = disk_store.select(["lm.0.resid", "lm.1.resid"])
    assert view.points == ["lm.0.resid", "lm.1.resid"] and events == []  # a view reads nothing
    one_point = 40 * 64 * 4  # bytes of one [n, d] float32 matrix
    t = probekit.probe_layers(view, [i % 2 for i in range(40)], cv=2, n_boot=0, control=False, permutation=False,
                              progress=False, memory_limit=one_point)
    assert len(t) == 4  # 2 points x 2 positions
    # each position read alone (issue 28: a view of the whole [n, p, d] point no longer stays alive
    # behind its positions), right before its chunk is fitted, never all up front
    assert events == [("read", "lm.0.resid"), ("fit", 1), ("read", "lm.0.resid"), ("fit", 1),
                      ("read", "lm.1.resid"), ("fit", 1), ("read", "lm.1.resid"), ("fit", 1)]


# ----------------------------------------------------------------------------- prefetch (accelerators)

@pytest.mark.parametrize("ahead", [True, False])
def test_prefetch_keeps_order_and_raises_at_the_failing_job(ahead):
    import threading

    from probekit.hooks.collect import _prefetch

    threads = set()

    def work(j):
        threads.add(threading.current_thread().name)
        if j == 3:
            raise KeyError("job 3")
        return j * 10

    got = []
    with pytest.raises(KeyError, match="job 3"):
        for x in _prefetch(list(range(6)), work, ahead):
            got.append(x)
    assert got == [0, 10, 20]
    assert any(t.startswith("probekit-prepare") for t in threads) == ahead
    assert not [t for t in threading.enumerate() if t.name.startswith("probekit-prepare")]  # joined
    assert list(_prefetch([], work, ahead)) == []
