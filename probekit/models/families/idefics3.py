"""Idefics3 and SmolVLM: a SigLIP tower, a pixel-shuffle connector, a Llama text model."""

from __future__ import annotations

from .base import Family

__all__ = ["Idefics3"]


class Idefics3(Family):
    name = "idefics3"
    model_types = ("idefics3", "smolvlm")
    vision_layers = ("model.vision_model.encoder.layers",)
    projector = ("model.connector",)
    lm_layers = ("model.text_model.layers",)
    final_norm = ("model.text_model.norm",)
    nested_images = True
    placeholder = "<image>{prompt}"
