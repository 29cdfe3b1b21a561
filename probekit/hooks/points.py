"""Hook points as values: :class:`Point` is the one place that reads a point's name.

A point name is one word of the flat vocabulary of DESIGN.md (``vision.{i}.resid``,
``projector``, ``lm.embed``, ``lm.{i}.resid|attn|mlp|xattn``, ``qformer.{i}.xattn``,
``lm.norm``, ``logits``; an encoder-decoder such as Florence-2 adds its encoder's
``encoder.embed`` and ``encoder.{i}.resid|attn|mlp``, while ``lm.*`` are its decoder's).
:meth:`Point.parse` turns a name into its parts; :meth:`Point.of` adds what only the model
knows (the module read, the width); :meth:`Point.info` is what every store writes beside each
point's shape, dtype and positions (:func:`fill_point_info`), so readers never parse names
again. Names outside the vocabulary (``"layer.0"``, a user's dict keys) still parse,
leniently, into the same fields.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

__all__ = ["Point", "SIDES", "KINDS", "fill_point_info", "topk_points", "point_from_hook"]

SIDES = ("vision", "projector", "encoder", "lm", "qformer")
"""Which part of the model a point is in (its name's first word; ``logits`` is on the LM side).

``encoder`` is the text encoder of an encoder-decoder language model (Florence-2's BART
encoder, which reads the image tokens and the prompt); ``lm`` is then its decoder."""

KINDS = ("resid", "attn", "mlp", "xattn", "embed", "norm", "logits", "projector")
"""What a point records."""

# the numbered points: part, block index, kind ("lm.3.resid", "vision.0.resid", "qformer.1.xattn", "encoder.0.resid")
_NUMBERED = re.compile(r"(vision|qformer|encoder|lm)\.(\d+)\.(\w+)")
# names with no number; "lm.embed" is the input of block 0, "lm.norm" the final norm
_NAMED = {"lm.embed": ("lm", "embed"), "lm.norm": ("lm", "norm"), "logits": ("lm", "logits"),
          "projector": ("projector", "projector"), "encoder.embed": ("encoder", "embed")}
# the token sequence a point's side lies on when no model says otherwise
_SEQUENCE = {"vision": "vision", "projector": "vision", "qformer": "vision", "encoder": "encoder"}
_INFO = ("side", "layer", "kind", "width", "module", "mode", "sequence")


@dataclass(frozen=True)
class Point:
    """One hook point: its name and where it sits.

    Attributes:
        name: the point name without a ``@position`` suffix (``"lm.3.resid"``).
        side: ``"vision"``, ``"projector"``, ``"encoder"``, ``"lm"``, ``"qformer"`` (for names
            outside the vocabulary: the name's first word).
        layer: the block index (``3`` for ``lm.3.resid``), None for unnumbered points.
        kind: ``"resid"``, ``"attn"``, ``"mlp"``, ``"xattn"``, ``"embed"``, ``"norm"``,
            ``"logits"``, ``"projector"``.
        width: features per token (None when unknown without a forward pass, or without a model).
        module: dotted path of the module read (None without a model).
        mode: ``"output"`` or ``"input"`` of that module (``lm.embed`` reads block 0's input).
        sequence: ``"lm"`` when the point lies on the language model's token sequence (token
            positions apply; an encoder-decoder's decoder sequence), ``"encoder"`` when it lies
            on an encoder-decoder's encoder sequence (image tokens and prompt; positions apply
            there), ``"vision"`` when it lies on image patches or query tokens (pooled per image).

    Example:
        >>> p = Point.parse("lm.3.resid@last")
        >>> p.name, p.side, p.layer, p.kind, p.sequence
        ('lm.3.resid', 'lm', 3, 'resid', 'lm')
        >>> Point.parse("qformer.1.xattn").sequence
        'vision'
        >>> Point.parse("encoder.2.resid").sequence
        'encoder'
    """

    name: str
    side: str
    layer: int | None
    kind: str
    width: int | None = None
    module: str | None = None
    mode: str | None = None
    sequence: str = "lm"

    @classmethod
    def parse(cls, name: str) -> "Point":
        """The parts of a point name (a ``@position`` suffix is dropped); never raises."""
        base = str(name).split("@")[0]
        m = _NUMBERED.fullmatch(base)
        if m:
            side, layer, kind = m.group(1), int(m.group(2)), m.group(3)
        elif base in _NAMED:
            (side, kind), layer = _NAMED[base], None
        else:  # outside the vocabulary: the first word, the first number, the last known kind
            parts = base.split(".")
            side = parts[0]
            layer = next((int(p) for p in parts if p.isdecimal()), None)
            words = [p for p in parts if not p.isdecimal()]
            known = [p for p in reversed(parts) if p in KINDS]
            kind = parts[0] if parts[0] in ("projector", "logits") else (known[0] if known else (words[-1] if words else ""))
        return cls(base, side, layer, kind, sequence=_SEQUENCE.get(side, "lm"))

    @classmethod
    def of(cls, model: Any, name: str) -> "Point":
        """The point ``name`` of a :class:`probekit.Model`, with its module, mode, sequence and width."""
        target = model.target(name)  # raises UnknownPointError for a name the model lacks
        return replace(cls.parse(name), width=target.width, module=target.path, mode=target.mode,
                       sequence=target.side)

    @classmethod
    def from_info(cls, name: str, info: Mapping[str, Any] | None) -> "Point":
        """The point as a store records it; fields a store lacks (older stores) come from the name."""
        parsed = cls.parse(name)
        if not info:
            return parsed
        known = {k: info[k] for k in _INFO if k in info}
        return replace(parsed, **known)

    def info(self) -> dict[str, Any]:
        """The JSON fields a store keeps for this point (everything but the name)."""
        d = asdict(self)
        d.pop("name")
        return d

    @property
    def depth(self) -> float:
        """Place along the language model: -1 for ``lm.embed``, i for ``lm.{i}.*``, else NaN."""
        if self.side != "lm":
            return math.nan
        if self.kind == "embed":
            return -1.0
        return float(self.layer) if self.layer is not None else math.nan

    @property
    def in_stream(self) -> bool:
        """Whether the point is the residual stream itself (``lm.embed`` or ``lm.{i}.resid``)."""
        return self.side == "lm" and (self.kind == "embed" or (self.kind == "resid" and self.layer is not None))

    @property
    def numbered(self) -> bool:
        """Whether the name is one of the vocabulary's numbered points (``{side}.{i}.{kind}``)."""
        return _NUMBERED.fullmatch(self.name) is not None


def topk_points(point: str = "logits") -> tuple[str, str]:
    """The two points ``collect(..., logits_topk=k)`` stores in place of ``point``: its top-k
    log-probabilities and their token ids.

    >>> topk_points()
    ('logits.topk', 'logits.topk_ids')
    """
    return f"{point}.topk", f"{point}.topk_ids"


def fill_point_info(points: Iterable[str], info: Mapping[str, Mapping[str, Any]] | None,
                    tensors: Mapping[str, Any] | None = None, positions: list[str] | None = None) -> dict[str, dict]:
    """Every point's store entry: shape, dtype, positions and the :class:`Point` fields.

    Entries given in ``info`` are kept (a field they lack is filled); a point with no entry
    (an in-memory store built from plain tensors) gets its shape and dtype from ``tensors`` and
    its position names from ``positions`` (the store's ``meta["positions"]``) when they fit its
    shape: the one name of a ``[n, d]`` point, one per slot of ``[n, p, d]``, else slot numbers.
    """
    info = info or {}
    tensors = tensors or {}
    positions = list(positions or [])
    out: dict[str, dict] = {}
    for p in points:
        entry = dict(info.get(p) or {})
        t = tensors.get(p)
        if t is not None and hasattr(t, "shape"):
            shape = list(t.shape[1:])
            entry.setdefault("shape", shape)
            entry.setdefault("dtype", str(getattr(t, "dtype", "")).replace("torch.", ""))
            if "positions" not in entry:
                slots = shape[0] if len(shape) == 2 else 1
                entry["positions"] = (positions if len(positions) == slots else
                                      [] if len(shape) < 2 else [str(j) for j in range(slots)])
        entry.setdefault("positions", [])
        for k, v in Point.from_info(p, entry).info().items():
            entry.setdefault(k, v)
        out[p] = entry
    return out


# Other libraries' names of the same places (SAE files carry them): parsed here like every point name
_EXTERNAL_HOOKS = [(re.compile(r"blocks\.(\d+)\.hook_resid_post"), "lm.{}.resid"),
          (re.compile(r"blocks\.(\d+)\.hook_out"), "lm.{}.resid"),
          (re.compile(r"blocks\.(\d+)\.hook_mlp_out"), "lm.{}.mlp"),
          (re.compile(r"blocks\.(\d+)\.hook_attn_out"), "lm.{}.attn"),
          (re.compile(r"(?:model\.)?(?:language_model\.)?layers\.(\d+)"), "lm.{}.resid"),  # sparsify's hookpoints
          (re.compile(r"(?:model\.)?(?:language_model\.)?layers\.(\d+)\.mlp"), "lm.{}.mlp")]


def point_from_hook(hook_name: Any) -> str | None:
    """The probekit point of an external hook name: TransformerLens's (``blocks.5.hook_resid_post`` ->
    ``lm.5.resid``) or a Hugging Face module path as eai-sparsify names its hookpoints (``layers.5``); None
    when it is neither (the names SAE files carry).

    >>> point_from_hook("blocks.5.hook_resid_post"), point_from_hook("blocks.0.hook_resid_pre")
    ('lm.5.resid', None)
    """
    if not isinstance(hook_name, str):
        return None
    for pat, fmt in _EXTERNAL_HOOKS:
        m = pat.fullmatch(hook_name)
        if m:
            return fmt.format(m.group(1))
    return None
