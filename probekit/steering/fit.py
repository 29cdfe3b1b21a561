"""Fitting directions on activations: difference of means, probe weights, PCA of paired differences, LEACE.

Each fitter takes activations (an ActivationStore, ``{point: Tensor}`` or one Tensor) and
returns :class:`Fitted`, the parts of a :class:`~probekit.steering.Direction` (bases, erasers,
method, metadata); the ``Direction.from_*`` / ``Direction.leace`` constructors wrap them. None
of them runs a model (:mod:`probekit.steering.sequential` does, for LEACE fitted layer by layer).

LEACE is concept-erasure's ``LeaceFitter`` (Belrose et al. 2023), fed row chunks in float64
(its Welford update), with ``constrain_cov_trace=False`` so that the erasure guarantee
(``Cov(x', Z) = 0`` on the fitted data) holds exactly and ``shrinkage`` off by default (on
request its random-matrix shrinkage of the covariance, useful when n is not much larger than
d). With these settings it gives the closed form probekit derived itself before (erased
activations equal to ~1e-13, see tests/test_steering_fit.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from concept_erasure import LeaceFitter
from torch import Tensor

from ..errors import InputError, LabelError
from .basis import Eraser, orthonormal
from .inputs import as_activations, codes, labels_digest, rows

__all__ = ["Fitted", "means", "probe", "pca", "leace", "leace_fit", "concept"]

CHUNK = 8192  # rows per LeaceFitter.update: bounds the float64 copy of a large float32 store


class Fitted(NamedTuple):
    """The parts of a Direction: ``Direction(**fitted._asdict())``."""

    bases: dict[str, Tensor]
    erasers: dict[str, Eraser]
    method: str
    meta: dict


def means(acts: Any, labels: Any, points: str | Sequence[str] | None = None) -> Fitted:
    """Difference of class means per point (see :meth:`probekit.steering.Direction.from_means`)."""
    data, meta = as_activations(acts, points)
    bases, n, classes = {}, None, []
    for p, x in data.items():
        c_np, classes = codes(labels, x.shape[0])
        X, c, _ = rows(x, c_np)
        mus = torch.stack([X[c == k].mean(0) for k in range(len(classes))])
        bases[p] = orthonormal(mus[1:] - mus[0])
        n = x.shape[0]
    return Fitted(bases, {}, "means", {**meta, "n": n, "classes": [str(k) for k in classes],
                                        "fit_labels": labels_digest(labels)})


def probe(acts: Any, labels: Any = None, points: str | Sequence[str] | None = None, C: float = 1.0) -> Fitted:
    """Weights of a logistic-regression probe per point (see :meth:`probekit.steering.Direction.from_probe`)."""
    probes: dict[str, Any] = {}
    meta: dict = {}
    if isinstance(acts, Mapping) and acts and all(hasattr(v, "coef_") for v in acts.values()):
        probes = dict(acts) if points is None else {p: acts[p] for p in ([points] if isinstance(points, str) else points)}
        n = None
    else:
        if labels is None:
            raise LabelError("from_probe needs labels to fit probes", fix="pass labels=..., or fitted probes")
        from ..readout.probes import LinearProbe  # readout is optional for the other fitters

        data, meta = as_activations(acts, points)
        for p, x in data.items():
            c_np, _ = codes(labels, x.shape[0])
            X, c, _ = rows(x, c_np)
            probes[p] = LinearProbe(C=C, dtype="float64").fit(X.numpy(), c.numpy())
            n = x.shape[0]
        meta["fit_labels"] = labels_digest(labels)
    bases = {}
    for p, pr in probes.items():
        w = torch.as_tensor(np.asarray(pr.coef_), dtype=torch.float64)
        if w.ndim == 1:
            w = w[None]
        if w.shape[0] > 1:  # softmax weights are defined up to a shared row; centre them
            w = w - w.mean(0)
        bases[p] = orthonormal(w)
    return Fitted(bases, {}, "probe", {**meta, "n": n, "C": C})


def pca(paired_differences: Any, negatives: Any = None, points: str | Sequence[str] | None = None) -> Fitted:
    """First principal axis of paired differences (see :meth:`probekit.steering.Direction.from_pca`)."""
    data, meta = as_activations(paired_differences, points)
    neg = None
    if negatives is not None:
        neg, neg_meta = as_activations(negatives, list(data))
        if "fit_images" in meta or "fit_images" in neg_meta:  # both halves of the pairs were fitted on
            meta["fit_images"] = list(meta.get("fit_images", [])) + list(neg_meta.get("fit_images", []))
    bases, n = {}, None
    for p, x in data.items():  # one point (and its negatives) in memory at a time
        if neg is not None:
            y = neg[p]
            if y.shape != x.shape:
                raise InputError(f"positives {tuple(x.shape)} and negatives {tuple(y.shape)} at {p!r} differ",
                                 fix="pass paired activations of equal shape")
            x = x - y
        n = x.shape[0]
        X = x.reshape(-1, x.shape[-1])
        # the top right singular vector of the *uncentred* differences: centring would remove the shared shift
        _, _, vh = torch.linalg.svd(X, full_matrices=False)
        v = vh[0]
        if float((X @ v).mean()) < 0:
            v = -v
        bases[p] = v[None]
    return Fitted(bases, {}, "pca", {**meta, "n": n})


def concept(codes_: Tensor, K: int, groups: Tensor | None) -> Tensor:
    """Concept matrix for LEACE: one-hot labels, centred within each group when groups are given.

    Centring within groups makes ``Cov(x', Z) = 0`` mean "equal class means inside every
    group" (e.g. every token position), not "equal to the pooled mean", so position
    information the model needs is left alone.
    """
    onehot = torch.nn.functional.one_hot(codes_, K).to(torch.float64)
    if K == 2:
        onehot = onehot[:, 1:]
    if groups is None or int(groups.max()) == 0:
        return onehot
    cols = []
    for g in range(int(groups.max()) + 1):
        m = groups == g
        z = torch.zeros_like(onehot)
        z[m] = onehot[m] - onehot[m].mean(0)
        cols.append(z)
    return torch.cat(cols, 1)


def leace_fit(X: Tensor, Z: Tensor, tol: float = 1e-6, *, shrinkage: bool = False) -> Eraser:
    """LEACE eraser for data ``X [n, d]`` (any floating dtype) and concept ``Z [n, k]``, in float64.

    ``W = Sigma^{-1/2}`` (pseudo-inverse on the numerical rank), ``U`` an orthonormal basis of
    the column space of ``W Sigma_XZ`` (singular values above ``tol`` kept: whitened, they
    are correlations of unit-variance features with Z and do not scale with X); the eraser
    is ``x - W^+ U U^T W (x - mean)``. After it ``Cov(x', Z) = 0`` on the fitted data, so no
    linear predictor of Z beats a constant one under any convex loss, and it is the smallest
    such edit in mean squared distance (for the sample covariance; with ``shrinkage`` for
    concept-erasure's shrunk estimate of it).
    """
    if not tol > 0:
        raise InputError(f"tol={tol!r}", fix="pass a small positive singular-value threshold, e.g. tol=1e-6")
    n, d = X.shape
    Z = Z.reshape(n, -1)
    fitter = LeaceFitter(d, Z.shape[1], dtype=torch.float64, shrinkage=shrinkage, constrain_cov_trace=False,
                         svd_tol=tol)
    for i in range(0, n, CHUNK):
        fitter.update(X[i:i + CHUNK], Z[i:i + CHUNK])
    e = fitter.eraser
    # LeaceFitter zeroes (does not drop) the directions under tol; keep the rank it found
    keep = e.proj_left.abs().amax(0) > 0
    return Eraser(mean=fitter.mean_x.clone(), left=e.proj_left[:, keep].contiguous(),
                  right=e.proj_right[keep].contiguous())


def leace(acts: Any, labels: Any, points: str | Sequence[str] | None = None, by_position: bool = True,
          tol: float = 1e-6, shrinkage: bool = False) -> Fitted:
    """LEACE eraser per point (see :meth:`probekit.steering.Direction.leace`)."""
    data, meta = as_activations(acts, points, dtype=None)  # streamed to float64 in chunks by leace_fit
    bases, erasers, n, classes = {}, {}, None, []
    for p, x in data.items():
        c_np, classes = codes(labels, x.shape[0])
        X, c, g = rows(x, c_np)
        e = leace_fit(X, concept(c, len(classes), g if by_position else None), tol, shrinkage=shrinkage)
        erasers[p] = e
        bases[p] = orthonormal(e.left.T) if e.left.shape[1] else torch.zeros(1, X.shape[1], dtype=torch.float64)
        n = x.shape[0]
    return Fitted(bases, erasers, "leace",
                  {**meta, "n": n, "classes": [str(k) for k in classes], "by_position": by_position,
                   "fit_labels": labels_digest(labels), **({"shrinkage": True} if shrinkage else {})})
