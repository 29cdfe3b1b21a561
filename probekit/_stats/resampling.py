"""Resampling: the bootstraps (samples, whole units within strata, ratios of unit sums), label permutations that respect groups, sign flips."""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np
from scipy import stats


__all__ = ['bootstrap_mean', 'cluster_bootstrap', 'bootstrap_indices', 'unit_resample', 'unit_weights', 'permutations', 'sign_flip_null']

# scipy >= 1.15 takes the generator as ``rng``; older releases (setup.cfg allows 1.10) as ``random_state``.
_RNG_KW = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"


def bootstrap_mean(x: Any, seed: int = 0, n_boot: int = 1000, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``x`` and its percentile-bootstrap interval (no normal assumption: KL and loss
    differences per sample are skewed).

    ``scipy.stats.bootstrap`` with ``method="percentile"`` and ``numpy.random.default_rng(seed)``;
    an empty ``x`` gives NaNs, a single value an interval of zero width.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) == 1:  # scipy refuses one observation; every resample would be that value
        return mean, mean, mean
    res = stats.bootstrap((x,), np.mean, n_resamples=n_boot, method="percentile", confidence_level=level,
                          vectorized=True, axis=-1, **{_RNG_KW: np.random.default_rng(seed)})
    return mean, float(res.confidence_interval.low), float(res.confidence_interval.high)


def cluster_bootstrap(
    sums: np.ndarray, sizes: np.ndarray, n_boot: int, seed: int, level: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CIs of ``sum_u sums[u] / sum_u sizes[u]`` resampling whole units with replacement.

    ``sums``: [U, S] per-unit totals of S statistics (e.g. correct answers, bits gained),
    ``sizes``: [U] samples per unit. A unit is a sample, or a group of samples sharing a source
    whose answers are not independent. Every statistic sees the same resamples (one seed), so
    differences between them are not blurred by resampling noise. Resample counts are drawn
    in blocks of at most ~2M indices to bound memory. Returns (lo, hi), each [S].
    """
    sums = np.asarray(sums, dtype=np.float64)
    U, S = sums.shape
    table = np.concatenate([sums, np.asarray(sizes, dtype=np.float64).reshape(U, 1)], 1)
    rng = np.random.default_rng(seed)
    block = max(1, min(n_boot, 2_000_000 // U))
    ratios = []
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        idx = rng.integers(0, U, size=(b, U)) + (np.arange(b) * U)[:, None]
        weights = np.bincount(idx.ravel(), minlength=b * U).reshape(b, U).astype(np.float64)
        tot = weights @ table  # [b, S + 1]
        ratios.append(tot[:, :S] / tot[:, S:])
    tail = round(50.0 * (1.0 - level), 12)  # 2.5, not 2.5000000000000022
    lo, hi = np.percentile(np.concatenate(ratios), [tail, 100.0 - tail], axis=0)
    return lo, hi


def bootstrap_indices(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_boot, n]`` sample indices drawn with replacement (the ordinary bootstrap, one row per resample).

    >>> bootstrap_indices(3, 2, np.random.default_rng(0)).shape
    (2, 3)
    """
    return rng.integers(0, n, size=(n_boot, n))


def unit_resample(strata: Any, rng: np.random.Generator) -> np.ndarray:
    """One resample of whole units within each stratum: ``strata`` is a list (e.g. members, non-members)
    of lists of index arrays (one per unit, e.g. a username's images); as many units as the stratum has are
    drawn with replacement and their indices concatenated, stratum after stratum.

    >>> unit_resample([[np.array([0, 1]), np.array([2])]], np.random.default_rng(0)).tolist()
    [2, 2]
    """
    return np.concatenate([units[j] for units in strata for j in rng.integers(0, len(units), len(units))])


def unit_weights(member: np.ndarray, units: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n]`` bootstrap multiplicities: whole units (groups) drawn with replacement within each class
    of the boolean ``member`` (the stratified group bootstrap as weights, for statistics computed once per
    weight row). Draws from ``default_rng([seed, 13])``.
    """
    rng = np.random.default_rng([seed, 13])
    w = np.zeros((n_boot, len(member)))
    for c in (True, False):
        ids = np.unique(units[member == c])
        counts = np.stack([np.bincount(rng.integers(0, len(ids), len(ids)), minlength=len(ids)) for _ in range(n_boot)]) \
            if n_boot else np.zeros((0, len(ids)))
        col = {u: j for j, u in enumerate(ids)}
        idx = np.array([col.get(u, -1) for u in units])
        sel = (member == c) & (idx >= 0)
        w[:, sel] = counts[:, idx[sel]]
    return w


def permutations(codes: np.ndarray, groups: np.ndarray | None, n_perm: int, seed: int) -> np.ndarray:
    """``[n_perm + 1, n]`` indices: row 0 the identity, then label permutations ``codes[idx[b]]``.

    Without groups every permutation of the samples. With groups (samples sharing a source) the
    labels move with their group, as the null hypothesis allows: when each group has one label,
    the groups' labels are permuted among the groups; otherwise a group's labels go, as a block,
    to a group of the same size (in random order inside it), so every group keeps its mix of
    labels. A permutation of groups keeps the dependence between samples of one group, which a
    permutation of samples would break (and with it the test's level).
    """
    n = len(codes)
    rng = np.random.default_rng([seed, 7])
    out = np.empty((n_perm + 1, n), dtype=np.int64)
    out[0] = np.arange(n)
    if groups is None:
        for b in range(1, n_perm + 1):
            out[b] = rng.permutation(n)
        return out
    groups = np.asarray(groups)
    uniq, which = np.unique(groups, return_inverse=True)  # which[i]: the group of sample i
    members = [np.flatnonzero(which == g) for g in range(len(uniq))]
    constant = all(len(np.unique(codes[m])) == 1 for m in members)
    if constant:  # one label per group: group g takes the label of group perm[g]
        first = np.array([m[0] for m in members])
        perms = np.array([rng.permutation(len(members)) for _ in range(n_perm)], dtype=np.int64)
        perms = perms.reshape(n_perm, len(members))
        out[1:] = first[perms][:, which.ravel()]  # the same draws as one loop per permutation, at array speed
        return out
    by_size: dict[int, list[int]] = {}
    for g, m in enumerate(members):
        by_size.setdefault(len(m), []).append(g)
    for b in range(1, n_perm + 1):
        for same in by_size.values():
            perm = rng.permutation(len(same))
            for g, h in zip(same, perm):
                out[b, members[g]] = rng.permutation(members[same[h]])
    return out


def sign_flip_null(diff: Any, n_flip: int = 1000, seed: int = 0) -> np.ndarray:
    """``[M, n_flip + 1]``: ``|mean|`` of each row of paired differences ``diff`` ``[M, U]`` (or ``[U]``) on the
    observed signs (column 0) and on ``n_flip`` random sign flips of the units, the same flips for every row.

    The test of a paired design (a difference per unit, e.g. per name pair, whose sign is exchangeable
    under the null because which member of the pair was "seen" was drawn at random): two-sided, and as the
    verdict's ``perm_null`` it is corrected over the rows by :func:`maxt_adjust`. Units with a NaN in any
    row are left out of every row (the rows stay on the same units).

    >>> null = sign_flip_null([[1.0, 2.0, 3.0, 4.0]], n_flip=99)
    >>> float(null[0, 0]), bool((null[0, 1:] <= 2.5).all())
    (2.5, True)
    """
    d = np.atleast_2d(np.asarray(diff, dtype=np.float64))
    d = d[:, np.isfinite(d).all(0)]
    rng = np.random.default_rng([seed, 11])
    signs = np.ones((n_flip + 1, d.shape[1]))
    signs[1:] = rng.choice((-1.0, 1.0), size=(n_flip, d.shape[1]))
    with np.errstate(invalid="ignore"):
        return np.abs(d @ signs.T) / d.shape[1] if d.shape[1] else np.full((len(d), n_flip + 1), np.nan)
