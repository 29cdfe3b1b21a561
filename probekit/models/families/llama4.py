"""Llama 4: MoE feed-forward blocks (``feed_forward``), a vision model with its own projector."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..layout import Layout, get_module
from .base import Family

__all__ = ["Llama4"]


class Llama4(Family):
    name = "llama4"
    model_types = ("llama4",)
    vision_layers = ("vision_model.model.layers", "model.vision_model.model.layers")
    projector = ("multi_modal_projector", "model.multi_modal_projector")
    lm_layers = ("language_model.model.layers", "model.language_model.layers")
    final_norm = ("language_model.model.norm", "model.language_model.norm")
    unembed = ("language_model.lm_head", "lm_head")
    mlp_attr = "feed_forward"
    placeholder = "<|image|>{prompt}"

    def extra(self, hf: nn.Module, lay: Layout) -> None:
        # transformers 5.24: Llama4ForConditionalGeneration.forward reads `image_outputs` off the
        # output of its Llama4ForCausalLM, a MoeCausalLMOutputWithPast that has no such field, so
        # every forward with return_dict fails after the language model ran. The hook adds the
        # missing (empty) field; it changes no number, and a fixed transformers never sees it used.
        lm = get_module(hf, "language_model") if hasattr(hf, "language_model") else None
        if lm is not None and not getattr(lm, "_probekit_image_outputs_fix", False):
            lm.register_forward_hook(_add_image_outputs)
            lm._probekit_image_outputs_fix = True


def _add_image_outputs(module: nn.Module, args: Any, output: Any) -> Any:
    if hasattr(output, "logits") and not hasattr(output, "image_outputs"):
        object.__setattr__(output, "image_outputs", None)
    return output
