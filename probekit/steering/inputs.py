"""What steering accepts as numbers: activations, vectors and labels, checked and coerced in one place.

Every tensor a user hands to steering (activations to fit on, vectors to wrap, a steering
vector) goes through :func:`_coerce`: detached, on the CPU, floating, finite, of an allowed
rank. Fitting maths runs in float64 (``dtype=torch.float64``, the default); LEACE passes
``dtype=None`` to keep the stored dtype and casts row chunks as it streams them, so a large
float32 store is never copied whole to float64.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..data.labels import check_label_types
from ..errors import InputError, LabelError, UnknownPointError, plain

__all__ = ["ANY", "Activations", "as_activations", "labels_digest"]

ANY = "*"  # the key of a basis shared by every point


def _coerce(x: Any, what: str, *, ndim: Sequence[int] = (2, 3), dtype: torch.dtype | None = torch.float64,
            floating: bool = True, fix: str = "pass floating tensors [n, d] or [n, positions, d]") -> Tensor:
    """``x`` as a detached CPU tensor in ``dtype`` (None: its own dtype), or InputError naming ``what``.

    ``ndim`` lists the ranks allowed; ``floating`` refuses integer tensors (activations are
    never integers; a vector of ints is a fine direction).
    """
    try:
        t = torch.as_tensor(x).detach()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{what} is a {type(x).__name__}, not numbers ({exc})", fix=fix) from None
    if t.ndim not in tuple(ndim) or (floating and not t.is_floating_point()) or t.is_complex() or t.dtype == torch.bool:
        raise InputError(f"{what}: shape {tuple(t.shape)}, dtype {t.dtype}", fix=fix)
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{what} contains NaN or inf", fix="drop those samples" if floating else fix)
    return t.to("cpu", dtype) if dtype is not None else t.cpu()


class Activations(Mapping):
    """``{point: Tensor}`` over a store, read and coerced (:func:`_coerce`) when a fitter asks for a
    point, so fitting a direction on a store on disk holds one point at a time, never the store."""

    def __init__(self, store: Any, points: Sequence[str], dtype: torch.dtype | None):
        self._store, self._points, self._dtype = store, list(points), dtype

    def __getitem__(self, point: str) -> Tensor:
        if point not in self._points:
            raise UnknownPointError(f"activations have no point {point!r}", fix=f"available: {self._points}")
        return _coerce(self._store[point], f"activations at {point!r}", dtype=self._dtype)

    def __iter__(self) -> Iterator[str]:
        return iter(self._points)

    def __len__(self) -> int:
        return len(self._points)


def as_activations(acts: Any, points: str | Sequence[str] | None,
                   dtype: torch.dtype | None = torch.float64) -> tuple[Activations, dict]:
    """``({point: Tensor}, meta)`` from anything :func:`~probekit.hooks.coerce.as_store` reads, or a bare
    tensor (key ``"*"``); each point is read and coerced only when the fitter gets to it.

    Only the points asked for are read. ``meta`` carries what a direction records of its
    fitting data: the model, the positions and, for a store made by :func:`probekit.collect`,
    ``fit_images`` (the images' content hashes). ``dtype`` float64 (the default) is what the
    means, probe and PCA fitters solve in: a direction is an orthonormalised float64 basis, and
    class means or an SVD accumulated in float32 over many rows would lose the digits the
    orthogonalisation and the tests (1e-10) rely on; LEACE passes None and streams chunks.
    """
    # imported here: importing a Direction (a value) loads nothing of the hooks package
    from ..hooks.coerce import as_store

    wanted = None if points is None else ([points] if isinstance(points, str) else list(points))
    if isinstance(acts, (Tensor, np.ndarray)):
        acts = {ANY: acts}  # one tensor is one direction shared by every point, whatever its rank
    elif isinstance(acts, Mapping):  # steering also takes nested lists of numbers; as_store wants tensors
        acts = {p: v if isinstance(v, (Tensor, np.ndarray)) else _coerce(v, f"activations at {p!r}", dtype=None)
                for p, v in acts.items()}
    try:
        store = as_store(acts)
    except InputError as exc:
        if not isinstance(acts, Mapping) and "cannot read activations" in exc.problem:
            raise InputError(
                f"activations are a {type(acts).__name__}",
                fix="pass an ActivationStore from probekit.collect, a {point: Tensor[n, d]} dict, or a Tensor[n, d]",
            ) from None
        raise
    available = list(store.points)
    store_meta = dict(store.meta or {})
    meta = ({"model": store_meta.get("model"), "positions": store_meta.get("positions")}
            if "positions" in store_meta else store_meta)
    if store_meta.get("image_hashes") is not None:  # the store's rows are these images: fitted on them
        meta["fit_images"] = list(store_meta["image_hashes"])
    if not available:
        raise InputError("no activations given", fix="collect at least one point")
    if wanted is not None:
        missing = [p for p in wanted if p not in available]
        if missing:
            raise UnknownPointError(f"activations have no point(s) {missing}", fix=f"available: {available}")
    return Activations(store, wanted or available, dtype), meta


def labels_digest(labels: Any) -> str:
    """A short hash of a label sequence (recorded with a direction; equal labels, equal hash)."""
    if isinstance(labels, Tensor):
        labels = labels.detach().cpu().numpy()
    return hashlib.sha256(json.dumps([str(v) for v in np.asarray(labels).ravel()]).encode()).hexdigest()[:16]


def codes(labels: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes 0..K-1 in sorted class order (the last class is the 'positive' one), and the classes."""
    check_label_types(labels)
    if isinstance(labels, Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1 or len(arr) != n:
        raise LabelError(f"got labels of shape {arr.shape} for {n} samples", fix="pass one label per sample")
    if arr.dtype == object and any(v is None for v in arr):
        raise LabelError("labels contain None", fix="drop those samples or give them a label")
    try:
        classes, idx = np.unique(arr, return_inverse=True)
    except TypeError as exc:  # mixed types such as 1 and "a"
        raise LabelError(f"labels mix types that cannot be compared ({exc})",
                         fix="use labels of one type: all strings or all integers") from None
    if len(classes) < 2:
        raise LabelError(f"labels have a single class ({plain(classes[0])!r})",
                         fix="include samples of at least two classes")
    return idx.astype(np.int64), classes


def rows(x: Tensor, labels: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
    """Flatten ``[n, p, d]`` to rows (a view); returns (X [m, d], codes [m], position index [m])."""
    n = x.shape[0]
    c = torch.as_tensor(labels)
    if x.ndim == 2:
        return x, c, torch.zeros(n, dtype=torch.long)
    p = x.shape[1]
    return x.reshape(n * p, x.shape[2]), c.repeat_interleave(p), torch.arange(p).repeat(n)
