"""Reductions of a ``[b, s, d]`` activation by a boolean token mask: the rows it picks, or their mean.

:func:`probekit.hooks.positions.select` turns every selector into a mask and hands it here.
"""

from __future__ import annotations

import torch

from ..errors import PositionError

__all__ = ["gather_rows", "mask_to_index", "mean_weights", "masked_mean", "one_index"]


def gather_rows(h: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """h[b, s, d], idx[b] or idx[b, k] -> [b, d] or [b, k, d]."""
    b = torch.arange(h.shape[0], device=h.device)
    if idx.dim() == 1:
        return h[b, idx]
    return h[b[:, None], idx]


def mask_to_index(mask: torch.Tensor, what: str) -> torch.Tensor:
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


def mean_weights(mask: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``mask`` as float32 weights ``[b, s, 1]`` and the tokens per row ``[b, 1]`` (float32), every row non-empty."""
    counts = mask.sum(1)
    if bool((counts == 0).any()):
        bad = (counts == 0).nonzero().flatten().tolist()
        raise PositionError(f"position {what!r}: samples {bad} of the batch have no such tokens",
                            fix="check the prompts hold the image placeholder, or choose another position")
    return mask.to(torch.float32).unsqueeze(-1), counts.unsqueeze(-1).float()


def masked_mean(h: torch.Tensor, weights: torch.Tensor, counts: torch.Tensor, scratch: dict | None) -> torch.Tensor:
    # sum in float32 so bf16 models do not lose precision over hundreds of image tokens
    x = h.float()
    if scratch is not None and x.device.type == "cpu":
        # the [b, s, d] product goes into one buffer kept across batches: a fresh one per batch costs a
        # page fault per 4 KiB on CPU (for full-vocabulary logits more than the product itself); same
        # shape and strides, so the same kernels and the same bits
        flat = scratch.get("masked_mean")
        if flat is None or flat.numel() < x.numel():
            with torch.inference_mode(False):  # a normal tensor: written inside and outside inference mode
                flat = scratch["masked_mean"] = torch.empty(x.numel(), dtype=torch.float32)
        prod = torch.mul(x, weights, out=flat[:x.numel()].view(x.shape))
    else:
        prod = x * weights
    return (prod.sum(1) / counts).to(h.dtype)


def one_index(m: torch.Tensor, what: str) -> torch.Tensor:
    """``[b]``: the single token each row of ``m`` holds."""
    counts = m.sum(1)
    if bool((counts != 1).any()):
        raise PositionError(f"position {what!r} must select exactly one token per sample, got {counts.tolist()}",
                            fix=f"register {what!r} with reduce='tokens' (several) or fix its mask")
    return m.long().argmax(1)
