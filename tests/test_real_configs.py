"""The headline checkpoints of the Apple study, built on the meta device from their published config.json values.

Nothing can be downloaded here, so the configs are written out by hand from the checkpoints' config.json
files; the parameter counts (published with the checkpoints) confirm them. Building on ``torch.device("meta")``
allocates no weights, so a 7-11B model maps in well under a second. Each must map every block, with the
right width, to probekit's points.
"""

import types

import pytest
import torch
import transformers as T
from torch import nn

import probekit

CLIP_L336 = {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
             "num_attention_heads": 16, "image_size": 336, "patch_size": 14, "projection_dim": 768}
CONFIGS = {
 "llava-1.5-7b": T.LlavaConfig(vision_config=CLIP_L336, text_config={"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
      "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064, "max_position_embeddings": 4096,
      "rms_norm_eps": 1e-5, "tie_word_embeddings": False}, image_token_index=32000, vision_feature_layer=-2, vision_feature_select_strategy="default"),
 "llava-v1.6-mistral-7b": T.LlavaNextConfig(vision_config=CLIP_L336, text_config={"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
      "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32064, "max_position_embeddings": 32768,
      "sliding_window": None, "tie_word_embeddings": False}, image_token_index=32000,
      image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]),
 "Qwen2.5-VL-7B": T.Qwen2_5_VLConfig(text_config={"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
      "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 128000, "tie_word_embeddings": False,
      "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}},
      vision_config={"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 3584, "patch_size": 14,
      "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31]},
      image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653),
 "Qwen3-VL-8B": T.Qwen3VLConfig(text_config={"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32,
      "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "max_position_embeddings": 262144, "tie_word_embeddings": False,
      "rope_parameters": {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20], "mrope_interleaved": True}},
      vision_config={"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16, "out_hidden_size": 4096, "patch_size": 16,
      "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 2304, "deepstack_visual_indexes": [8, 16, 24]},
      image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653, tie_word_embeddings=False),
 "Llama-3.2-11B-Vision": T.MllamaConfig(text_config={"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 40, "num_attention_heads": 32,
      "num_key_value_heads": 8, "vocab_size": 128256, "cross_attention_layers": [3, 8, 13, 18, 23, 28, 33, 38], "max_position_embeddings": 131072,
      "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192}, "tie_word_embeddings": False},
      vision_config={"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_global_layers": 8, "attention_heads": 16,
      "image_size": 560, "patch_size": 14, "max_num_tiles": 4, "intermediate_layers_indices": [3, 7, 15, 23, 30], "vision_output_dim": 7680,
      "supported_aspect_ratios": [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]]}, image_token_index=128256),
}

# name: (parameters in billions as published, family, LM blocks, LM width, vision blocks, vision width)
EXPECTED = {
    "llava-1.5-7b": (7.06, "llava", 32, 4096, 24, 1024),
    "llava-v1.6-mistral-7b": (7.57, "llava", 32, 4096, 24, 1024),
    "Qwen2.5-VL-7B": (8.29, "qwen2_vl", 28, 3584, 32, 1280),
    "Qwen3-VL-8B": (8.77, "qwen2_vl", 36, 4096, 27, 1152),
    "Llama-3.2-11B-Vision": (10.67, "mllama", 40, 4096, 40, 1280),  # 32 local + 8 global vision blocks
}
# the map needs no processor: a stand-in is enough to wrap
NO_PROCESSOR = types.SimpleNamespace(tokenizer=None)


def _out_width(module: nn.Module) -> int:
    """Width a block writes: the out_features of its last linear layer (the MLP's down projection)."""
    return [m for m in module.modules() if isinstance(m, nn.Linear)][-1].out_features


@pytest.fixture(scope="module", params=list(CONFIGS))
def meta_model(request):
    cfg = CONFIGS[request.param]
    with torch.device("meta"):
        hf = T.AutoModelForImageTextToText._model_mapping[type(cfg)](cfg)
    return request.param, probekit.wrap(hf, NO_PROCESSOR)


def test_config_is_the_published_one(meta_model):
    name, model = meta_model
    assert next(model.hf.parameters()).device.type == "meta"
    billions = sum(p.numel() for p in model.hf.parameters()) / 1e9
    assert billions == pytest.approx(EXPECTED[name][0], abs=0.006)


def test_every_block_mapped_with_its_width(meta_model):
    name, model = meta_model
    _, family, n_lm, d_lm, n_vis, d_vis = EXPECTED[name]
    assert model.family == family and model.layout.missing == []
    assert model.n_layers == n_lm and model.d_model == d_lm
    assert model.points("lm.*.resid") == [f"lm.{i}.resid" for i in range(n_lm)]
    assert len({id(model.module(f"lm.{i}.resid")) for i in range(n_lm)}) == n_lm  # n distinct blocks
    for i in range(n_lm):
        # every block has self-attention, or (Mllama's cross-attention layers) cross-attention instead
        attn = [p for p in (f"lm.{i}.attn", f"lm.{i}.xattn") if p in model.points()]
        assert len(attn) == 1, i
        for p in (f"lm.{i}.resid", attn[0], f"lm.{i}.mlp"):
            assert _out_width(model.module(p)) == d_lm, p
    vision = model.points("vision.*.resid")
    assert vision == [f"vision.{i}.resid" for i in range(n_vis)]
    assert all(_out_width(model.module(p)) == d_vis for p in vision)
    assert _out_width(model.module("projector")) == d_lm  # the projector writes the LM's width
    assert model.module("lm.norm").weight.shape == (d_lm,)
    assert model.module("logits").weight.shape == (model.hf.config.get_text_config().vocab_size, d_lm)


def test_mllama_cross_attention_layers(meta_model):
    name, model = meta_model
    xattn = [p for p in model.points() if p.endswith(".xattn")]
    if name == "Llama-3.2-11B-Vision":
        assert xattn == [f"lm.{i}.xattn" for i in (3, 8, 13, 18, 23, 28, 33, 38)]
        assert all(_out_width(model.module(p)) == 4096 for p in xattn)
    else:
        assert xattn == []


# ---------------------------------------------------------------- everything that needs no weight values

def test_fingerprint_of_a_meta_model(meta_model):
    """The fingerprint hashes names, shapes and config (no values to read on the meta device), never indexes past a tensor."""
    name, model = meta_model
    fp = model.fingerprint()
    assert fp == model.fingerprint() and len(fp) == 16
    assert fp not in _FINGERPRINTS.values(), name  # each headline model gets its own
    _FINGERPRINTS[name] = fp


_FINGERPRINTS: dict[str, str] = {}


def test_point_widths_are_known_without_a_forward(meta_model):
    name, model = meta_model
    _, _, n_lm, d_lm, n_vis, d_vis = EXPECTED[name]
    vocab = model.hf.config.get_text_config().vocab_size
    for p in model.points():
        w = model.point_width(p)
        if p.startswith(("lm.", "projector")):
            assert w == d_lm, p
        elif p == "logits":
            assert w == vocab
        elif p.startswith("vision."):
            assert w == d_vis, p


def test_image_positions_on_the_token_sequence(meta_model):
    """Where the image is in the language model's tokens: the config's image token id marks it."""
    from probekit.hooks.plan import synthetic_inputs
    from probekit.hooks.positions import PositionContext
    from probekit.hooks.slots import slot_labels

    _, model = meta_model
    inputs = synthetic_inputs(model, text_tokens=10, image_tokens=7)
    ((ids, image),) = model.sequences(inputs).values()
    assert image.shape == (1, 17) and image[0, 1:8].all() and int(image.sum()) == 7
    ctx = PositionContext.from_inputs(ids, image)
    assert slot_labels(["last", "image_mean", "text_mean"], ctx) == ["last", "image_mean", "text_mean"]
    assert slot_labels(["image"], ctx) == [f"image[{j}]" for j in range(7)]


def test_store_layout_and_memory_of_a_real_collect(meta_model):
    """What a collect of 100,000 images at two positions of every block stores, in bf16, before loading weights."""
    name, model = meta_model
    _, _, n_lm, d_lm, _, d_vis = EXPECTED[name]
    plan = probekit.store_layout(model, 100_000, ["lm.*.resid", "vision.0.resid", "logits"], ("last", "image_mean"),
                                 store_dtype=torch.bfloat16, logits_topk=10)
    shapes = plan.table.set_index("point")["shape"].to_dict()
    assert shapes[f"lm.{n_lm - 1}.resid"] == [2, d_lm] and shapes["vision.0.resid"] == [d_vis]
    assert shapes["logits.topk"] == shapes["logits.topk_ids"] == [2, 10]
    per_sample = n_lm * 2 * d_lm * 2 + d_vis * 2 + 2 * 10 * (4 + 8)
    assert plan.bytes_per_sample == per_sample and plan.store_bytes == 100_000 * per_sample
    assert plan.collect_bytes == 1024 * per_sample  # one shard of every point, whatever n
    if name == "llava-1.5-7b":  # 32 blocks x 2 positions x 4,096 x bf16: 52 GB for the residual stream alone
        assert plan.table[plan.table.point.str.startswith("lm.")]["bytes"].sum() == 52_428_800_000
