"""More tiny builds for the coverage matrix: close relatives of :mod:`probekit.models.tiny_zoo`'s architectures.

Kept apart only so that each module stays short; :data:`probekit.models.tiny_zoo.ARCHITECTURES`
includes these.
"""

from __future__ import annotations

from typing import Any

from probekit.models.processors import image_only, pixtral_processor
from probekit.models.tiny_text import _LLAVA_TEMPLATE
from probekit.models.tiny_zoo_parts import _IMG, _text, _tok, _vision

__all__ = ["VARIANTS"]


def _clip_processor() -> Any:
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": _IMG}, crop_size={"height": _IMG, "width": _IMG})


def _vipllava() -> tuple[Any, Any]:
    from transformers import LlavaProcessor, VipLlavaConfig, VipLlavaForConditionalGeneration

    tok = _tok(["<image>"])
    # VipLLaVA concatenates several vision layers' features (real checkpoints: [-2, -5, -8, -11, 6])
    cfg = VipLlavaConfig(vision_config=_vision(model_type="clip_vision_model", num_hidden_layers=2),
                         text_config=_text(tok, model_type="llama"), image_token_index=tok.convert_tokens_to_ids("<image>"),
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
    cfg = LlavaNextVideoConfig(vision_config=_vision(model_type="clip_vision_model"), text_config=_text(tok, model_type="llama"),
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
    cfg = VideoLlavaConfig(vision_config=_vision(model_type="clip_vision_model"), text_config=_text(tok, model_type="llama"),
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
    cfg = LightOnOcrConfig(vision_config=vis, text_config=_text(tok, model_type="qwen3"), spatial_merge_size=2,
                           image_token_id=tok.convert_tokens_to_ids("[IMG]"))
    ip = PixtralImageProcessorPil(size={"longest_edge": _IMG}, patch_size=16)
    return LightOnOcrForConditionalGeneration(cfg), pixtral_processor(ip, tok, patch_size=8, spatial_merge_size=2)


VARIANTS = {
    "vipllava": _vipllava,
    "llava_next_video": _llava_next_video,
    "video_llava": _video_llava,
    "lighton_ocr": _lighton_ocr,
}
