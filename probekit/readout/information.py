"""Mutual information between activations and labels, in bits.

The main estimator is the held-out probe bound (Pimentel et al. 2020, "Information-
theoretic probing for linguistic structure"; Xu et al. 2020, "A theory of usable
information", V-information)::

    I(X; Y) >= H(Y) - CE(probe)

where CE is the probe's mean cross-entropy on samples it was not trained on. Any probe
gives a valid LOWER bound (a better probe gives a tighter one); a linear probe measures
the linearly decodable part. The held-out estimate is biased downward (the probe's own
estimation error); the same number on permuted labels (``mi_perm_bits``) shows that floor,
and ``control_mi_bits`` the Hewitt & Liang (2019) control task. No sample-based lower bound
can certify more than O(log n) bits (McAllester & Stratos 2020), so large values need many
samples; with labels of entropy H(Y) the bound is also capped at H(Y).

``ksg_mi`` is an independent k-nearest-neighbour estimate (Ross 2014, continuous X,
discrete Y) for low-dimensional cross-checks.

This module holds only that maths (entropies, log-probabilities, the held-out calibration,
the k-NN estimate). The table that applies it per hook point is :mod:`probekit.readout.table`
(``readout_table``, ``COLUMNS``); :func:`~probekit.readout.layers.mutual_information` lives in
:mod:`probekit.readout.layers`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.special import digamma

from ..errors import InputError
from ._data import encode_labels

__all__ = ["ksg_mi", "entropy_bits", "log_probs", "calibrate_heldout", "pca_scores"]

LN2 = math.log(2.0)


def entropy_bits(counts: np.ndarray) -> np.ndarray:
    """Plug-in entropy in bits of class counts [..., K]."""
    counts = np.asarray(counts, dtype=np.float64)
    p = counts / counts.sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
    return terms.sum(-1)


def log_probs(logits: np.ndarray) -> np.ndarray:
    """Natural-log class probabilities [n, K] from logits [n, 1] (sigmoid) or [n, K]."""
    if logits.shape[-1] == 1:
        z = logits[..., 0]
        return np.stack([-np.logaddexp(0, z), -np.logaddexp(0, -z)], -1)
    return logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)


def _fold_priors(tasks: np.ndarray, folds: np.ndarray, Kp: int) -> np.ndarray:
    """Log-prior logits [T, n, K'] of the training rows of each sample's fold."""
    T, n = tasks.shape
    cv, K = int(folds.max()) + 1, int(tasks.max()) + 1
    out = np.zeros((T, n, Kp))
    for t in range(T):
        for f in range(cv):
            counts = np.bincount(tasks[t][folds != f], minlength=K) + 0.5  # +0.5: no log(0)
            logp = np.log(counts / counts.sum())
            out[t, folds == f] = logp[1] - logp[0] if Kp == 1 else logp
    return out


def calibrate_heldout(Z: np.ndarray, tasks: np.ndarray, folds: np.ndarray, iters: int = 50):
    """Shrink each fold's held-out logits towards its training prior; returns (Z', beta).

    An L2 probe with d close to n is overconfident off its training set, and the bound
    H(Y) - CE then drops far below what the probe knows (even below zero). The calibrated
    prediction of fold f's probe is ``prior_f + beta_f * (z - prior_f)``: beta = 1 is the
    probe, beta = 0 the class prior of its training rows (so the calibrated bound is never
    much below 0), other values temperature scaling (Guo et al. 2017) around the prior.
    ``beta_f`` is chosen on the held-out predictions of the OTHER folds (cross-fitting), so
    no sample's label sets the scaling of its own prediction: still a held-out bound.
    Cross-entropy is convex in beta: projected Newton on [0, 50], safeguarded (a step that
    leaves the bracket of the minimum bisects it instead), to 1e-8. Z: [P, T, n, K'], beta: [P, T, cv].
    """
    P, T, n, Kp = Z.shape
    cv = int(folds.max()) + 1
    prior = _fold_priors(tasks, folds, Kp)[None]  # [1, T, n, K']
    delta = Z - prior
    others = (folds[None, :] != np.arange(cv)[:, None]).astype(np.float64)  # [cv, n]
    if Kp > 1:
        onehot = np.eye(Kp)[tasks][None, :, None]  # [1, T, 1, n, K]

    def slopes(beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # d/dbeta, d2/dbeta2 of CE
        z = prior[:, :, None] + beta[..., None, None] * delta[:, :, None]  # [P, T, cv, n, K']
        dz = delta[:, :, None]
        if Kp == 1:
            p = 0.5 * (1.0 + np.tanh(0.5 * z[..., 0]))  # sigmoid without overflow warnings
            g = (p - (tasks[None, :, None] == 1)) * dz[..., 0]
            h = p * (1.0 - p) * dz[..., 0] ** 2
        else:
            e = np.exp(z - z.max(-1, keepdims=True))
            p = e / e.sum(-1, keepdims=True)
            mean = (p * dz).sum(-1)
            g = ((p - onehot) * dz).sum(-1)
            h = (p * dz**2).sum(-1) - mean**2
        return np.einsum("ptfn,fn->ptf", g, others), np.einsum("ptfn,fn->ptf", h, others)

    lo, hi = np.zeros((P, T, cv)), np.full((P, T, cv), 50.0)
    beta = np.ones((P, T, cv))
    for _ in range(iters):
        g, h = slopes(beta)
        lo, hi = np.where(g < 0, beta, lo), np.where(g > 0, beta, hi)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = np.clip(np.where(h > 0, beta - g / h, np.nan), 0.0, 50.0)  # projected on [0, 50]
        inside = (step >= lo) & (step <= hi)
        new = np.where(inside, step, 0.5 * (lo + hi))
        new = np.where(g == 0, beta, new)
        settled = np.abs(new - beta).max() <= 1e-8
        beta = new
        if settled:
            break
    per_sample = np.take_along_axis(beta, np.broadcast_to(folds, (P, T, n)), 2)[..., None]
    return prior + per_sample * delta, beta


# ---------------------------------------------------------------- k-NN estimator


def ksg_mi(x: Any, y: Any, k: int = 3, seed: int = 0) -> float:
    """Mutual information in bits between continuous ``x`` [n] or [n, m] and discrete ``y``.

    Ross (2014), "Mutual information between discrete and continuous data sets" (the
    KSG idea for a discrete label): for each sample, the distance to its k-th neighbour
    among samples of its own class sets a radius; counting all samples inside it gives
    ``I = psi(n) - <psi(n_y)> + psi(k) - <psi(m)>`` (nats, converted to bits). Max-norm,
    each dimension scaled to unit variance, tiny seeded jitter to break ties. Classes with a
    single sample are left out. Nearly unbiased in low dimension; in high dimension it
    underestimates, so use it on a few dimensions (a probe score, top PCA components).

    Example:
        >>> import numpy as np
        >>> y = np.arange(4000) % 2
        >>> x = np.random.default_rng(0).normal(size=4000) + 4 * y
        >>> round(ksg_mi(x, y), 1)
        0.9
    """
    x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    codes, _ = encode_labels(y, len(x))
    if not np.isfinite(x).all():
        raise InputError("x contains NaN or inf", fix="drop or fix those samples")
    sd = x.std(0)
    x = (x - x.mean(0)) / np.where(sd > 0, sd, 1.0)
    x = x + 1e-10 * np.random.default_rng(seed).standard_normal(x.shape)
    counts = np.bincount(codes)
    keep = counts[codes] > 1
    x, codes = x[keep], codes[keep]
    n = len(x)
    radius = np.empty(n)
    k_used = np.empty(n)
    for c in np.unique(codes):
        idx = np.flatnonzero(codes == c)
        kc = min(k, len(idx) - 1)
        dist, _ = cKDTree(x[idx]).query(x[idx], k=kc + 1, p=np.inf)
        radius[idx] = np.nextafter(dist[:, -1], 0)  # strictly inside: the k-th is counted below
        k_used[idx] = kc
    m = cKDTree(x).query_ball_point(x, radius, p=np.inf, return_length=True)  # self included
    mi = digamma(n) + digamma(k_used).mean() - digamma(counts[codes]).mean() - digamma(m).mean()
    return float(mi / LN2)


def pca_scores(x: torch.Tensor, n_components: int) -> np.ndarray:
    """Top principal-component scores [n, c] (labels unused, so no leakage across folds)."""
    xc = x.double() - x.double().mean(0)
    _, _, V = torch.linalg.svd(xc, full_matrices=False)
    return (xc @ V[:n_components].T).cpu().numpy()


