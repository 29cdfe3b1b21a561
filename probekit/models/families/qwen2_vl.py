"""Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision-1.5: a vision tower that runs on every patch of the batch at once."""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import Family, grid_counts

__all__ = ["Qwen2VL"]


class Qwen2VL(Family):
    name = "qwen2_vl"
    # LLaVA-OneVision-1.5 (transformers >= 5.25): Qwen2.5-VL's module layout, a class token per image in the tower
    model_types = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "llava_onevision1_5")
    vision_layers = ("model.visual.blocks", "visual.blocks")
    projector = ("model.visual.merger", "visual.merger")
    lm_layers = ("model.language_model.layers", "model.layers")
    final_norm = ("model.language_model.norm", "model.norm")
    placeholder = "<|vision_start|><|image_pad|><|vision_end|>{prompt}"

    def vision_width(self, hf: nn.Module) -> int | None:
        # Qwen2-VL's vision hidden_size is the merger's output; its blocks are embed_dim wide
        # (Qwen2.5-VL, Qwen3-VL, GLM-4V: hidden_size, with out_hidden_size for the merger)
        vcfg = getattr(hf.config, "vision_config", None)
        return getattr(vcfg, "embed_dim", None) or getattr(vcfg, "hidden_size", None)

    def vision_counts(self, model: Any, inputs: Any, point: str, first_dim: int) -> list[int] | None:
        # The vision tower runs on all patches of the batch flattened into one sequence.
        return grid_counts(model, inputs, first_dim)
