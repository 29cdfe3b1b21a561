"""Where a hook point goes: its place in the forward pass and on a figure's x axis.

Hook points are placed by their name, not by the ``layer`` column, because the readout
numbers vision layers too (``vision.3.resid`` has layer 3): language-model points
(``lm.embed``, ``lm.{i}.*``, ``lm.norm``, ``logits``) go on a numeric "LM layer" axis,
points before the language model (``vision.{i}.*``, ``qformer.{i}.*``, ``projector``, and an
encoder-decoder's ``encoder.embed`` / ``encoder.{i}.*``, whose ``lm.*`` are its decoder's) on a
narrower panel to its left, in the order the image passes through them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from ..hooks.points import Point

__all__ = ["Place", "place", "point_order"]

_PRE_GROUP = {"vision": 0, "qformer": 1, "encoder": 3}  # the projector is group 2


@dataclass
class Place:
    """Where one hook point is drawn."""

    panel: str  # "pre" (before the language model) or "lm"
    key: tuple  # sort key within the panel
    label: str  # tick label
    stream: str  # curves connect points of one stream


def place(point: str) -> Place:
    """The :class:`Place` of a hook point (``"lm.3.resid"``, ``"projector"``, ``"logits"``, ...).

    >>> place("lm.3.resid"), place("vision.1.attn").label
    (Place(panel='lm', key=(3, 0), label='3', stream='resid'), '1 attn')
    """
    pt = Point.parse(str(point))
    name = pt.name
    if pt.numbered:
        part, i, kind = pt.side, pt.layer, pt.kind
        if part == "lm":
            return Place("lm", (i, 0), str(i), "resid" if kind == "resid" else kind)
        label = {"vision": "", "qformer": "Q", "encoder": "E"}[part] + str(i)
        # the vision tower, the Q-Former and a text encoder are one path from pixels to the LM: one curve
        return Place("pre", (_PRE_GROUP[part], i, kind), label if kind in ("resid", "xattn") else f"{label} {kind}",
                     "image")
    if name == "lm.embed":
        return Place("lm", (-1, 0), "embed", "resid")
    if name == "lm.norm":
        return Place("lm", (math.inf, 0), "norm", "resid")
    if name.startswith("logits"):
        return Place("lm", (math.inf, 1), "logits", "resid")
    if name == "projector":
        return Place("pre", (2, 0, ""), "proj", "image")
    if name == "encoder.embed":
        return Place("pre", (3, -1, ""), "E embed", "image")
    return Place("pre", (4, 0, name), name, "image")


def point_order(points: Iterable[str]) -> list[str]:
    """Distinct hook points in the order the input flows through the model.

    >>> point_order(["lm.1.resid", "projector", "lm.embed", "logits", "vision.0.resid", "lm.0.resid"])
    ['vision.0.resid', 'projector', 'lm.embed', 'lm.0.resid', 'lm.1.resid', 'logits']
    """
    pts = list(dict.fromkeys(str(p) for p in points))
    pl = {p: place(p) for p in pts}
    return sorted(pts, key=lambda p: (pl[p].panel == "lm", pl[p].key))
