"""Gemma 3: LLaVA's module tree; the processor counts images per sample."""

from __future__ import annotations

from typing import Any

from .llava import Llava

__all__ = ["Gemma3"]


class Gemma3(Llava):
    name = "gemma3"
    model_types = ("gemma3",)
    nested_images = True  # Gemma3Processor counts images per sample: [[img], [img]] for a batch of two
    placeholder = "{image}{prompt}"  # the processor expands <start_of_image> into the soft tokens

    def image_marker(self, processor: Any) -> str:
        # <start_of_image> is what Gemma3Processor looks for; its image_token attribute names it from
        # transformers 5.2x on, but the soft token itself before (5.9)
        return getattr(processor, "boi_token", None) or super().image_marker(processor)
