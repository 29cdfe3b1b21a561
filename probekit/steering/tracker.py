"""Where an intervention edits: the prompt's position mask, carried across ``generate``'s cached steps.

A forward pre-hook on the whole model sees each call's ``input_ids`` / ``attention_mask`` and
the KV cache. A call with an empty (or no) cache is a new prompt and the selectors run on it
(:func:`probekit.hooks.positions.position_mask`, the registry recording uses too); a call that
continues a cache (``generate``'s decoding steps, where every hook sees a sequence of length 1)
is placed at absolute positions ``cache_length + 0..L-1``, so prompt positions stay the same
positions as the cache grows and tokens past the prompt are "generated".

An encoder-decoder (Florence-2) has two token sequences (:meth:`probekit.Model.sequences`):
each point's positions are chosen on the sequence of its side, the encoder's from
``input_ids`` and the decoder's from ``decoder_input_ids``; the cache continues the decoder's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import PositionError
from ..hooks.positions import PositionContext, position_mask
from ..models.adapter import Model
from ..models.compat import cache_from_kwargs

__all__ = ["PromptTracker"]


def _cache_length(cache: Any) -> int:
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    if isinstance(cache, (tuple, list)) and cache and isinstance(cache[0], (tuple, list)):
        return int(cache[0][0].shape[-2])  # legacy tuple cache: [layers][k, v] of [b, heads, s, hd]
    return 0


class PromptTracker:
    """Pre-hook on the whole model: the prompt's edit mask per token sequence and the absolute offset of each call.

    ``sides``: the token sequences the edited points lie on (``"lm"``, and ``"encoder"`` for an
    encoder-decoder's encoder points).
    """

    def __init__(self, model: Model, positions: list | None, generated: bool, sides: Iterable[str] = ("lm",)):
        self.model = model
        self.positions = positions
        self.generated = generated
        self.sides = tuple(sides)
        self.prompt_masks: dict[str, Tensor] = {}
        self.offset = 0

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        past = _cache_length(cache_from_kwargs(kwargs))
        if past > 0:
            if not self.prompt_masks:
                raise PositionError("a forward continues a KV cache whose prompt ran outside this intervention",
                                    fix="enter the ablate/steer context before the prompt's forward (or generate)")
            self.offset = past
            return
        inputs = dict(kwargs)
        if inputs.get("input_ids") is None and args and isinstance(args[0], Tensor):
            inputs["input_ids"] = args[0]
        seqs = self.model.sequences(inputs)
        for side in self.sides:
            if side in seqs:
                continue
            if side == "lm" and len(self.sides) == 1:
                raise PositionError("positions need input_ids, but the model was called with inputs_embeds only",
                                    fix="call the model with input_ids, or use positions=None (every position)")
            raise PositionError(f"positions on {self.model.describe_sequence(side)} need its token ids, but this forward "
                                "was called without them (generate runs an encoder before its first forward)",
                                fix="run the model's forward with input_ids (model.hf(**inputs)), or use positions=None "
                                    "for points on that sequence")
        self.prompt_masks = {side: position_mask(PositionContext.from_inputs(ids, image), self.positions)
                             for side, (ids, image) in seqs.items() if side in self.sides}
        self.offset = 0

    def batch(self, side: str = "lm") -> int:
        """Rows of the prompt of ``side`` (1 before a prompt is seen)."""
        pm = self.prompt_masks.get(side)
        return pm.shape[0] if pm is not None else 1

    def mask(self, b: int, length: int, device: torch.device, side: str = "lm", point: str | None = None) -> Tensor:
        """Bool ``[b, length]``: which positions of the current call to edit, on the sequence of ``side``."""
        if side not in self.prompt_masks:
            where = f"{point}: " if point else ""
            if side == "encoder":  # generate() runs an encoder-decoder's encoder before its first forward
                raise PositionError(f"{where}positions on {self.model.describe_sequence(side)} are chosen in the model's "
                                    "forward, but the encoder ran outside it (generate runs the encoder first)",
                                    fix="use positions=None for encoder points under generate, or run the model's "
                                        "forward (model.hf(**inputs))")
            raise PositionError(f"{where}an edited module ran without the model's forward (no prompt seen)",
                                fix="run the whole model (model.hf(...) or generate), or use positions=None")
        pm = self.prompt_masks[side].to(device)
        if pm.shape[0] != b:
            if b % pm.shape[0]:
                raise PositionError(f"batch of {b} rows but the prompt had {pm.shape[0]}")
            pm = pm.repeat_interleave(b // pm.shape[0], 0)  # beams / samples expanded after the prompt
        offset = self.offset if side == "lm" else 0  # a KV cache continues the (decoder's) language-model sequence
        idx = torch.arange(offset, offset + length, device=device)
        out = torch.full((b, length), self.generated, dtype=torch.bool, device=device)
        inside = idx < pm.shape[1]
        out[:, inside] = pm[:, idx[inside]]
        return out
