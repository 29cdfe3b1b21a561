"""`store_layout`: what a collect will store, and the memory it takes, worked out before any forward.

Nothing here reads a weight: the shapes come from each point's width (known from the module,
:meth:`probekit.Model.point_width`) and from the same position code a collect runs
(collect's position reduction on the batch's token ids), so a 7B model built on the
meta device is planned in milliseconds. The coverage matrix checks the plan against real stores
of every covered architecture (``test_store_layout_is_the_store``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pandas as pd
import torch

from ..errors import InputError, PositionError, check_int
from ..models.adapter import Model
from .points import topk_points
from .collect import reducer
from .positions import Position, PositionContext, normalize_positions
from .slots import check_sequence

__all__ = ["StoreLayout", "store_layout", "synthetic_inputs"]

_TOP = topk_points("logits")


@dataclass(frozen=True)
class StoreLayout:
    """Per point the stored shape (one sample), dtype and bytes, and the totals a collect of ``n`` needs.

    ``table`` columns: point, shape, dtype, bytes_per_sample, bytes. ``store_bytes``: the whole
    store (on disk, or in memory without ``store=``); ``collect_bytes``: the buffers a disk collect
    holds at once (one shard of every point), what its memory grows by beside the model.
    """

    table: pd.DataFrame
    n: int
    shard_rows: int

    @property
    def bytes_per_sample(self) -> int:
        return int(self.table["bytes_per_sample"].sum())

    @property
    def store_bytes(self) -> int:
        return self.n * self.bytes_per_sample

    @property
    def collect_bytes(self) -> int:
        return min(self.n, self.shard_rows) * self.bytes_per_sample

    def summary(self) -> str:
        return (f"{len(self.table)} points, {_size(self.bytes_per_sample)} per sample: "
                f"{_size(self.store_bytes)} for {self.n:,} samples; a disk collect holds {_size(self.collect_bytes)} "
                f"at once ({min(self.n, self.shard_rows):,}-sample shards)")


def _size(b: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if b < 1000 or unit == "TB":
            return f"{b:,.0f} {unit}" if unit == "B" else f"{b:,.1f} {unit}"
        b /= 1000
    return f"{b} B"


def synthetic_inputs(model: Model, text_tokens: int = 32, image_tokens: int = 16) -> dict[str, torch.Tensor]:
    """One sample's token ids: ``image_tokens`` image placeholders after one text token, then text.

    Enough for the position code of a decoder-only model whose image tokens are marked by the
    config's image token id; for anything else pass real inputs (``model.prepare([image], [prompt])``).
    """
    if model.image_token_id is None:
        raise InputError(f"{model.family} model has no image token id in its config, so probekit cannot lay out "
                         "its token sequence by itself", fix="pass inputs=model.prepare([image], [prompt])")
    ids = torch.full((1, text_tokens + image_tokens), 1, dtype=torch.long)
    ids[0, 1:1 + image_tokens] = model.image_token_id
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def store_layout(
    model: Model,
    n: int,
    points: str | Sequence[str] = "lm.*.resid",
    positions: Position | Sequence[Position] = "last",
    *,
    inputs: Mapping[str, Any] | None = None,
    vision_tokens: int | None = None,
    store_dtype: torch.dtype | None = None,
    logits_topk: int | None = None,
    shard_size: int = 1024,
    batch_size: int = 8,
) -> StoreLayout:
    """What ``collect(model, images, points=..., positions=...)`` of ``n`` samples will store, without a forward.

    Args:
        model: a :class:`probekit.Model`; its weights may be on the meta device.
        n: number of samples.
        points, positions, store_dtype, logits_topk, shard_size, batch_size: as in :func:`probekit.collect`.
        inputs: one batch of processor inputs, for the token positions (``model.prepare(...)``); by
            default :func:`synthetic_inputs` (one image block of 16 tokens and 32 text tokens).
        vision_tokens: patches per image, needed only when vision-side points are recorded at
            ``"image"`` (every patch).

    Example:
        >>> import probekit, tempfile
        >>> m = probekit.load(probekit.tiny.build("llava", tempfile.mkdtemp() + "/m"))
        >>> plan = store_layout(m, 1000, "lm.*.resid", ("last", "image_mean"))
        >>> plan.table["shape"].tolist()
        [[2, 64], [2, 64]]
        >>> plan.store_bytes  # 1000 samples x 2 points x 2 positions x 64 float32
        1024000
    """
    n = check_int(n, "n", low=1, fix="pass the number of images, e.g. n=10_000")
    names = model.resolve(points)
    pos_list, many = normalize_positions(positions)
    inputs = dict(inputs) if inputs is not None else synthetic_inputs(model)
    ctxs = {side: PositionContext.from_inputs(ids, image) for side, (ids, image) in model.sequences(inputs).items()}
    first = next(iter(inputs.values()))
    batch = int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() else 1
    for side in ctxs:  # the answer positions are laid out as if a one-token answer was forced
        ctxs[side].answer_len = torch.ones(batch, dtype=torch.long)
    sides = sorted({model.target(p).side for p in names} - {"vision"})
    for side in sides:
        check_sequence(model, side, ctxs, [p for p in names if model.target(p).side == side],
                       [p for p in pos_list if not callable(p)])
    reduce = reducer(model, pos_list, many, ctxs, inputs, batch)
    dtype = store_dtype or model.dtype
    rows = []
    for p in names:
        side = model.target(p).side
        width = model.point_width(p)
        if width is None:
            raise InputError(f"the width of {p} is not known before a forward pass",
                             fix="collect a few images and read store.point_info instead")
        if side == "vision":
            if "image" in pos_list and vision_tokens is None:
                raise PositionError(f"{p} at position 'image' stores every patch, and the plan does not know how many",
                                    fix="pass vision_tokens= (patches per image), or plan with 'image_mean'")
            k = vision_tokens if "image" in pos_list else None
        else:  # collect's own reduction, on a one-feature stand-in of the activation
            seq = ctxs[side].attention_mask.shape[1]
            t = reduce(p, torch.zeros(batch, seq, 1))
            k = int(t.shape[1]) if t.dim() == 3 else None
        shape = [w for w in (k, width) if w is not None]
        if p == "logits" and logits_topk is not None:
            top = [w for w in (k, min(logits_topk, width)) if w is not None]
            rows += [(_TOP[0], top, torch.float32), (_TOP[1], top, torch.int64)]
        else:
            rows.append((p, shape, dtype))
    table = pd.DataFrame([{"point": p, "shape": s, "dtype": str(d).replace("torch.", ""),
                           "bytes_per_sample": _numel(s) * d.itemsize} for p, s, d in rows])
    table["bytes"] = table["bytes_per_sample"] * n
    return StoreLayout(table, n, -(-shard_size // batch_size) * batch_size)


def _numel(shape: Sequence[int]) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out

