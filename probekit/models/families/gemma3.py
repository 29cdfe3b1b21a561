"""Gemma 3: LLaVA's module tree; the processor counts images per sample."""

from __future__ import annotations

from .llava import Llava

__all__ = ["Gemma3"]


class Gemma3(Llava):
    name = "gemma3"
    model_types = ("gemma3",)
    nested_images = True  # Gemma3Processor counts images per sample: [[img], [img]] for a batch of two
    placeholder = "{image}{prompt}"  # the processor's image_token is <start_of_image>; it adds the soft tokens
