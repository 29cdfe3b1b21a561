"""Tiny in-memory builds of every VLM architecture in the coverage matrix.

:func:`probekit.tiny.build` writes checkpoints of the families in :data:`probekit.tiny.builders._FAMILIES`
for tests and demos; this module builds one random-weight model and its processor for each *architecture* the coverage
matrix checks (``tests/test_coverage_matrix.py``, the table in ``docs/real-models.md``), as
small as each config allows (a few hundred thousand parameters, 32x32 images) so that the
whole matrix runs in well under a minute. The checkpoint families are architectures here too (by their
``config.model_type``, built by the same builder at the zoo's sizes), so :data:`ARCHITECTURES` includes them
without a second list.

Example:
    >>> from probekit.tiny import zoo
    >>> hf, processor = zoo.build("gemma3")
    >>> type(hf).__name__
    'Gemma3ForConditionalGeneration'
"""

from __future__ import annotations

from typing import Any, Callable

from probekit.errors import InputError
from probekit.models.coverage import SINCE, newer_than_installed
from probekit.models.processors import image_only

from .builders import _FAMILIES, _mrope_section
from .parts import _IMG, _S, _tok, _vision, _zoo_text
from .text import _LLAVA_TEMPLATE, _QWEN2_VL_TEMPLATE
from .zoo_variants import VARIANTS

__all__ = ["ARCHITECTURES", "build"]

def _family(name: str) -> Callable[[], tuple[Any, Any]]:
    family = _FAMILIES[name]

    def build() -> tuple[Any, Any]:
        b = family.build({**_S, **family.sizes, **family.zoo_sizes}, "right")
        if name == "blip2":
            _open_blip_vision(b.model)
        return b.model, b.processor
    return build


def _open_blip_vision(model: Any) -> None:
    import torch

    # Blip2VisionConfig/InstructBlipVisionConfig initialise the patch, class and position
    # embeddings with std 1e-10, which leaves every image's features ~1e-9: images would be
    # indistinguishable. Trained checkpoints have real embeddings; draw them at the text std.
    with torch.no_grad():
        for p in model.vision_model.embeddings.parameters():
            p.normal_(0.0, 0.02)


def _open_gemma3_projector(model: Any) -> None:
    import torch

    # Gemma3MultiModalProjector's input projection is zero-initialised (the image would enter as zeros).
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.2)


def _llava_next() -> tuple[Any, Any]:
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessorPil, LlavaNextProcessor

    tok = _tok(["<image>"])
    pin = [[_IMG, _IMG], [_IMG, 2 * _IMG], [2 * _IMG, _IMG]]
    cfg = LlavaNextConfig(vision_config=_vision(_S, model_type="clip_vision_model"), text_config=_zoo_text(tok, model_type="llama"),
                          image_token_index=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=pin,
                          pad_token_id=tok.pad_token_id)
    ip = LlavaNextImageProcessorPil(size={"shortest_edge": _IMG}, crop_size={"height": _IMG, "width": _IMG}, image_grid_pinpoints=pin)
    proc = LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=_S["patch_size"], vision_feature_select_strategy="default",
                              chat_template=_LLAVA_TEMPLATE, image_token="<image>", num_additional_image_tokens=1)
    return LlavaNextForConditionalGeneration(cfg), proc


def _llava_onevision() -> tuple[Any, Any]:
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, LlavaOnevisionImageProcessorPil,
                              LlavaOnevisionProcessor)

    tok = _tok(["<image>", "<video>"])
    pin = [[_IMG, _IMG], [_IMG, 2 * _IMG]]
    cfg = LlavaOnevisionConfig(vision_config=_vision(_S, model_type="siglip_vision_model"), text_config=_zoo_text(tok, model_type="qwen2"),
                               image_token_index=tok.convert_tokens_to_ids("<image>"),
                               video_token_index=tok.convert_tokens_to_ids("<video>"), image_grid_pinpoints=pin,
                               vision_feature_layer=-1, vision_feature_select_strategy="full")
    ip = LlavaOnevisionImageProcessorPil(size={"height": _IMG, "width": _IMG}, image_grid_pinpoints=pin)
    grid = _IMG // _S["patch_size"]
    proc = image_only(LlavaOnevisionProcessor)(image_processor=ip, tokenizer=tok, num_image_tokens=grid * grid,
                                               vision_feature_select_strategy="full", chat_template=_LLAVA_TEMPLATE)
    return LlavaOnevisionForConditionalGeneration(cfg), proc


_QWEN_SPECIALS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def _qwen(version: str) -> Callable[[], tuple[Any, Any]]:
    def build() -> tuple[Any, Any]:
        import transformers as T

        tok = _tok(_QWEN_SPECIALS, bos=None, eos="<|im_end|>", pad="<|endoftext|>", add_bos=False)
        ids = {t: tok.convert_tokens_to_ids(t) for t in _QWEN_SPECIALS}
        rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": _mrope_section(16)}
        text = _zoo_text(tok, rope_parameters=rope)
        if version in ("qwen3_vl", "qwen3_vl_moe"):
            rope["mrope_interleaved"] = True
            vision = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32,
                      "patch_size": 8, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 16,
                      "deepstack_visual_indexes": [0]}
            moe = version == "qwen3_vl_moe"
            cls, cfg_cls = ((T.Qwen3VLMoeForConditionalGeneration, T.Qwen3VLMoeConfig) if moe else
                            (T.Qwen3VLForConditionalGeneration, T.Qwen3VLConfig))
            proc_cls, ip_cls = T.Qwen3VLProcessor, T.Qwen2VLImageProcessorPil
            if moe:
                text.update(num_experts=2, num_experts_per_tok=1, moe_intermediate_size=32, decoder_sparse_step=1)
        else:
            vision = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32,
                      "patch_size": 8, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 32,
                      "fullatt_block_indexes": [0]}
            cls, cfg_cls, proc_cls, ip_cls = (T.Qwen2_5_VLForConditionalGeneration, T.Qwen2_5_VLConfig,
                                              T.Qwen2_5_VLProcessor, T.Qwen2VLImageProcessorPil)
        cfg = cfg_cls(vision_config=vision, text_config=text, image_token_id=ids["<|image_pad|>"],
                      video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                      vision_end_token_id=ids["<|vision_end|>"])
        px = _IMG * _IMG
        ip = ip_cls(size={"shortest_edge": px, "longest_edge": px}, patch_size=8, temporal_patch_size=2, merge_size=2)
        proc = image_only(proc_cls)(image_processor=ip, tokenizer=tok, chat_template=_QWEN2_VL_TEMPLATE)
        return cls(cfg), proc
    return build


def _idefics2() -> tuple[Any, Any]:
    from transformers import Idefics2Config, Idefics2ForConditionalGeneration, Idefics2Processor
    # from its module: transformers 5.9's top-level name wrongly asks for torchvision (the class does not use it)
    from transformers.models.idefics2.image_processing_pil_idefics2 import Idefics2ImageProcessorPil

    tok = _tok(["<fake_token_around_image>", "<image>", "<end_of_utterance>"])
    cfg = Idefics2Config(vision_config=_vision(_S), text_config=_zoo_text(tok, model_type="mistral"),
                         perceiver_config={"hidden_size": 32, "resampler_n_latents": 4, "resampler_depth": 1,
                                           "resampler_n_heads": 2, "resampler_head_dim": 16, "num_key_value_heads": 2},
                         image_token_id=tok.convert_tokens_to_ids("<image>"))
    ip = Idefics2ImageProcessorPil(do_image_splitting=False, size={"shortest_edge": _IMG, "longest_edge": _IMG})
    return Idefics2ForConditionalGeneration(cfg), Idefics2Processor(image_processor=ip, tokenizer=tok, image_seq_len=4)


def _smolvlm() -> tuple[Any, Any]:
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMProcessor
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil  # as Idefics2's

    specials = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", "<video>"]
    tok = _tok(specials + [f"<row_{i}_col_{j}>" for i in range(1, 4) for j in range(1, 4)])
    cfg = SmolVLMConfig(vision_config=_vision(_S), text_config=_zoo_text(tok, model_type="llama"), scale_factor=2,
                        image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id)
    ip = SmolVLMImageProcessorPil(do_image_splitting=False, size={"longest_edge": _IMG}, max_image_size={"longest_edge": _IMG})
    return SmolVLMForConditionalGeneration(cfg), image_only(SmolVLMProcessor)(image_processor=ip, tokenizer=tok, image_seq_len=4)


def _gemma3() -> tuple[Any, Any]:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor

    tok = _tok(bos="<bos>", eos="<eos>", named={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                                 "image_token": "<image_soft_token>"})
    cfg = Gemma3Config(vision_config=_vision(_S, model_type="siglip_vision_model", vision_use_head=False),
                       text_config=_zoo_text(tok, model_type="gemma3_text", sliding_window=64),
                       mm_tokens_per_image=4, boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
                       eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
                       image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"))
    ip = Gemma3ImageProcessorPil(size={"height": _IMG, "width": _IMG})
    model = Gemma3ForConditionalGeneration(cfg)
    _open_gemma3_projector(model)
    return model, Gemma3Processor(image_processor=ip, tokenizer=tok, image_seq_length=4)


def _internvl() -> tuple[Any, Any]:
    from transformers import GotOcr2ImageProcessorPil, InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor

    tok = _tok(["<|im_start|>", "<|im_end|>"], bos=None, eos="<|im_end|>", pad="<|endoftext|>", add_bos=False,
               named={"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                      "video_token": "<video>"})
    vis = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
           "image_size": [_IMG, _IMG], "patch_size": [8, 8]}
    cfg = InternVLConfig(vision_config=vis, text_config=_zoo_text(tok, model_type="qwen2"), downsample_ratio=0.5,
                         image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=4)
    ip = GotOcr2ImageProcessorPil(size={"height": _IMG, "width": _IMG}, crop_to_patches=False)
    return InternVLForConditionalGeneration(cfg), image_only(InternVLProcessor)(image_processor=ip, tokenizer=tok, image_seq_length=4)


def _aya_vision() -> tuple[Any, Any]:
    from transformers import AyaVisionConfig, AyaVisionForConditionalGeneration, AyaVisionProcessor, GotOcr2ImageProcessorPil

    marks = ["<image>", "<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>"]
    tok = _tok(marks, bos="<BOS_TOKEN>", eos="<EOS_TOKEN>", pad="<PAD>")
    cfg = AyaVisionConfig(vision_config=_vision(_S, model_type="siglip_vision_model", vision_use_head=False),
                          text_config=_zoo_text(tok, model_type="cohere2", sliding_window=64, layer_types=["full_attention"] * 2),
                          downsample_factor=2, vision_feature_layer=-1, vision_feature_select_strategy="full",
                          image_token_index=tok.convert_tokens_to_ids("<|IMG_PATCH|>"))
    ip = GotOcr2ImageProcessorPil(size={"height": _IMG, "width": _IMG}, crop_to_patches=False)
    proc = AyaVisionProcessor(image_processor=ip, tokenizer=tok, patch_size=8, img_size=_IMG, downsample_factor=2)
    return AyaVisionForConditionalGeneration(cfg), proc


def _glm4v(variant: str = "glm4v") -> tuple[Any, Any]:
    import transformers as T
    from transformers import Glm4vImageProcessorPil, Glm4vProcessor

    Glm4vConfig, Glm4vForConditionalGeneration = {
        "glm4v": (T.Glm4vConfig, T.Glm4vForConditionalGeneration),
        "glm4v_moe": (T.Glm4vMoeConfig, T.Glm4vMoeForConditionalGeneration),
        "glm46v": (T.Glm46VConfig, T.Glm46VForConditionalGeneration),
    }[variant]

    marks = ["<|image|>", "<|video|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>"]
    tok = _tok(marks, bos=None, eos="<|endoftext|>", pad="<|pad|>", add_bos=False)
    ids = {t: tok.convert_tokens_to_ids(t) for t in marks}
    vis = {"depth": 1, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "out_hidden_size": 32, "image_size": _IMG,
           "patch_size": 8, "spatial_merge_size": 2, "temporal_patch_size": 2}
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], "partial_rotary_factor": 1.0}
    text = _zoo_text(tok, rope_parameters=rope)
    if variant == "glm4v_moe":
        text.update(n_routed_experts=2, n_shared_experts=1, num_experts_per_tok=1, moe_intermediate_size=32,
                    first_k_dense_replace=1, n_group=1, topk_group=1)
    if variant == "glm46v":
        text["model_type"] = "glm4v_text"  # a generic text config: GLM-4.6V's default sub-config is set by name
    cfg = Glm4vConfig(vision_config=vis, text_config=text, image_token_id=ids["<|image|>"],
                      video_token_id=ids["<|video|>"], image_start_token_id=ids["<|begin_of_image|>"],
                      image_end_token_id=ids["<|end_of_image|>"], video_start_token_id=ids["<|begin_of_video|>"],
                      video_end_token_id=ids["<|end_of_video|>"])
    px = _IMG * _IMG
    ip_cls = T.Glm46VImageProcessorPil if variant == "glm46v" else Glm4vImageProcessorPil
    ip = ip_cls(size={"shortest_edge": px, "longest_edge": px}, patch_size=8, temporal_patch_size=2, merge_size=2)
    proc_cls = T.Glm46VProcessor if variant == "glm46v" else Glm4vProcessor
    return Glm4vForConditionalGeneration(cfg), image_only(proc_cls)(image_processor=ip, tokenizer=tok)


def _instructblip() -> tuple[Any, Any]:
    from transformers import (BlipImageProcessorPil, InstructBlipConfig, InstructBlipForConditionalGeneration,
                              InstructBlipProcessor)

    tok = _tok(["<image>"], bos="</s>", eos="</s>")
    cfg = InstructBlipConfig(
        vision_config=_vision(_S),
        qformer_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                        "cross_attention_frequency": 1, "encoder_hidden_size": 32, "vocab_size": len(tok),
                        "max_position_embeddings": 128, "pad_token_id": tok.pad_token_id},
        text_config={"model_type": "opt", "vocab_size": len(tok), "hidden_size": 32, "word_embed_proj_dim": 32, "ffn_dim": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 512,
                     "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id},
        num_query_tokens=4, image_token_index=tok.convert_tokens_to_ids("<image>"))
    ip = BlipImageProcessorPil(size={"height": _IMG, "width": _IMG})
    # The Q-Former's instruction tokenizer is a BERT one in the real checkpoints; any tokenizer within its vocabulary works.
    proc = InstructBlipProcessor(image_processor=ip, tokenizer=tok, qformer_tokenizer=_tok(["<image>"], bos="</s>", eos="</s>"),
                                 num_query_tokens=4)
    model = InstructBlipForConditionalGeneration(cfg)
    _open_blip_vision(model)
    return model, proc


def _mistral3() -> tuple[Any, Any]:
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, PixtralImageProcessorPil

    from probekit.models.processors import pixtral_processor

    tok = _tok(["[IMG]", "[IMG_BREAK]", "[IMG_END]", "[INST]", "[/INST]"])
    vis = {"model_type": "pixtral", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
           "num_attention_heads": 2, "head_dim": 16, "image_size": _IMG, "patch_size": 8}
    cfg = Mistral3Config(vision_config=vis, text_config=_zoo_text(tok, model_type="mistral", sliding_window=None),
                         image_token_index=tok.convert_tokens_to_ids("[IMG]"), spatial_merge_size=2, vision_feature_layer=-1)
    ip = PixtralImageProcessorPil(size={"longest_edge": _IMG}, patch_size=16)
    return Mistral3ForConditionalGeneration(cfg), pixtral_processor(ip, tok, patch_size=8, spatial_merge_size=2)


def _llama4() -> tuple[Any, Any]:
    from transformers import Llama4Config, Llama4ForConditionalGeneration, Llama4Processor

    from probekit.models.processors import llama4_single_tile_image_processor

    marks = ["<|image|>", "<|image_start|>", "<|image_end|>", "<|patch|>", "<|tile_x_separator|>", "<|tile_y_separator|>",
             "<|header_start|>", "<|header_end|>", "<|eot|>"]
    tok = _tok(marks, bos="<|begin_of_text|>", eos="<|eot|>", pad="<|finetune_right_pad|>")
    # pixel shuffle by 0.5 turns 32 channels into 128: the adapter MLP's input is intermediate_size wide
    vis = {"hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": _IMG,
           "patch_size": 8, "vision_output_dim": 32, "projector_input_dim": 32, "projector_output_dim": 32,
           "pixel_shuffle_ratio": 0.5}
    text = _zoo_text(tok, intermediate_size_mlp=64, num_local_experts=2, num_experts_per_tok=1, interleave_moe_layer_step=2,
                 attention_chunk_size=64, no_rope_layer_interval=2)
    cfg = Llama4Config(vision_config=vis, text_config=text, image_token_index=tok.convert_tokens_to_ids("<|patch|>"),
                       boi_token_index=tok.convert_tokens_to_ids("<|image_start|>"),
                       eoi_token_index=tok.convert_tokens_to_ids("<|image_end|>"))
    proc = Llama4Processor(image_processor=llama4_single_tile_image_processor(_IMG), tokenizer=tok, patch_size=8,
                           pixel_shuffle_ratio=0.5)
    return Llama4ForConditionalGeneration(cfg), proc


def _florence2() -> tuple[Any, Any]:
    from transformers import CLIPImageProcessorPil, Florence2Config, Florence2ForConditionalGeneration, Florence2Processor

    tok = _tok(named={"image_token": "<image>"})
    # two DaViT stages of different widths (strides 4 and 2: 32x32 pixels -> 4x4 patches), windows of 2x2
    vis = {"depths": [1, 1], "patch_size": [7, 3], "patch_stride": [4, 2], "patch_padding": [3, 1],
           "patch_prenorm": [False, True], "embed_dim": [16, 32], "num_heads": [2, 2], "num_groups": [2, 2],
           "window_size": 2, "drop_path_rate": 0.0, "projection_dim": 32, "max_temporal_embeddings": 4,
           "max_position_embeddings": 8}
    # encoder and decoder of different depths, so that a mix-up of the two shows
    text = {"model_type": "bart", "vocab_size": len(tok), "d_model": 32, "encoder_layers": 2, "decoder_layers": 3,
            "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
            "max_position_embeddings": 128, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id, "decoder_start_token_id": tok.eos_token_id,
            "forced_bos_token_id": tok.bos_token_id, "forced_eos_token_id": tok.eos_token_id}
    cfg = Florence2Config(vision_config=vis, text_config=text, image_token_id=tok.image_token_id)
    n_image = (_IMG // 8) ** 2 + 1  # the last stage's patches and one pooled token
    ip = CLIPImageProcessorPil(size={"height": _IMG, "width": _IMG}, do_center_crop=False, image_seq_length=n_image)
    return Florence2ForConditionalGeneration(cfg), Florence2Processor(image_processor=ip, tokenizer=tok)


ARCHITECTURES: dict[str, Callable[[], tuple[Any, Any]]] = {
    **{family.model_type: _family(name) for name, family in _FAMILIES.items()},
    "llava_next": _llava_next,
    "llava_onevision": _llava_onevision,
    "qwen2_5_vl": _qwen("qwen2_5_vl"),
    "qwen3_vl": _qwen("qwen3_vl"),
    "idefics2": _idefics2,
    "smolvlm": _smolvlm,
    "gemma3": _gemma3,
    "internvl": _internvl,
    "aya_vision": _aya_vision,
    "glm4v": _glm4v,
    "instructblip": _instructblip,
    "mistral3": _mistral3,
    "llama4": _llama4,
    "qwen3_vl_moe": _qwen("qwen3_vl_moe"),
    "glm4v_moe": lambda: _glm4v("glm4v_moe"),
    "glm46v": lambda: _glm4v("glm46v"),
    "florence2": _florence2,
    **VARIANTS,
}
"""config.model_type -> builder of ``(hf_model, processor)`` for every architecture the matrix covers: the
checkpoint families first (from :data:`probekit.tiny.builders._FAMILIES`), then the in-memory-only ones."""


def build(model_type: str, seed: int = 0) -> tuple[Any, Any]:
    """A random-weight ``(hf_model, processor)`` of ``model_type`` (eval mode, seeded, caller's RNG kept)."""
    if model_type not in ARCHITECTURES:
        raise InputError(f"no tiny build of {model_type!r}", fix=f"use one of {', '.join(ARCHITECTURES)}")
    if newer_than_installed(model_type):
        raise InputError(f"{model_type!r} needs transformers>={SINCE[model_type]}",
                         fix=f"pip install 'transformers>={SINCE[model_type]}'")
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf, proc = ARCHITECTURES[model_type]()
    return hf.eval(), proc

