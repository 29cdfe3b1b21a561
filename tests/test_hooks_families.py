"""Every family: recorded points equal HF's own hidden states exactly, image positions are the image tokens."""

import pytest
import torch

import probekit
from probekit.hooks.positions import PositionContext
from probekit import tiny

FAMILIES = list(tiny.FAMILIES)
PROMPTS = ["What shape is it?", "What colour is the big square on the left of the picture?", "Count"]


def _hidden_states(model, inputs):
    with torch.no_grad():
        out = model.hf(**inputs, output_hidden_states=True)
    # BLIP-2 keeps the language model's outputs one level down
    return out.hidden_states if getattr(out, "hidden_states", None) is not None else out.language_model_outputs.hidden_states


def _expected_image_tokens(model, inputs) -> int:
    cfg = model.hf.config
    if model.family == "llava":
        v = cfg.vision_config
        return (v.image_size // v.patch_size) ** 2
    if model.family == "paligemma":
        v = cfg.vision_config
        return (v.image_size // v.patch_size) ** 2
    if model.family == "blip2":
        return cfg.num_query_tokens
    if model.family == "qwen2_vl":
        t, h, w = inputs["image_grid_thw"][0].tolist()
        return t * h * w // cfg.vision_config.spatial_merge_size ** 2
    if model.family == "idefics3":
        return model.processor.image_seq_len
    if model.family == "mllama":
        return 1
    raise AssertionError(model.family)


@pytest.mark.parametrize("family", FAMILIES)
def test_resid_equals_hf_hidden_states(tiny_model, family):
    model = tiny_model(family)
    images = tiny.fixture_images(3, 32, seed=1)
    inputs = model.prepare(images, PROMPTS)
    hs = _hidden_states(model, inputs)
    assert len(hs) == model.n_layers + 1
    ctx = PositionContext.from_inputs(inputs, model.image_mask(inputs))
    last = (ctx.attention_mask.long() * torch.arange(1, ctx.attention_mask.shape[1] + 1)).argmax(1)
    rows = torch.arange(3)

    store = probekit.collect(model, images, PROMPTS, points=["lm.embed", "lm.*.resid", "lm.norm"],
                             positions=("last", "image"), batch_size=3, progress=False)
    n_img = int(ctx.image_mask[0].sum())
    image_idx = ctx.image_mask.nonzero()[:, 1].view(3, n_img)
    for i in range(model.n_layers - 1):
        got = store[f"lm.{i}.resid"]
        assert got.dtype == hs[i + 1].dtype
        assert torch.equal(got[:, 0], hs[i + 1][rows, last]), f"lm.{i}.resid at last"
        assert torch.equal(got[:, 1:], hs[i + 1][rows[:, None], image_idx]), f"lm.{i}.resid at image"
    # lm.embed is HF's hidden_states[0]; transformers ties hidden_states[-1] to the final-norm output
    assert torch.equal(store["lm.embed"][:, 0], hs[0][rows, last])
    assert torch.equal(store["lm.norm"][:, 0], hs[-1][rows, last])
    # the last block's raw residual, normed, is that same final state
    normed = model.final_norm(store[f"lm.{model.n_layers - 1}.resid"][:, 0])
    torch.testing.assert_close(normed, hs[-1][rows, last])
    assert store.positions("lm.0.resid") == ["last"] + [f"image[{j}]" for j in range(n_img)]


@pytest.mark.parametrize("family", FAMILIES)
def test_image_positions_are_the_image_tokens(tiny_model, family):
    model = tiny_model(family)
    inputs = model.prepare(tiny.fixture_images(2, 32), PROMPTS[:2])
    mask = model.image_mask(inputs)
    expected = _expected_image_tokens(model, inputs)
    assert mask.sum(1).tolist() == [expected, expected]
    image_id = model.image_token_id
    assert image_id is not None
    assert torch.equal(mask, inputs["input_ids"] == image_id)
    # image tokens are one contiguous run in each row (no stray text token in between)
    for r in range(2):
        idx = mask[r].nonzero().flatten()
        assert int(idx[-1] - idx[0]) + 1 == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_cross_attention_points_exist_only_where_the_model_has_them(tiny_model, family):
    model = tiny_model(family)
    xattn = model.points("*xattn") if any(p.endswith("xattn") for p in model.points()) else []
    if family == "mllama":
        expected = [f"lm.{i}.xattn" for i in model.hf.config.text_config.cross_attention_layers]
        assert xattn == expected
        assert all(type(model.module(p)).__name__.endswith("CrossAttention") for p in xattn)
    elif family == "blip2":
        n = model.hf.config.qformer_config.num_hidden_layers
        assert xattn == [f"qformer.{i}.xattn" for i in range(n)]
    else:
        assert xattn == []
        with pytest.raises(probekit.errors.UnknownPointError):
            model.points("*.xattn")


@pytest.mark.parametrize("family", FAMILIES)
def test_every_point_records(tiny_model, family):
    model = tiny_model(family)
    store = probekit.collect(model, tiny.fixture_images(2, 32), PROMPTS[:2], points="*",
                             positions="last", progress=False)
    assert store.points == model.points()
    for p in store.points:
        x = store[p]
        assert x.shape[0] == 2 and x.dim() == 2 and torch.isfinite(x.float()).all(), p
    assert store["logits"].shape[1] == model.unembed.weight.shape[0]


@pytest.mark.parametrize("family", ["llava", "mllama", "blip2"])
def test_cross_attention_output_equals_module_output(tiny_model, family):
    model = tiny_model(family)
    point = model.points("*xattn")[0] if family != "llava" else "lm.0.attn"
    module = model.module(point)
    seen = []
    h = module.register_forward_hook(lambda m, a, o: seen.append((o[0] if isinstance(o, tuple) else o).detach()))
    try:
        inputs = model.prepare(tiny.fixture_images(2, 32), PROMPTS[:2])
        with torch.no_grad():
            model.hf(**inputs)
    finally:
        h.remove()
    store = probekit.collect(model, tiny.fixture_images(2, 32), PROMPTS[:2], points=point,
                             positions="image" if model.target(point).side == "vision" else "last", progress=False)
    ref = seen[0]
    if model.target(point).side == "vision":
        assert torch.equal(store[point], ref.reshape(2, -1, ref.shape[-1]))
    else:
        ctx = PositionContext.from_inputs(inputs, model.image_mask(inputs))
        last = (ctx.attention_mask.long() * torch.arange(1, ctx.attention_mask.shape[1] + 1)).argmax(1)
        assert torch.equal(store[point], ref[torch.arange(2), last])
