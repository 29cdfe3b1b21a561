"""Mllama (Llama 3.2 Vision): cross-attention layers in the LM, a tiled local + global vision tower.

The image reaches the language model only through the cross-attention layers' keys and
values, so the projector does not write into the residual stream; the vision tower's
activations carry image and tile axes (``[b, images, tiles, patches, d]``, folded per sample
by :meth:`Family.vision_activation`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..layout import Layout, find_first, get_module
from .base import Family

__all__ = ["Mllama"]


class Mllama(Family):
    name = "mllama"
    model_types = ("mllama",)
    vision_layers = ("model.vision_model.transformer.layers", "vision_model.transformer.layers")
    projector = ("model.multi_modal_projector", "multi_modal_projector")
    lm_layers = ("model.language_model.layers", "language_model.model.layers")
    final_norm = ("model.language_model.norm", "language_model.model.norm")
    nested_images = True
    placeholder = "<|image|>{prompt}"
    # the projector feeds cross-attention keys and values, not the stream
    projector_writes_stream = False

    def layout(self, hf: nn.Module, processor: Any) -> Layout:
        lay = super().layout(hf, processor)
        glob = find_first(hf, ("model.vision_model.global_transformer.layers", "vision_model.global_transformer.layers"))
        if lay.vision_layers and glob:
            lay.vision_layers = [lay.vision_layers, glob]
        return lay

    def extra(self, hf: nn.Module, lay: Layout) -> None:
        layers = get_module(hf, lay.lm_layers)
        for i, block in enumerate(layers):
            if hasattr(block, "cross_attn"):
                lay.xattn[i] = f"{lay.lm_layers}.{i}.cross_attn"
