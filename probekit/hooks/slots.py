"""Slots of a multi-position point, and the check that every selector applies to a batch before its forward."""

from __future__ import annotations

import torch

from ..errors import PositionError
from ..models.adapter import Model
from .positions import NAMED_POSITIONS, Position, PositionContext, position_name, select

__all__ = ["check_sequence", "slot_labels"]


def check_sequence(model: Model, side: str, ctxs: dict[str, PositionContext], points: list[str],
                   pos_list: list[Position]) -> None:
    """Every selector applies to the token sequence ``points`` lie on; else a PositionError naming them."""
    shown = ", ".join(points[:4]) + (f" and {len(points) - 4} more" if len(points) > 4 else "")
    if side not in ctxs:
        raise PositionError(f"points {shown} lie on {model.describe_sequence(side)}, whose token ids the inputs lack",
                            fix="pass input_ids (and the decoder's, for an encoder-decoder) to the forward")
    try:
        slot_labels(pos_list, ctxs[side])  # all at once; one by one below only to say which one failed
        return
    except PositionError:
        pass
    for p in pos_list:
        try:
            slot_labels([p], ctxs[side])
        except PositionError as exc:
            if model.image_free(side) and isinstance(p, str) and NAMED_POSITIONS[p].label == "image":
                raise PositionError(
                    f"position {p!r} does not apply to points {shown}: they lie on {model.describe_sequence(side)}, "
                    "which holds no image tokens",
                    fix="record these points with 'last', 'text', 'text_mean', an int or a slice, and the image "
                        "positions of the other points in a separate collect") from None
            if len(ctxs) > 1:  # which of the sequences it failed on
                raise PositionError(f"{exc.problem} (points {shown}, on {model.describe_sequence(side)})",
                                    fix=exc.fix) from None
            raise


def slot_labels(pos_list: list[Position], ctx: PositionContext) -> list[str]:
    """Label each slot along axis 1 of a multi-position point by the selector that produced it."""
    probe = torch.zeros(*ctx.attention_mask.shape, 1)
    labels: list[str] = []
    for p in pos_list:
        t = select(probe, p, ctx)
        labels += [position_name(p)] if t.dim() == 2 else [f"{position_name(p)}[{j}]" for j in range(t.shape[1])]
    return labels
