"""LightOnOCR: a Pixtral tower and patch merger in front of a Qwen3 language model."""

from __future__ import annotations

from .mistral3 import Mistral3

__all__ = ["LightOnOcr"]


class LightOnOcr(Mistral3):
    """LightOnOCR: a Pixtral tower and patch merger in front of a Qwen3 language model."""

    name = "lighton_ocr"
    model_types = ("lighton_ocr",)
    vision_layers = ("model.vision_encoder.transformer.layers",)
    projector = ("model.vision_projection",)
