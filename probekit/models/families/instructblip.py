"""InstructBLIP: BLIP-2's layout; the Q-Former also reads the instruction (its own tokenizer)."""

from __future__ import annotations

from .blip2 import Blip2

__all__ = ["InstructBlip"]


class InstructBlip(Blip2):
    """InstructBLIP: BLIP-2's layout; the Q-Former also reads the instruction (its own tokenizer)."""

    name = "instructblip"
    model_types = ("instructblip",)
