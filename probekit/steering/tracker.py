"""Where an intervention edits: the prompt's position mask, carried across ``generate``'s cached steps.

A forward pre-hook on the whole model sees each call's ``input_ids`` / ``attention_mask`` and
the KV cache. A call with an empty (or no) cache is a new prompt and the selectors run on it
(:func:`probekit.hooks.positions.position_mask`, the registry recording uses too); a call that
continues a cache (``generate``'s decoding steps, where every hook sees a sequence of length 1)
is placed at absolute positions ``cache_length + 0..L-1``, so prompt positions stay the same
positions as the cache grows and tokens past the prompt are "generated".
"""

from __future__ import annotations

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
    """Pre-hook on the whole model: the prompt's edit mask and the absolute offset of each call."""

    def __init__(self, model: Model, positions: list | None, generated: bool):
        self.model = model
        self.positions = positions
        self.generated = generated
        self.prompt_mask: Tensor | None = None
        self.offset = 0

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        past = _cache_length(cache_from_kwargs(kwargs))
        if past > 0:
            if self.prompt_mask is None:
                raise PositionError("a forward continues a KV cache whose prompt ran outside this intervention",
                                    fix="enter the ablate/steer context before the prompt's forward (or generate)")
            self.offset = past
            return
        ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], Tensor) else None)
        if ids is None:
            raise PositionError("positions need input_ids, but the model was called with inputs_embeds only",
                                fix="call the model with input_ids, or use positions=None (every position)")
        am = kwargs.get("attention_mask")
        ctx = PositionContext.from_inputs({"input_ids": ids, "attention_mask": am}, self.model.image_mask({"input_ids": ids}))
        self.prompt_mask = position_mask(ctx, self.positions)
        self.offset = 0

    def mask(self, b: int, length: int, device: torch.device) -> Tensor:
        """Bool ``[b, length]``: which positions of the current call to edit."""
        if self.prompt_mask is None:
            raise PositionError("an edited module ran without the model's forward (no prompt seen)",
                                fix="run the whole model (model.hf(...) or generate), or use positions=None")
        pm = self.prompt_mask.to(device)
        if pm.shape[0] != b:
            if b % pm.shape[0]:
                raise PositionError(f"batch of {b} rows but the prompt had {pm.shape[0]}")
            pm = pm.repeat_interleave(b // pm.shape[0], 0)  # beams / samples expanded after the prompt
        idx = torch.arange(self.offset, self.offset + length, device=device)
        out = torch.full((b, length), self.generated, dtype=torch.bool, device=device)
        inside = idx < pm.shape[1]
        out[:, inside] = pm[:, idx[inside]]
        return out
