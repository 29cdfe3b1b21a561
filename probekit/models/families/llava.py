"""LLaVA and the families that share its module tree (NeXT, OneVision, NeXT-Video, VipLLaVA)."""

from __future__ import annotations

from .base import Family

__all__ = ["Llava"]


class Llava(Family):
    name = "llava"
    model_types = ("llava", "llava_next", "llava_onevision", "llava_next_video", "vipllava")  # NeXT/OneVision: the same module tree, image tiles
    vision_layers = (
        "model.vision_tower.encoder.layers",
        "model.vision_tower.vision_model.encoder.layers",
        "vision_tower.vision_model.encoder.layers",
    )
    projector = ("model.multi_modal_projector", "multi_modal_projector")
    lm_layers = ("model.language_model.layers", "language_model.model.layers")
    final_norm = ("model.language_model.norm", "language_model.model.norm")
