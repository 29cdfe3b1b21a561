"""Position selectors: which token positions of a ``[b, s, d]`` activation are kept.

Selectors work on the *real* tokens of each row, so left padding, right padding and prompts
of different lengths give the same answer for the same sample:

- ``"last"``: the last real token -> ``[b, d]``
- ``"image_mean"`` / ``"text_mean"``: mean over image / text tokens -> ``[b, d]``
- ``"image"`` / ``"text"``: every image / text token -> ``[b, k, d]`` (k must agree across the batch)
- ``int``: the i-th real token (negative counts back from the last real one) -> ``[b, d]``
- ``slice``: a slice of the real tokens -> ``[b, k, d]``
- callable ``f(ctx) -> LongTensor[b] | LongTensor[b, k] | BoolTensor[b, s]`` on a :class:`PositionContext`
  (indices are into the padded sequence) -> ``[b, d]`` or ``[b, k, d]``

Vision-side points (vision tower, projector, Q-Former) have no text positions: every selector
except ``"image"`` (all patches) reduces them to the mean over the image's patches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch

from ..errors import PositionError

__all__ = ["PositionContext", "Position", "normalize_positions", "position_name", "select", "select_vision"]

Position = Union[str, int, slice, Callable[["PositionContext"], torch.Tensor]]
NAMED = ("last", "image_mean", "text_mean", "image", "text")


@dataclass
class PositionContext:
    """What a selector may look at: the batch's masks and ids (all ``[b, s]``)."""

    attention_mask: torch.Tensor
    image_mask: torch.Tensor
    input_ids: torch.Tensor

    @classmethod
    def from_inputs(cls, inputs: dict, image_mask: torch.Tensor) -> "PositionContext":
        ids = inputs["input_ids"]
        am = inputs.get("attention_mask")
        if am is None:
            am = torch.ones_like(ids)
        return cls(attention_mask=am.bool(), image_mask=image_mask & am.bool(), input_ids=ids)

    def real_index(self) -> torch.Tensor:
        """``[b, s]``: rank of each real token within its row (pads get -1)."""
        am = self.attention_mask.long()
        return torch.where(self.attention_mask, am.cumsum(1) - 1, torch.full_like(am, -1))


def position_name(p: Position) -> str:
    if isinstance(p, str):
        return p
    if isinstance(p, bool):
        raise PositionError(f"position {p!r} is a bool", fix="use an int index, a slice or a name like 'last'")
    if isinstance(p, int):
        return str(p)
    if isinstance(p, slice):
        return f"{'' if p.start is None else p.start}:{'' if p.stop is None else p.stop}" + (
            f":{p.step}" if p.step is not None else "")
    return getattr(p, "__name__", "callable")


def normalize_positions(positions: Position | Sequence[Position]) -> tuple[list[Position], bool]:
    """Validate selectors up front; returns (list, whether several were asked for)."""
    many = isinstance(positions, (list, tuple))
    items = list(positions) if many else [positions]
    if not items:
        raise PositionError("positions is empty", fix="pass e.g. positions='last' or positions=('last', 'image_mean')")
    for p in items:
        if isinstance(p, bool) or not (isinstance(p, (str, int, slice)) or callable(p)):
            raise PositionError(
                f"position {p!r} ({type(p).__name__}) is not a selector",
                fix=f"use one of {NAMED}, an int, a slice, or a callable(ctx) -> indices or mask",
            )
        if isinstance(p, str) and p not in NAMED:
            raise PositionError(f"unknown position name {p!r}", fix=f"use one of {NAMED}")
        if isinstance(p, slice):
            parts = (p.start, p.stop, p.step)
            if not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in parts):
                raise PositionError(f"position slice {p!r} has a part that is not an int",
                                    fix="use int (or None) start, stop and step, e.g. slice(0, 4)")
            if p.step is not None and p.step < 1:
                raise PositionError(f"position slice {p!r} has step {p.step}; selected tokens keep their order",
                                    fix="use a positive step (or None)")
    names = [position_name(p) for p in items]
    if len(set(names)) != len(names):
        raise PositionError(f"positions repeat: {names}", fix="list each position once")
    return items, many


def _gather_rows(h: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """h[b, s, d], idx[b] or idx[b, k] -> [b, d] or [b, k, d]."""
    b = torch.arange(h.shape[0], device=h.device)
    if idx.dim() == 1:
        return h[b, idx]
    return h[b[:, None], idx]


def _mask_to_index(mask: torch.Tensor, what: str) -> torch.Tensor:
    counts = mask.sum(1)
    if counts.numel() and not bool((counts == counts[0]).all()):
        raise PositionError(
            f"position {what!r} selects a different number of tokens per sample ({counts.tolist()})",
            fix=f"use {what}_mean (or a selector with a fixed count) for prompts of different lengths",
        )
    if counts.numel() and int(counts[0]) == 0:
        raise PositionError(f"position {what!r} selects no token in this batch",
                            fix="check that the prompt holds an image placeholder / text")
    k = int(counts[0]) if counts.numel() else 0
    # stable sort puts selected positions first, in order
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
    return order[:, :k]


def _masked_mean(h: torch.Tensor, mask: torch.Tensor, what: str) -> torch.Tensor:
    counts = mask.sum(1)
    if bool((counts == 0).any()):
        bad = (counts == 0).nonzero().flatten().tolist()
        raise PositionError(f"position {what!r}: samples {bad} of the batch have no such tokens",
                            fix="check the prompts hold the image placeholder, or choose another position")
    m = mask.to(h.dtype).unsqueeze(-1)
    # sum in float32 so bf16 models do not lose precision over hundreds of image tokens
    return ((h.float() * m.float()).sum(1) / counts.unsqueeze(-1).float()).to(h.dtype)


def select(h: torch.Tensor, p: Position, ctx: PositionContext) -> torch.Tensor:
    """Apply one selector to ``h[b, s, d]`` of a language-model-side point."""
    am = ctx.attention_mask
    if p == "last":
        # last real token: highest index with attention 1 (works for left and right padding)
        s = am.shape[1]
        idx = (am.long() * torch.arange(1, s + 1, device=am.device)).argmax(1)
        return _gather_rows(h, idx)
    if p == "image_mean":
        return _masked_mean(h, ctx.image_mask, "image")
    if p == "text_mean":
        return _masked_mean(h, am & ~ctx.image_mask, "text")
    if p == "image":
        return _gather_rows(h, _mask_to_index(ctx.image_mask, "image"))
    if p == "text":
        return _gather_rows(h, _mask_to_index(am & ~ctx.image_mask, "text"))
    if isinstance(p, int):
        lengths = am.sum(1)
        rank = torch.full_like(lengths, p) if p >= 0 else lengths + p
        if bool(((rank < 0) | (rank >= lengths)).any()):
            raise PositionError(f"position {p} is outside a prompt of {int(lengths.min())} real tokens",
                                fix="use a smaller index or 'last'")
        real = ctx.real_index()
        idx = ((real == rank[:, None]) & am).long().argmax(1)
        return _gather_rows(h, idx)
    if isinstance(p, slice):
        real = ctx.real_index()
        lengths = am.sum(1)
        masks = []
        for r in range(h.shape[0]):
            keep = torch.zeros(int(lengths[r]), dtype=torch.bool, device=h.device)
            keep[p] = True
            row = torch.zeros(am.shape[1], dtype=torch.bool, device=h.device)
            row[am[r]] = keep
            masks.append(row)
        return _gather_rows(h, _mask_to_index(torch.stack(masks), position_name(p)))
    out = p(ctx)
    if not isinstance(out, torch.Tensor):
        raise PositionError(f"position callable {position_name(p)} returned {type(out).__name__}",
                            fix="return a LongTensor [b] or [b, k] of indices, or a BoolTensor [b, s] mask")
    out = out.to(h.device)
    if out.dtype == torch.bool:
        if out.shape != am.shape:
            raise PositionError(f"position mask has shape {tuple(out.shape)}, the batch is {tuple(am.shape)}",
                                fix="return a BoolTensor shaped like ctx.attention_mask")
        return _gather_rows(h, _mask_to_index(out, position_name(p)))
    if out.shape[0] != h.shape[0] or out.dim() not in (1, 2):
        raise PositionError(f"position callable returned indices of shape {tuple(out.shape)} for a batch of {h.shape[0]}",
                            fix="return one index per sample ([b]) or k per sample ([b, k])")
    if bool(((out < 0) | (out >= h.shape[1])).any()):
        raise PositionError(f"position callable returned an index outside 0..{h.shape[1] - 1}",
                            fix="return indices into the padded sequence (see ctx.attention_mask)")
    return _gather_rows(h, out.long())


def select_vision(h: torch.Tensor, p: Position, counts: list[int] | None, batch: int) -> torch.Tensor:
    """Reduce a vision-side activation to one row per sample.

    ``h`` is ``[B', p, d]`` (B' a multiple of the batch: several images or tiles per sample) or
    ``[N, d]`` flattened over the batch (Qwen2-VL), split by ``counts``, or ``[1, N, d]``: one
    sequence of every image's patches (Pixtral), split by ``counts`` too.
    """
    if h.dim() == 3 and h.shape[0] == 1 and counts is not None and sum(counts) == h.shape[1]:
        h = h[0]
    if h.dim() == 2:
        if counts is None:
            if h.shape[0] % batch:
                raise PositionError(f"cannot split a flattened vision activation of {h.shape[0]} rows over {batch} samples",
                                    fix="pass one image per prompt")
            counts = [h.shape[0] // batch] * batch
        if len(counts) % batch:
            raise PositionError(f"{len(counts)} images for {batch} samples", fix="pass one image per prompt")
        per = len(counts) // batch
        counts = [sum(counts[i * per:(i + 1) * per]) for i in range(batch)]
        chunks = torch.split(h, counts, dim=0)
        if p == "image":
            if len(set(counts)) != 1:
                raise PositionError("'image' needs the same number of patches per sample", fix="use 'image_mean'")
            return torch.stack(chunks)
        return torch.stack([c.float().mean(0).to(h.dtype) for c in chunks])
    if h.dim() != 3:
        raise PositionError(f"vision activation of unexpected shape {tuple(h.shape)}",
                            fix="record this point with positions='image_mean', or open an issue with the model")
    if h.shape[0] % batch:
        raise PositionError(f"vision activation has {h.shape[0]} images for {batch} samples", fix="pass one image per prompt")
    per = h.shape[0] // batch
    h = h.reshape(batch, per * h.shape[1], h.shape[2])
    if p == "image":
        return h
    return h.float().mean(1).to(h.dtype)
