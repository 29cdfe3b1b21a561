"""Positions and padding, hook hygiene, the disk store and its resume, bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import probekit
from probekit.errors import ImageError, InputError, PositionError, StoreError, UnknownPointError, UnsupportedModelError
from probekit.hooks import ActivationStore, Recorder
from probekit.hooks.positions import PositionContext, select
from probekit import tiny

PROMPTS = ["What shape?", "What colour is the big square on the left of the picture, please?", "Hi",
           "How many circles are there in this image?", "Is it red", "Name the user"]


def _hook_counts(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf.modules())


# ----------------------------------------------------------------------------- positions
@pytest.mark.parametrize("position", ["last", "image_mean", "text_mean", 0, 2, -1, -3, slice(0, 2), slice(-2, None)])
def test_padding_side_and_batching_do_not_change_results(llava, position):
    images = tiny.fixture_images(6, 32, seed=3)
    alone = torch.cat([probekit.collect(llava, [im], [p], points="lm.*.resid", positions=position,
                                        progress=False)["lm.1.resid"] for im, p in zip(images, PROMPTS)])
    for side in ("left", "right"):
        batched = probekit.collect(llava, images, PROMPTS, points="lm.*.resid", positions=position,
                                   batch_size=4, padding_side=side, progress=False)["lm.1.resid"]
        # padded rows run other matmul shapes, so equal to float rounding, not bit for bit
        torch.testing.assert_close(batched, alone, atol=2e-5, rtol=1e-4)


def test_selectors_on_a_hand_made_batch():
    # row 0: left padded (2 pads), row 1: no padding; image tokens at real ranks 1-2
    am = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]).bool()
    img = torch.tensor([[0, 0, 0, 1, 1, 0], [0, 1, 1, 0, 0, 0]]).bool()
    ctx = PositionContext(attention_mask=am, image_mask=img, input_ids=torch.zeros(2, 6, dtype=torch.long))
    h = torch.arange(12, dtype=torch.float32).view(2, 6, 1)
    assert select(h, "last", ctx).flatten().tolist() == [5, 11]
    assert select(h, 0, ctx).flatten().tolist() == [2, 6]
    assert select(h, -2, ctx).flatten().tolist() == [4, 10]
    assert select(h, "image_mean", ctx).flatten().tolist() == [3.5, 7.5]
    assert select(h, "text_mean", ctx).flatten().tolist() == [(2 + 5) / 2, (6 + 9 + 10 + 11) / 4]
    assert select(h, "image", ctx).squeeze(-1).tolist() == [[3, 4], [7, 8]]
    assert select(h, slice(1, 3), ctx).squeeze(-1).tolist() == [[3, 4], [7, 8]]
    assert select(h, lambda c: torch.tensor([2, 0]), ctx).flatten().tolist() == [2, 6]
    assert select(h, lambda c: c.image_mask, ctx).squeeze(-1).tolist() == [[3, 4], [7, 8]]
    with pytest.raises(PositionError, match="different number"):
        select(h, "text", ctx)
    with pytest.raises(PositionError, match="outside"):
        select(h, 4, ctx)


def test_multiple_positions_stack_along_axis_one(llava):
    images = tiny.fixture_images(3, 32)
    s = probekit.collect(llava, images, PROMPTS[:3], points=["lm.0.resid", "vision.0.resid"],
                         positions=("last", "image_mean", 0), progress=False)
    one = {p: probekit.collect(llava, images, PROMPTS[:3], points="lm.0.resid", positions=p, progress=False)["lm.0.resid"]
           for p in ("last", "image_mean", 0)}
    assert s["lm.0.resid"].shape == (3, 3, llava.d_model)
    assert s.positions("lm.0.resid") == ["last", "image_mean", "0"]
    for j, p in enumerate(("last", "image_mean", 0)):
        assert torch.equal(s["lm.0.resid"][:, j], one[p])
    # vision points have no text positions: pooled over patches
    assert s["vision.0.resid"].dim() == 2 and s.positions("vision.0.resid") == ["image_mean"]


# ----------------------------------------------------------------------------- hooks
def test_hooks_are_removed_after_an_exception_in_the_forward(llava):
    before = _hook_counts(llava)
    state = {k: v.clone() for k, v in llava.hf.state_dict().items()}

    def boom(ctx):
        raise RuntimeError("injected")

    with pytest.raises(RuntimeError, match="injected"):
        probekit.collect(llava, tiny.fixture_images(2, 32), "x", points="lm.*", positions=boom, progress=False)
    assert _hook_counts(llava) == before
    inputs = llava.prepare(tiny.fixture_images(1, 32), ["x"])
    with pytest.raises(ValueError, match="inside"):
        with Recorder(llava, ["lm.0.resid", "lm.1.attn"]):
            assert _hook_counts(llava) == before + 2
            raise ValueError("inside")
    assert _hook_counts(llava) == before
    with pytest.raises(Exception):
        with Recorder(llava, ["lm.0.resid"]) as rec:
            rec.run(**{**inputs, "pixel_values": inputs["pixel_values"][:, :2]})  # wrong channel count
    assert _hook_counts(llava) == before
    assert all(torch.equal(v, state[k]) for k, v in llava.hf.state_dict().items())


def test_collect_leaves_the_model_unchanged(llava):
    state = {k: v.clone() for k, v in llava.hf.state_dict().items()}
    before = _hook_counts(llava)
    training = llava.hf.training
    probekit.collect(llava, tiny.fixture_images(2, 32), "x", points="*", progress=False)
    assert _hook_counts(llava) == before and llava.hf.training == training
    assert all(torch.equal(v, state[k]) for k, v in llava.hf.state_dict().items())


def test_early_stop_gives_the_same_numbers_as_a_full_forward(llava):
    images = tiny.fixture_images(2, 32)
    early = probekit.collect(llava, images, "x", points="lm.0.resid", progress=False)["lm.0.resid"]
    full = probekit.collect(llava, images, "x", points=["lm.0.resid", "logits"], progress=False)["lm.0.resid"]
    assert torch.equal(early, full)


# ----------------------------------------------------------------------------- store
def test_disk_store_round_trip(llava, tmp_path):
    images = tiny.fixture_images(10, 32, seed=5)
    mem = probekit.collect(llava, images, PROMPTS[:1] * 10, points="lm.*.resid", positions=("last", "image_mean"),
                           batch_size=3, progress=False)
    disk = probekit.collect(llava, images, PROMPTS[:1] * 10, points="lm.*.resid", positions=("last", "image_mean"),
                            batch_size=3, store=tmp_path / "s", shard_size=4, progress=False)  # rounded up to 6
    files = sorted(f.name for f in (tmp_path / "s").iterdir())
    assert files == ["index.json", "shard-00000.safetensors", "shard-00001.safetensors"]
    index = json.loads((tmp_path / "s" / "index.json").read_text())
    assert index["complete"] and index["n"] == 10 and index["format"] == "probekit.activations"
    reopened = ActivationStore.open(tmp_path / "s")
    for p in mem.points:
        assert torch.equal(disk[p], mem[p]) and torch.equal(reopened[p], mem[p])
        assert reopened.positions(p) == ["last", "image_mean"]
    assert reopened.meta["model"] == llava.name and len(reopened) == 10


def test_resume_after_a_crash_recomputes_nothing_finished(llava, tmp_path, monkeypatch):
    images = tiny.fixture_images(12, 32, seed=6)
    ref = probekit.collect(llava, images, "x", points="lm.*.resid", batch_size=2, progress=False)
    calls = {"n": 0}
    real_prepare = type(llava).prepare

    def crashing(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated crash")  # first batch of the third shard
        return real_prepare(self, *a, **k)

    monkeypatch.setattr(type(llava), "prepare", crashing)
    with pytest.raises(KeyboardInterrupt):
        probekit.collect(llava, images, "x", points="lm.*.resid", batch_size=2, shard_size=4,
                         store=tmp_path / "s", progress=False)
    index = json.loads((tmp_path / "s" / "index.json").read_text())
    assert not index["complete"] and [(s["start"], s["stop"]) for s in index["shards"]] == [(0, 4), (4, 8)]
    with pytest.raises(StoreError, match="incomplete"):
        ActivationStore.open(tmp_path / "s")
    calls["n"] = 100  # no more crashes; count forward batches of the resumed run
    resumed = probekit.collect(llava, images, "x", points="lm.*.resid", batch_size=2, shard_size=4,
                               store=tmp_path / "s", progress=False)
    assert calls["n"] - 100 == 2  # 4 remaining samples / batch 2: the finished shards were not recomputed
    for p in ref.points:
        assert torch.equal(resumed[p], ref[p])
    assert not list((tmp_path / "s").glob("*.tmp"))


def test_a_store_from_another_collection_is_refused(llava, tmp_path):
    images = tiny.fixture_images(4, 32)
    probekit.collect(llava, images, "x", points="lm.0.resid", store=tmp_path / "s", progress=False)
    with pytest.raises(StoreError, match="another collection"):
        probekit.collect(llava, images, "x", points="lm.1.resid", store=tmp_path / "s", progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not an activation store"):
        probekit.collect(llava, images, "x", store=tmp_path / "junk", progress=False)
    assert (tmp_path / "junk" / "notes.txt").read_text() == "mine"


def test_store_has_no_pickle(llava, tmp_path):
    probekit.collect(llava, tiny.fixture_images(3, 32), "x", store=tmp_path / "s", progress=False)
    for f in (tmp_path / "s").iterdir():
        head = f.read_bytes()[:2]
        assert head != b"\x80\x04" and head != b"\x80\x02", f"{f} looks like a pickle"
        assert f.suffix in (".json", ".safetensors")


# ----------------------------------------------------------------------------- bad input (no_forward: conftest.py)
@pytest.mark.parametrize("kwargs, error, words", [
    (dict(points="lm.99.resid"), UnknownPointError, "lm.99.resid"),
    (dict(points=["lm.0.resid", "decoder.*"]), UnknownPointError, "decoder.*"),
    (dict(images=[]), ImageError, "empty"),
    (dict(prompts=["a", "b", "c"]), InputError, "3 prompts"),
    (dict(images=[1, 2]), ImageError, "type int"),
    (dict(images=["/nonexistent/x.png", "/nonexistent/y.png"]), ImageError, "does not exist"),
    (dict(images=[np.zeros((5, 5, 7)), np.zeros((5, 5, 7))]), ImageError, "shape"),
    (dict(positions="middle"), PositionError, "middle"),
    (dict(positions=1.5), PositionError, "not a selector"),
    (dict(batch_size=0), InputError, "batch_size"),
    (dict(backend="jax"), InputError, "jax"),
    (dict(prompts=[1, 2]), InputError, "prompt 0"),
])
def test_bad_input_raises_before_any_forward(no_forward, kwargs, error, words, tmp_path):
    args = dict(images=tiny.fixture_images(2, 32), prompts=None, points="lm.*.resid", positions="last")
    args.update(kwargs)
    with pytest.raises(error, match=None) as info:
        probekit.collect(no_forward, args.pop("images"), args.pop("prompts"), store=tmp_path / "s", progress=False, **args)
    assert words in str(info.value) and "How to fix" in str(info.value)
    assert not (tmp_path / "s").exists()  # nothing half-written


def test_corrupt_image_file_is_named(no_forward, tmp_path):
    good = tmp_path / "good.png"
    tiny.fixture_images(1, 32)[0].save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(good.read_bytes()[:40])  # truncated
    with pytest.raises(ImageError, match="bad.png"):
        probekit.collect(no_forward, [good, bad], progress=False)


def test_a_model_probekit_cannot_map():
    with pytest.raises(UnsupportedModelError, match="no list of language-model blocks"):
        probekit.wrap(torch.nn.Sequential(torch.nn.Linear(3, 3)), processor=object())
    with pytest.raises(UnsupportedModelError, match="nn.Module"):
        probekit.wrap("not a model", processor=object())
    with pytest.raises(InputError, match="config.json"):
        probekit.load("./no/such/dir")


def test_unknown_model_type_uses_the_generic_fallback(tiny_dir):
    import transformers
    path = tiny_dir("llava")
    hf = transformers.AutoModelForImageTextToText.from_pretrained(path)
    proc = transformers.AutoProcessor.from_pretrained(path)
    generic = probekit.wrap(hf, proc, family="generic")
    named = probekit.wrap(hf, proc)
    assert generic.points("lm.*") == named.points("lm.*")
    assert generic.layout.lm_layers == named.layout.lm_layers
    assert generic.layout.final_norm == named.layout.final_norm and generic.layout.unembed == named.layout.unembed
    assert generic.layout.vision_layers == named.layout.vision_layers
