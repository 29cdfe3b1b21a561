"""More tiny builds for the coverage matrix: close relatives of :mod:`probekit.tiny.zoo`'s architectures.

Kept apart only so that each module stays short; :data:`probekit.tiny.zoo.ARCHITECTURES`
includes these.
"""

from __future__ import annotations

from typing import Any

from probekit.models.processors import image_only, pixtral_processor

from .parts import _IMG, _S, _tok, _vision, _zoo_text
from .text import _LLAVA_TEMPLATE, _OVIS2_5_TEMPLATE, _QWEN2_VL_TEMPLATE

__all__ = ["VARIANTS"]


def _clip_processor() -> Any:
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": _IMG}, crop_size={"height": _IMG, "width": _IMG})


def _vipllava() -> tuple[Any, Any]:
    from transformers import LlavaProcessor, VipLlavaConfig, VipLlavaForConditionalGeneration

    tok = _tok(["<image>"])
    # VipLLaVA concatenates several vision layers' features (real checkpoints: [-2, -5, -8, -11, 6])
    cfg = VipLlavaConfig(vision_config=_vision(_S, model_type="clip_vision_model", num_hidden_layers=2),
                         text_config=_zoo_text(tok, model_type="llama"), image_token_index=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=[-2, -1], image_seq_length=16,
                         vision_feature_layers=[-2, -1])  # the key's name up to transformers 5.2x (real configs carry it)
    proc = LlavaProcessor(image_processor=_clip_processor(), tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                          chat_template=_LLAVA_TEMPLATE, image_token="<image>", num_additional_image_tokens=1)
    return VipLlavaForConditionalGeneration(cfg), proc


def _llava_next_video() -> tuple[Any, Any]:
    from transformers import (LlavaNextImageProcessorPil, LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration,
                              LlavaNextVideoProcessor)

    tok = _tok(["<image>", "<video>"])
    pin = [[_IMG, _IMG], [_IMG, 2 * _IMG]]
    cfg = LlavaNextVideoConfig(vision_config=_vision(_S, model_type="clip_vision_model"), text_config=_zoo_text(tok, model_type="llama"),
                               image_token_index=tok.convert_tokens_to_ids("<image>"),
                               video_token_index=tok.convert_tokens_to_ids("<video>"), image_grid_pinpoints=pin)
    ip = LlavaNextImageProcessorPil(size={"shortest_edge": _IMG}, crop_size={"height": _IMG, "width": _IMG}, image_grid_pinpoints=pin)
    proc = image_only(LlavaNextVideoProcessor)(image_processor=ip, tokenizer=tok, patch_size=8,
                                               vision_feature_select_strategy="default", chat_template=_LLAVA_TEMPLATE,
                                               num_additional_image_tokens=1)
    return LlavaNextVideoForConditionalGeneration(cfg), proc


def _video_llava() -> tuple[Any, Any]:
    from transformers import VideoLlavaConfig, VideoLlavaForConditionalGeneration, VideoLlavaImageProcessor, VideoLlavaProcessor

    tok = _tok(["<image>", "<video>"])
    cfg = VideoLlavaConfig(vision_config=_vision(_S, model_type="clip_vision_model"), text_config=_zoo_text(tok, model_type="llama"),
                           image_token_index=tok.convert_tokens_to_ids("<image>"),
                           video_token_index=tok.convert_tokens_to_ids("<video>"), image_seq_length=17)
    ip = VideoLlavaImageProcessor(size={"shortest_edge": _IMG}, crop_size={"height": _IMG, "width": _IMG})
    proc = image_only(VideoLlavaProcessor)(image_processor=ip, tokenizer=tok, patch_size=8,
                                           vision_feature_select_strategy="default", chat_template=_LLAVA_TEMPLATE,
                                           num_additional_image_tokens=1)
    return VideoLlavaForConditionalGeneration(cfg), proc


def _lighton_ocr() -> tuple[Any, Any]:
    from transformers import LightOnOcrConfig, LightOnOcrForConditionalGeneration, PixtralImageProcessorPil

    tok = _tok(["[IMG]", "[IMG_BREAK]", "[IMG_END]"])
    vis = {"model_type": "pixtral", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
           "num_attention_heads": 2, "head_dim": 16, "image_size": _IMG, "patch_size": 8}
    cfg = LightOnOcrConfig(vision_config=vis, text_config=_zoo_text(tok, model_type="qwen3"), spatial_merge_size=2,
                           image_token_id=tok.convert_tokens_to_ids("[IMG]"))
    ip = PixtralImageProcessorPil(size={"longest_edge": _IMG}, patch_size=16)
    return LightOnOcrForConditionalGeneration(cfg), pixtral_processor(ip, tok, patch_size=8, spatial_merge_size=2)


def _llava_onevision1_5() -> tuple[Any, Any]:
    # transformers >= 5.25 (coverage.SINCE): Qwen2.5-VL's layout with a RICE vision tower that puts a class
    # token before each image's patches, a Qwen3 language model and 1-D text positions
    from transformers import Exaone4_5_Processor, LlavaOnevision15Config, LlavaOnevision15ForConditionalGeneration
    from transformers import Qwen2VLImageProcessorPil

    marks = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok = _tok(marks, bos=None, eos="<|im_end|>", pad="<|endoftext|>", add_bos=False)
    ids = {t: tok.convert_tokens_to_ids(t) for t in marks}
    vis = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32, "patch_size": 8,
           "spatial_merge_size": 2}
    cfg = LlavaOnevision15Config(vision_config=vis, text_config=_zoo_text(tok, model_type="qwen3"),
                                 image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                                 vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    px = _IMG * _IMG  # its patch embedding is 2-D: one frame per patch (temporal_patch_size 1)
    ip = Qwen2VLImageProcessorPil(size={"shortest_edge": px, "longest_edge": px}, patch_size=8, temporal_patch_size=1,
                                  merge_size=2)
    proc = image_only(Exaone4_5_Processor)(image_processor=ip, tokenizer=tok, chat_template=_QWEN2_VL_TEMPLATE)
    return LlavaOnevision15ForConditionalGeneration(cfg), proc


def _ovis2_5() -> tuple[Any, Any]:
    # transformers >= 5.25 (coverage.SINCE): a SigLIP-style tower on flattened patches, a "visual tokenizer"
    # (softmax over a visual vocabulary, then an embedding table) and a Qwen3 language model
    from transformers import Ovis2_5Config, Ovis2_5ForConditionalGeneration, Ovis2_5ImageProcessorPil, Ovis2_5Processor

    named = {"image_token": "<image>", "video_token": "<video>", "image_start_token": "<ovis_image_start>",
             "image_end_token": "<ovis_image_end>", "video_start_token": "<ovis_video_start>",
             "video_end_token": "<ovis_video_end>"}
    tok = _tok(["<|im_start|>", "<|im_end|>"], bos=None, eos="<|im_end|>", pad="<|endoftext|>", add_bos=False, named=named)
    ids = {k: tok.convert_tokens_to_ids(t) for k, t in named.items()}
    vis = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "patch_size": 8,
           "image_size": _IMG, "window_size": _IMG, "vocab_size": 64, "spatial_merge_size": 2}
    cfg = Ovis2_5Config(vision_config=vis, text_config=_zoo_text(tok, model_type="qwen3"),
                        **{f"{k}_id": v for k, v in ids.items()})
    px = _IMG * _IMG
    ip = Ovis2_5ImageProcessorPil(size={"shortest_edge": px, "longest_edge": px}, patch_size=8, merge_size=2)
    proc = image_only(Ovis2_5Processor)(image_processor=ip, tokenizer=tok, chat_template=_OVIS2_5_TEMPLATE)
    return Ovis2_5ForConditionalGeneration(cfg), proc


VARIANTS = {
    "vipllava": _vipllava,
    "llava_next_video": _llava_next_video,
    "video_llava": _video_llava,
    "lighton_ocr": _lighton_ocr,
    "llava_onevision1_5": _llava_onevision1_5,
    "ovis2_5": _ovis2_5,
}
