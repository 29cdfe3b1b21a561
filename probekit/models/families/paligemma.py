"""PaliGemma: LLaVA's module tree; its processor expands the image token and adds BOS after it."""

from __future__ import annotations

from .llava import Llava

__all__ = ["PaliGemma"]


class PaliGemma(Llava):
    name = "paligemma"
    model_types = ("paligemma",)
    # The processor expands the image token and inserts BOS after it.
    placeholder = "{image}{prompt}"
