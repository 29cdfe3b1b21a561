"""Property tests: position selectors against a pure-Python reference, and the disk store's
shard / crash / resume logic against an in-memory collect."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import probekit
from probekit.errors import PositionError, StoreError
from probekit.hooks import ActivationStore
from probekit.hooks.positions import PositionContext, select
from probekit import tiny

IMG, TXT = 7, 1  # token ids of image and text tokens in the synthetic batches
D = 2


pytestmark = pytest.mark.usefixtures("one_thread")


# ============================================================================ positions
@st.composite
def batches(draw):
    """Rows of random length with random image-token positions, padded on a random side."""
    b = draw(st.integers(1, 4))
    rows = [draw(st.lists(st.booleans(), min_size=1, max_size=8)) for _ in range(b)]  # True = image token
    extra = draw(st.integers(0, 2))
    side = draw(st.sampled_from(["left", "right"]))
    pad_ids = draw(st.lists(st.sampled_from([0, IMG]), min_size=8 + extra, max_size=8 + extra))  # pads may look like images
    return rows, extra, side, pad_ids


def _padded(rows, extra, side, pad_ids):
    S = max(len(r) for r in rows) + extra
    ids = torch.zeros(len(rows), S, dtype=torch.long)
    am = torch.zeros(len(rows), S, dtype=torch.bool)
    h = torch.zeros(len(rows), S, D)
    real_vals = []
    for i, r in enumerate(rows):
        L = len(r)
        cols = range(S - L, S) if side == "left" else range(L)
        pads = [c for c in range(S) if c not in cols]
        vals = [[float(100 * i + 10 * j + 1), float(-(100 * i + 10 * j) - 3)] for j in range(L)]
        real_vals.append(vals)
        for j, c in enumerate(cols):
            ids[i, c] = IMG if r[j] else TXT
            am[i, c] = True
            h[i, c] = torch.tensor(vals[j])
        for c in pads:
            ids[i, c] = pad_ids[c]
            h[i, c] = torch.tensor([1e6, -1e6])  # would show up in any result that used a pad
    ctx = PositionContext.from_inputs({"input_ids": ids, "attention_mask": am.long()}, ids == IMG)
    return h, ctx, real_vals


class Undefined(Exception):
    pass


def _reference(rows, real_vals, p):
    """What the selector means on each unpadded row, in plain Python."""
    out = []
    for r, vals in zip(rows, real_vals):
        L = len(r)
        img = [v for v, is_img in zip(vals, r) if is_img]
        txt = [v for v, is_img in zip(vals, r) if not is_img]
        if p == "last":
            out.append(vals[-1])
        elif p in ("image_mean", "text_mean"):
            sel = img if p == "image_mean" else txt
            if not sel:
                raise Undefined
            out.append([sum(c) / len(sel) for c in zip(*sel)])
        elif p in ("image", "text"):
            out.append(img if p == "image" else txt)
        elif isinstance(p, int):
            if not -L <= p < L:
                raise Undefined
            out.append(vals[p])
        else:  # slice
            out.append([vals[k] for k in range(L)[p]])
    if p in ("image", "text") or isinstance(p, slice):
        counts = {len(o) for o in out}
        if len(counts) != 1 or counts == {0}:
            raise Undefined  # a [b, k, d] result needs the same, non-zero k in every row
    return out


selectors = st.one_of(
    st.sampled_from(["last", "image_mean", "text_mean", "image", "text"]),
    st.integers(-10, 10),
    st.builds(slice, st.none() | st.integers(-10, 10), st.none() | st.integers(-10, 10), st.none() | st.integers(1, 3)),
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(batch=batches(), p=selectors)
def test_selectors_match_the_unpadded_reference(batch, p):
    rows, extra, side, pad_ids = batch
    h, ctx, real_vals = _padded(rows, extra, side, pad_ids)
    try:
        want = _reference(rows, real_vals, p)
    except Undefined:
        with pytest.raises(PositionError):
            select(h, p, ctx)
        return
    got = select(h, p, ctx)
    assert got.shape[0] == len(rows)
    expected = torch.tensor(want, dtype=torch.float32)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-4)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(batch=batches(), p=selectors, pad_more=st.integers(1, 3))
def test_more_padding_never_changes_a_selection(batch, p, pad_more):
    """The same rows with extra padding (on the same side) select the same values."""
    rows, extra, side, pad_ids = batch
    h1, ctx1, _ = _padded(rows, extra, side, pad_ids)
    h2, ctx2, _ = _padded(rows, extra + pad_more, side, pad_ids + [IMG] * pad_more)
    try:
        a = select(h1, p, ctx1)
    except PositionError:
        with pytest.raises(PositionError):
            select(h2, p, ctx2)
        return
    assert torch.equal(a, select(h2, p, ctx2))


# ============================================================================ store / resume
_REF: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
IMAGES = tiny.fixture_images(12, 32, seed=4)
POINTS = ["lm.0.resid", "lm.1.resid"]


class Crash(Exception):
    pass


def _reference_collect(model, n, bs):
    if (n, bs) not in _REF:
        s = probekit.collect(model, IMAGES[:n], "x", points=POINTS, positions=("last", "image_mean"),
                             batch_size=bs, progress=False)
        _REF[(n, bs)] = {p: s[p] for p in POINTS}
    return _REF[(n, bs)]


def _shards(n, bs, shard_size):
    size = -(-shard_size // bs) * bs  # collect rounds shards up to whole batches
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def _batches(a, b, bs):
    return -(-(b - a) // bs)


def _check_index(directory: Path, ref, complete_prefix=None):
    """index.json lists only complete shards: each file exists, holds its rows, equals the reference."""
    index = json.loads((directory / "index.json").read_text())
    listed = [(s["start"], s["stop"]) for s in index["shards"]]
    if complete_prefix is not None:
        assert listed == complete_prefix
    files = {s["file"] for s in index["shards"]}
    assert {f.name for f in directory.iterdir()} == files | {"index.json"}
    for s in index["shards"]:
        from safetensors.torch import load_file

        t = load_file(str(directory / s["file"]))
        for p in POINTS:
            assert torch.equal(t[p], ref[p][s["start"]:s["stop"]])
    return index


@settings(max_examples=10, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 12), bs=st.integers(1, 5), shard_size=st.integers(1, 8), data=st.data())
def test_crash_and_resume_equals_in_memory(tiny_model, monkeypatch, n, bs, shard_size, data):
    model = tiny_model("llava")
    ref = _reference_collect(model, n, bs)
    shards = _shards(n, bs, shard_size)
    per_shard = [_batches(a, b, bs) for a, b in shards]
    total = sum(per_shard)
    crash_at = data.draw(st.integers(1, total + 1), label="crash on prepare call")  # total + 1: no crash
    kind = data.draw(st.sampled_from([Crash, KeyboardInterrupt]), label="exception")

    import probekit.hooks.store_writer as store_mod  # where the index is written

    real_prepare = type(model).prepare
    real_write = store_mod._atomic_write_json
    calls = {"n": 0, "limit": crash_at}

    def prepare(*a, **k):
        calls["n"] += 1
        if calls["n"] == calls["limit"]:
            raise kind("simulated crash")
        return real_prepare(model, *a, **k)

    def write_index(path, obj):
        # at every index update, every shard it is about to list is already complete on disk
        for s in obj["shards"]:
            f = Path(path).parent / s["file"]
            assert f.is_file() and not Path(str(f) + ".tmp").exists()
        return real_write(path, obj)

    root = Path(tempfile.mkdtemp())
    try:
        directory = root / "store"
        with monkeypatch.context() as mp:
            mp.setattr(model, "prepare", prepare)
            mp.setattr(store_mod, "_atomic_write_json", write_index)
            args = dict(points=POINTS, positions=("last", "image_mean"), batch_size=bs, shard_size=shard_size,
                        store=directory, progress=False)
            if crash_at <= total:
                with pytest.raises(kind):
                    probekit.collect(model, IMAGES[:n], "x", **args)
                done, seen = [], 0
                for (a, b), k in zip(shards, per_shard):
                    if seen + k < crash_at:
                        done.append((a, b))
                    seen += k
                if done:
                    index = _check_index(directory, ref, complete_prefix=done)
                    assert not index["complete"]
                    with pytest.raises(StoreError, match="incomplete"):
                        ActivationStore.open(directory)
                else:
                    assert not directory.exists()  # nothing finished: nothing left to trip over
                left = total - sum(per_shard[: len(done)])
            else:
                left = total
            calls["n"], calls["limit"] = 0, -1
            resumed = probekit.collect(model, IMAGES[:n], "x", **args)
        assert calls["n"] == left  # only unfinished shards were recomputed
        index = _check_index(directory, ref, complete_prefix=shards)
        assert index["complete"]
        for p in POINTS:
            assert torch.equal(resumed[p], ref[p])
            assert torch.equal(ActivationStore.open(directory)[p], ref[p])
    finally:
        shutil.rmtree(root, ignore_errors=True)
