"""BLIP-2: a Q-Former between the vision tower and an OPT (or Llama-style) language model.

The Q-Former's cross-attention reads the vision tower and is not on the LM sequence; OPT has
no ``mlp`` module (``fc2`` writes the MLP output, on rows flattened to ``[b*s, d]``, which
:meth:`Family.lm_activation` folds back).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..layout import Layout, find_first, get_module
from .base import Family

__all__ = ["Blip2"]


class Blip2(Family):
    name = "blip2"
    model_types = ("blip-2",)
    aliases = ("blip_2",)
    vision_layers = ("vision_model.encoder.layers",)
    projector = ("language_projection",)
    lm_layers = ("language_model.model.decoder.layers", "language_model.model.layers")
    final_norm = ("language_model.model.decoder.final_layer_norm", "language_model.model.norm")
    unembed = ("language_model.lm_head", "lm_head")
    placeholder = "{prompt}"  # the processor inserts the query-token placeholders

    def layout(self, hf: nn.Module, processor: Any) -> Layout:
        lay = super().layout(hf, processor)
        block = get_module(hf, lay.lm_layers)[0]
        if not hasattr(block, "mlp") and hasattr(block, "fc2"):
            lay.mlp_attr = "fc2"  # OPT has no mlp module; fc2 writes the MLP output
        return lay

    def extra(self, hf: nn.Module, lay: Layout) -> None:
        # The Q-Former's cross-attention reads the vision tower; it is not on the LM sequence.
        lay.xattn_prefix, lay.xattn_side = "qformer", "vision"
        path = find_first(hf, ("qformer.encoder.layer",))
        if path:
            for i, layer in enumerate(get_module(hf, path)):
                if getattr(layer, "has_cross_attention", False) or hasattr(layer, "crossattention"):
                    lay.xattn[i] = f"{path}.{i}.crossattention"

    def xattn_width(self, hf: nn.Module) -> int | None:
        return getattr(getattr(hf.config, "qformer_config", None), "hidden_size", None)
