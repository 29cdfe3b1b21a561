"""The per-collect input fast path (issue 13): the same bits as the stock processor, or the stock processor.

``FastPixels`` against transformers' PIL image processors on varied images, sizes and settings
(``torch.equal``); ``Model.prepare`` inside ``model.input_cache()`` against the stock path for
every tiny family; one processor call and one template rendering per prompt in a collect;
the masked mean's reused buffer and the once-per-batch position reductions give the same bits.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from PIL import Image

import probekit
from probekit.hooks import positions as hp
from probekit.hooks.positions import PositionContext, select
from probekit.models.fast_pixels import FastPixels
from probekit.models.input_cache import InputCache

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = [(96, 96), (32, 32), (120, 80), (80, 120), (97, 301), (480, 640), (5, 7), (1, 50), (224, 224), (385, 383)]


def _images(seed: int = 0) -> list[Image.Image]:
    """Noise and smooth gradients (resampling filters treat them differently), every size in SIZES."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in SIZES:
        out.append(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
        yy, xx = np.mgrid[0:h, 0:w]
        grad = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), (xx + yy) % 256], -1)
        out.append(Image.fromarray(grad.astype(np.uint8)))
    return out


def _processors() -> list:
    from transformers import BlipImageProcessorPil, CLIPImageProcessorPil, SiglipImageProcessorPil

    return [
        CLIPImageProcessorPil(),  # shortest edge 224, centre crop 224, bicubic
        CLIPImageProcessorPil(size={"shortest_edge": 96}, crop_size={"height": 96, "width": 96}),  # the demo's
        CLIPImageProcessorPil(size={"shortest_edge": 40}, crop_size={"height": 33, "width": 37}, resample=2),
        CLIPImageProcessorPil(size={"height": 48, "width": 64}, crop_size={"height": 40, "width": 40}, resample=1),
        CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}, do_normalize=False),
        CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}, do_rescale=False),
        SiglipImageProcessorPil(),  # 224 x 224, no crop, mean = std = 0.5
        SiglipImageProcessorPil(size={"height": 50, "width": 30}, resample=0, image_mean=[0.1, 0.2, 0.3],
                                image_std=[0.9, 0.8, 0.7], rescale_factor=1 / 127.5),
        BlipImageProcessorPil(),  # 384 x 384, bicubic
        BlipImageProcessorPil(size={"height": 24, "width": 24}, resample=4),
    ]


@pytest.mark.parametrize("k", range(10))
def test_fast_pixels_equal_the_stock_image_processor(k):
    ip = _processors()[k]
    fast = FastPixels.of(ip)
    assert fast is not None, type(ip).__name__
    images = _images(seed=k)
    for im in images:  # one by one: every size, also where the output shape differs between images
        want = ip(im, return_tensors="pt")["pixel_values"]
        got = fast([im])
        assert got is not None and got.dtype == want.dtype and torch.equal(got, want), (type(ip).__name__, im.size)
    if not ip.do_center_crop and "shortest_edge" in ip.size and ip.size["shortest_edge"]:
        return  # shortest-edge resize without a crop: one output size per aspect ratio, no batch of all
    batch = images + [im.convert("L").convert("RGB") for im in images[:4]]
    want = ip(batch, return_tensors="pt")["pixel_values"]
    got = fast(batch)
    assert got is not None and torch.equal(got, want)


def test_fast_pixels_hands_back_what_it_does_not_reproduce():
    from transformers import CLIPImageProcessorPil, Qwen2VLImageProcessorPil

    ip = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    fast = FastPixels.of(ip)
    rgb = Image.new("RGB", (40, 40), (10, 20, 30))
    assert fast([rgb]) is not None
    keyed = Image.new("RGB", (40, 40), (10, 20, 30))
    keyed.info["transparency"] = (10, 20, 30)  # an RGB PNG's colour key: the stock path composites it on white
    palette = Image.new("P", (40, 40))
    palette.info["transparency"] = 0
    for odd in (Image.new("RGBA", (40, 40)), Image.new("L", (40, 40)), Image.new("LA", (40, 40)), palette, keyed,
                Image.new("CMYK", (40, 40)), np.zeros((40, 40, 3), np.uint8), torch.zeros(3, 40, 40)):
        assert fast([rgb, odd]) is None
    small_crop = CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 32, "width": 32})
    assert FastPixels.of(small_crop)([rgb]) is None  # the stock crop pads an image smaller than the crop
    wide = CLIPImageProcessorPil(size={"shortest_edge": 32}, do_center_crop=False)
    assert FastPixels.of(wide)([rgb, Image.new("RGB", (80, 40))]) is None  # two output sizes: no one tensor

    class Tweaked(CLIPImageProcessorPil):
        def normalize(self, image, mean, std, **kwargs):
            return super().normalize(image, mean, std, **kwargs) * 2

    assert FastPixels.of(Tweaked()) is None  # a pipeline method overridden: not the one it reproduces
    assert FastPixels.of(CLIPImageProcessorPil(size={"shortest_edge": 32, "longest_edge": 64})) is None
    assert FastPixels.of(CLIPImageProcessorPil(do_rescale=False, do_normalize=False)) is None
    assert FastPixels.of(Qwen2VLImageProcessorPil()) is None
    assert FastPixels.of(None) is None


def _batches(model) -> list[tuple[list, list[str]]]:
    ims = _images(seed=7)
    same = ["What is the username?"] * 5
    return [(ims[:5], same), (ims[5:10], same), (ims[10:15], ["What?", "Who?", "What?", "", "Why not, then?"]),
            (ims[:1], ["Alone."]), (ims[15:20], same)]


@pytest.mark.parametrize("family", ["llava", "blip2", "paligemma", "qwen2_vl", "idefics3", "mllama"])
def test_prepare_in_the_input_cache_equals_the_stock_path(tiny_model, family):
    model = tiny_model(family)
    for padding_side in (None, "left", "right"):
        stock = [model.prepare(ims, ps, padding_side=padding_side) for ims, ps in _batches(model)]
        with model.input_cache():
            cached = [model.prepare(ims, ps, padding_side=padding_side) for ims, ps in _batches(model) * 2]
            cache = model._input_cache
            fast = family in ("llava", "blip2", "paligemma")  # plain PIL image processors, fixed image tokens
            assert (cache._pixels is not None and len(cache._rows) == 2) == fast  # two one-prompt batches' keys
            assert len(cache._texts) == 6  # each distinct prompt rendered once
        for want, got in zip(stock * 2, cached):
            assert list(got) == list(want)
            for k in want:
                assert type(got[k]) is type(want[k])
                assert torch.equal(got[k], want[k]) if isinstance(want[k], torch.Tensor) else got[k] == want[k], k
    assert model._input_cache is None  # the cache lives for the block only


def test_a_collect_calls_the_processor_once_per_prompt(tiny_model, monkeypatch):
    model = tiny_model("llava")
    images = probekit.tiny.fixture_images(24, 32, seed=1)
    want = probekit.collect(model, images, "What shape?", points=["lm.*.resid", "logits"],
                            positions=("last", "image_mean"), batch_size=8, progress=False)
    calls = {"processor": 0, "template": 0}
    family = model._impl
    real_call, real_format = family.call_processor, family.format_prompt

    def call_processor(*a, **k):
        calls["processor"] += 1
        return real_call(*a, **k)

    def format_prompt(*a, **k):
        calls["template"] += 1
        return real_format(*a, **k)

    monkeypatch.setattr(family, "call_processor", call_processor)
    monkeypatch.setattr(family, "format_prompt", format_prompt)
    got = probekit.collect(model, images, "What shape?", points=["lm.*.resid", "logits"],
                           positions=("last", "image_mean"), batch_size=8, progress=False)
    assert calls == {"processor": 1, "template": 1}  # was 3 processor calls and 24 renderings
    for p in want.points:
        assert torch.equal(got[p], want[p]), p
    monkeypatch.setattr(probekit.Model, "input_cache", lambda self: contextlib.nullcontext())
    stock = probekit.collect(model, images, "What shape?", points=["lm.*.resid", "logits"],
                             positions=("last", "image_mean"), batch_size=8, progress=False)
    for p in want.points:  # the stock processor on every batch: the same activations, bit for bit
        assert torch.equal(stock[p], want[p]), p
    assert stock.meta["image_hashes"] == want.meta["image_hashes"]


def test_a_fast_path_that_disagrees_with_the_stock_processor_is_turned_off(tiny_model, monkeypatch):
    model = tiny_model("llava")
    images = probekit.tiny.fixture_images(6, 32, seed=2)
    want = model.prepare(images, ["Hi"] * 6)
    real = FastPixels.__call__
    monkeypatch.setattr(FastPixels, "__call__", lambda self, ims: real(self, ims) + 1e-7)
    with model.input_cache():
        got = model.prepare(images, ["Hi"] * 6)
        assert model._input_cache._pixels is None  # off for the rest of this collect
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_input_cache_leaves_families_with_their_own_inputs_alone(tiny_model):
    class Own(type(tiny_model("llava")._impl)):
        def build_inputs(self, model, images, prompts, chat):
            return {"own": True}

    assert InputCache().build(tiny_model("llava"), Own(), [], [], None) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masked_mean_with_a_reused_buffer_gives_the_same_bits(dtype):
    gen = torch.Generator().manual_seed(0)
    scratch: dict = {}
    for b, s, d in [(3, 11, 2053), (2, 7, 5), (8, 76, 64), (1, 300, 33)]:  # the buffer grows, then is viewed smaller
        h = (torch.randn(b, s, d, generator=gen) * 30).to(dtype)
        am = torch.ones(b, s, dtype=torch.bool)
        am[0, : s // 3] = False  # left padding in one row
        image = torch.rand(b, s, generator=gen) < 0.6
        image[:, -1] = True
        fresh = select(h, "image_mean", PositionContext(am, image & am, torch.zeros(b, s, dtype=torch.long)))
        ctx = PositionContext(am, image & am, torch.zeros(b, s, dtype=torch.long), scratch=scratch)
        assert torch.equal(select(h, "image_mean", ctx), fresh)
        assert torch.equal(select(h, "image_mean", ctx), fresh)  # second point of the batch, the same weights
    assert scratch["masked_mean"].numel() == 3 * 11 * 2053


def test_a_named_position_is_worked_out_once_per_batch(tiny_model):
    model = tiny_model("llava")
    calls = {"n": 0}

    def first_image(ctx):
        calls["n"] += 1
        return ctx.image_mask & (ctx.image_mask.cumsum(1) == 1)

    hp.register_position("first_image_once", first_image, "one")
    try:
        s = probekit.collect(model, probekit.tiny.fixture_images(12, 32, seed=4), "Hi", points="lm.*.resid",
                             positions=("first_image_once", "last"), batch_size=4, progress=False)
    finally:
        del hp.NAMED_POSITIONS["first_image_once"]
    assert calls["n"] == 3  # one per batch, not one per point (and one more for the checks)
    assert s.positions("lm.0.resid") == ["first_image_once", "last"]
