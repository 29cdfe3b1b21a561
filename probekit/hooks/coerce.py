"""`as_store`: the one place where what a reader was given becomes an :class:`ActivationStore`.

Readers (probes, the logit lens, the leakage table, steering directions) accept a store, a store
directory, a dict of tensors or a bare tensor; each turns it into a store here and then reads point
by point (or position by position, :meth:`ActivationStore.read`), so a store on disk is never
loaded whole.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from .store import ActivationStore

__all__ = ["as_store"]


def as_store(acts: Any, *, positions: Sequence[str] | None = None, meta: Mapping[str, Any] | None = None
             ) -> ActivationStore:
    """Turn whatever a reader was given into an :class:`ActivationStore`: the one coercion every consumer uses.

    Args:
        acts: an ActivationStore (returned as is); a store directory (opened, read lazily point by
            point); a dict ``{point: Tensor | ndarray}`` of ``[n, d]`` / ``[n, p, d]``; a ``[n, d]``
            tensor (point ``"x"``) or ``[layers, n, d]`` tensor (points ``"layer.0"``, ...); or another
            object with ``points`` and ``store[point]`` (read once, here).
        positions: names along axis 1 of the ``[n, p, d]`` points of a dict or tensor (default
            ``meta["positions"]``, else ``"0"``, ``"1"``, ...); a store names its own.
        meta: metadata of a store made from a dict or tensor.

    Nothing is converted: tensors keep their dtype and device, and a store on disk reads a point
    (or one position of it, :meth:`ActivationStore.read`) only when asked for it.

    Example:
        >>> import torch
        >>> s = as_store({"lm.0.resid": torch.zeros(5, 2, 4)}, positions=["last", "image_mean"])
        >>> s.positions("lm.0.resid"), s.read("lm.0.resid", "last").shape
        (['last', 'image_mean'], torch.Size([5, 4]))
    """
    if isinstance(acts, ActivationStore):
        return acts
    if isinstance(acts, (str, os.PathLike)):
        if not os.path.isdir(acts):  # a stray string is a mistake, not a missing store
            raise InputError(f"cannot read activations from a {type(acts).__name__}: {str(acts)!r} is not a directory",
                             fix="pass an ActivationStore, a store directory (collect(..., store=DIR)), "
                                 "a dict {point: tensor} or a tensor")
        return ActivationStore.open(acts)
    meta = dict(meta or {})
    if positions is not None:
        meta["positions"] = [str(p) for p in positions]
    if isinstance(acts, (torch.Tensor, np.ndarray)):
        x = _tensor("acts", acts)
        if x.dim() == 2:
            acts = {"x": x}
        elif x.dim() == 3:
            acts = {f"layer.{i}": x[i] for i in range(x.shape[0])}
        else:
            raise InputError(f"an activation tensor must be [n, d] or [layers, n, d], got {tuple(x.shape)}",
                             fix="pass a dict {point: tensor} for other layouts")
    elif not isinstance(acts, Mapping):
        if not (hasattr(acts, "points") and hasattr(acts, "__getitem__")):
            raise InputError(f"cannot read activations from a {type(acts).__name__}",
                             fix="pass an ActivationStore, a store directory, a dict {point: tensor} or a tensor")
        names = getattr(acts, "positions", None)
        info = {str(p): {"positions": list(names(p))} for p in acts.points} if callable(names) else {}
        if isinstance(names, (list, tuple)) and "positions" not in meta:  # one list names every point's positions
            meta["positions"] = [str(p) for p in names]
        acts = {str(p): acts[p] for p in list(acts.points)}
        store = as_store(acts, meta=meta)
        for p, extra in info.items():
            store._point_info[p] = {**store.info(p), **extra}
        return store
    tensors, n = {}, None
    for name, x in acts.items():
        if not isinstance(name, str):
            raise InputError(f"point names must be strings, got {name!r}", fix='e.g. {"lm.0.resid": tensor}')
        x = _tensor(name, x)
        if x.dim() not in (2, 3):
            raise InputError(f"activations at {name!r} have shape {tuple(x.shape)}", fix="use [n, d] or [n, positions, d]")
        if n is not None and x.shape[0] != n:
            raise InputError(f"point {name!r} has {x.shape[0]} samples, others have {n}",
                             fix="record every point on the same samples")
        if x.dim() == 3 and positions is not None and len(positions) != x.shape[1]:
            raise InputError(f"{len(positions)} position names for {x.shape[1]} positions at point {name!r}",
                             fix="pass one name per position, or positions=None to use indices")
        n = x.shape[0]
        tensors[name] = x
    return ActivationStore(tensors, meta=meta)


def _tensor(name: str, x: Any) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise InputError(f"activations at {name!r} are a {type(x).__name__}, not a tensor",
                         fix="pass torch tensors or numpy arrays of shape [n, d] or [n, positions, d]")
    return x
