"""Inputs for the readout: activations, labels, groups and cross-validation folds.

Everything here is cheap and runs before any fitting, so bad inputs fail fast with a
:mod:`probekit.errors` message that names the problem and the fix.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ..data.labels import check_label_types, encode_labels  # noqa: F401 (read here by the readouts)
from ..errors import InputError, LabelError, check_int
from ..hooks.coerce import as_store
from ..hooks.points import Point

__all__ = [
    "Unit",
    "encode_labels",
    "encode_groups",
    "make_folds",
    "iter_units",
    "parse_layer",
    "parse_kind",
    "plan_chunks",
]

@dataclass
class Unit:
    """One probed activation matrix: a hook point at one position."""

    point: str
    position: str | None
    load: Callable[[], Tensor]  # -> (n, d)
    width: int | None = None  # d, when known without loading (a store's index)


def parse_layer(name: str) -> float:
    """Layer index from a hook-point name (``"lm.3.resid"`` -> 3.0), else NaN."""
    return float("nan") if (layer := Point.parse(name).layer) is None else float(layer)


def parse_kind(name: str) -> str:
    """Kind of a hook point: resid/attn/mlp/xattn/embed/norm/vision/projector/logits/..."""
    return "vision" if (point := Point.parse(name)).side == "vision" else point.kind


def encode_groups(groups: Any, n: int) -> np.ndarray | None:
    """Group codes 0..G-1 (samples sharing a source), or None."""
    if groups is None:
        return None
    if isinstance(groups, Tensor):
        groups = groups.detach().cpu().numpy()
    arr = np.asarray(groups)
    if arr.ndim != 1 or len(arr) != n:
        raise LabelError(
            f"got groups of shape {arr.shape} for {n} samples",
            fix="pass one group id per sample (e.g. the watermark string each image carries)",
        )
    return np.unique(arr, return_inverse=True)[1].astype(np.int64)


def make_folds(codes: np.ndarray, groups: np.ndarray | None = None, cv: int = 5, seed: int = 0) -> np.ndarray:
    """Test-fold index (0..cv-1) of every sample; each sample is held out exactly once.

    Stratified and shuffled; with ``groups`` no group is split between train and test
    (``StratifiedGroupKFold``). Raises :class:`LabelError` when the folds cannot work.

    >>> make_folds(np.array([0, 1] * 5), cv=5).tolist().count(0)
    2
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    check_int(cv, "cv", low=2, fix="use cv=5")
    n = len(codes)
    counts = np.bincount(codes)
    if groups is None:
        if cv > counts.min():
            raise LabelError(
                f"cv={cv} folds but the smallest class has only {counts.min()} samples",
                fix=f"use cv<={counts.min()} or collect more samples of that class",
            )
        splitter = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(n), codes)
    else:
        n_groups = int(groups.max()) + 1
        if n_groups < cv:
            raise LabelError(
                f"cv={cv} folds but only {n_groups} distinct groups",
                fix=f"use cv<={n_groups} (each fold needs whole groups) or add groups",
            )
        splitter = StratifiedGroupKFold(n_splits=cv, shuffle=True, random_state=seed)
        with warnings.catch_warnings():  # we check the outcome ourselves below
            warnings.simplefilter("ignore", UserWarning)
            splits = list(splitter.split(np.zeros(n), codes, groups))
    fold = np.full(n, -1, dtype=np.int64)
    for f, (_, test) in enumerate(splits):
        fold[test] = f
    for f in range(cv):
        train = fold != f
        if not (fold == f).any():
            raise LabelError(f"fold {f} has no samples", fix="use fewer folds (cv) or more groups")
        missing = np.flatnonzero(np.bincount(codes[train], minlength=len(counts)) == 0)
        if len(missing):
            raise LabelError(
                f"fold {f} trains without class code(s) {missing.tolist()}: those samples sit "
                "in too few groups",
                fix="use fewer folds (cv) or spread each class over at least cv groups",
            )
    return fold


def _check(name: str, x: Tensor, n: int | None) -> Tensor:
    """Validate one (n, d) matrix: floating, finite, right number of rows."""
    if x.ndim != 2:
        raise InputError(f"activations for {name!r} have shape {tuple(x.shape)}", fix="use [n, d]")
    if not x.is_floating_point():
        x = x.float()
    if n is not None and x.shape[0] != n:
        raise InputError(
            f"point {name!r} has {x.shape[0]} samples, others have {n}",
            fix="record every point on the same samples",
        )
    # A finite sum proves every entry finite (NaN and inf propagate) at a fraction of the
    # cost of an elementwise isfinite mask; only a non-finite sum needs the full check.
    if bool(torch.isfinite(x.sum())):
        return x
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        rows = bad.any(1).nonzero().squeeze(1)[:5].tolist()
        raise InputError(
            f"activations at point {name!r} contain NaN or inf (samples {rows}...)",
            fix="check the model run for overflow (use float32/bfloat16), or drop those samples",
        )
    return x


def iter_units(acts: Any, positions: Sequence[str] | None = None) -> Iterator[Unit]:
    """Yield every (point, position) matrix of ``acts``, anything :func:`~probekit.hooks.coerce.as_store`
    reads; a unit reads its matrix only when loaded, and only that matrix: one position of a
    ``[n, p, d]`` point is read alone (:meth:`~probekit.hooks.store.ActivationStore.read`: on disk only
    that slice of each shard is kept, in memory a view), so a reader holds no more than the units it
    has loaded and not yet dropped.

    ``positions`` names the positions of a dict's (or a store's) ``[n, p, d]`` points, and the one
    position of an ``[n, d]`` point when it holds a single name; a bare tensor's layers have none.
    """
    from_tensor = isinstance(acts, (Tensor, np.ndarray))
    given = isinstance(acts, Mapping)  # as_store names a dict's positions; a store's are renamed below
    store = as_store(acts, positions=positions if given else None)

    for point in store.points:
        shape = store.info(point)["shape"]
        width = int(shape[-1]) if len(shape) else 1
        names = store.positions(point)
        if positions is not None and not given and not from_tensor:
            names = _renamed(point, shape, positions)
        if len(shape) < 2:  # [n, d]: a store names its one position too
            yield Unit(point, str(names[0]) if len(names) == 1 else None, lambda p=point: store[p], width)
        else:
            for j, name in enumerate(names):
                yield Unit(point, str(name), lambda p=point, j=j: store.read(p, j), width)


def plan_chunks(widths: Sequence[int], n: int, memory_limit: int, itemsize: int = 4) -> list[list[int]]:
    """Consecutive unit indices grouped into the chunks a readout fits at once: one width per chunk
    and at most ``memory_limit`` bytes of ``[n, d]`` float32 matrices (at least one unit, however wide).

    The one planner of the probing step: :func:`~probekit.readout.table.readout_table` fills a chunk's
    ``[P, n, d]`` matrix unit by unit, and :func:`probing_peak_bytes` estimates its memory from it.

    >>> plan_chunks([4, 4, 4, 8], n=10, memory_limit=400)
    [[0, 1], [2], [3]]
    """
    chunks: list[list[int]] = []
    buf: list[int] = []
    width, size = None, 0
    for i, w in enumerate(widths):
        nbytes = int(n) * int(w) * itemsize
        if buf and (w != width or size + nbytes > memory_limit):
            chunks.append(buf)
            buf, size = [], 0
        buf.append(i)
        width, size = w, size + nbytes
    if buf:
        chunks.append(buf)
    return chunks


def _renamed(point: str, shape: Sequence[int], positions: Sequence[str]) -> list[str]:
    """``positions`` as the names of a stored point's positions, checked against its width."""
    if len(shape) >= 2 and len(positions) != shape[0]:
        raise InputError(f"{len(positions)} position names for {shape[0]} positions at point {point!r}",
                         fix="pass one name per position, or positions=None to use indices")
    return [str(p) for p in positions]


def load_unit(unit: Unit, n: int | None, check: bool = True) -> Tensor:
    """The unit's (n, d) matrix, validated unless ``check`` is False (already done)."""
    x = unit.load()
    if not check:
        return x if x.is_floating_point() else x.float()
    label = unit.point if unit.position is None else f"{unit.point}@{unit.position}"
    return _check(label, x, n)
