"""The verdict's arithmetic: permutation p-values, step-down maxT, and the minimal detectable effects shown beside every null."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats


__all__ = ['permutation_p', 'maxt_adjust', 'min_detectable_accuracy', 'min_detectable_shift']

def permutation_p(null: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permutation p-values from ``null`` ``[M, B + 1]`` (column 0 the observed statistic; large = effect).

    Every one of the B + 1 labellings (the observed one included) gets the same p-value, its rank
    from the top among all of them, ties counted against it: ``#{T_j' >= T_j} / (B + 1)``. For the
    observed labelling that is ``(1 + #{T_b >= T_0}) / (B + 1)`` (Phipson & Smyth 2010: never 0, an
    exact level); the permutations' own p-values ``[M, B]``, computed the same way (ties against them too).
    Returns ``(p_obs [M], p_perm [M, B])``; a row with a NaN is not a test (NaN p-values).
    """
    null = np.asarray(null, dtype=np.float64)
    M, B1 = null.shape
    order = np.sort(null, axis=1)
    p_all = np.empty((M, B1))
    for i in range(M):
        p_all[i] = (B1 - np.searchsorted(order[i], null[i], side="left")) / B1
    bad = ~np.isfinite(null).all(1)
    p_all[bad] = np.nan
    return p_all[:, 0], p_all[:, 1:]


def maxt_adjust(null: np.ndarray) -> np.ndarray:
    """Westfall-Young step-down maxT adjusted p-values over a family of ``M`` tests.

    ``null`` ``[M, B + 1]``: each test's statistic on the observed labels (column 0) and on the same
    B permutations of them, so the dependence between tests (layers of one model are strongly
    dependent) is kept. Each row is standardised by the mean and spread of its own B + 1 values
    (the same map for every column, so the columns stay exchangeable), and a row's adjusted p is
    the share of labellings whose largest standardised statistic, over the rows not yet rejected,
    reaches its own (Westfall & Young 1993). The family-wise error rate is held at the nominal
    level whatever the dependence; unlike Holm or min-p on permutation p-values, which need
    ``B >= M / alpha`` permutations before they can reject anything, a row far above every
    permutation gets ``1 / (B + 1)`` whatever the family size. NaN rows are not tests.
    """
    null = np.asarray(null, dtype=np.float64)
    M = null.shape[0]
    out = np.full(M, np.nan)
    ok = np.flatnonzero(np.isfinite(null).all(1)) if M else np.array([], dtype=np.int64)
    if len(ok) == 0:
        return out
    z = null[ok]
    sd = z.std(1, keepdims=True)
    z = (z - z.mean(1, keepdims=True)) / np.where(sd > 0, sd, 1.0)
    obs, perm = z[:, 0], z[:, 1:]
    B = perm.shape[1]
    order = np.argsort(-obs, kind="stable")  # most significant first
    running = np.full(B, -np.inf)
    adj = np.empty(len(order))
    for j in range(len(order) - 1, -1, -1):  # successive maxima over the less significant rows
        running = np.maximum(running, perm[order[j]])
        adj[j] = (1.0 + (running >= obs[order[j]]).sum()) / (B + 1.0)
    adj = np.maximum.accumulate(adj)  # step-down: never below a more significant row's
    res = np.empty(len(ok))
    res[order] = np.minimum(adj, 1.0)
    out[ok] = res
    return out


def min_detectable_accuracy(n_eff: Any, chance: Any, n_tests: Any, alpha: float = 0.05,
                            power: float = 0.8) -> np.ndarray:
    """The smallest held-out accuracy a family-wise test would detect with ``power``.

    A binomial model of ``n_eff`` independent held-out answers (the number of samples, or of
    groups when the samples of a group share their label), tested at ``alpha / n_tests``
    (Bonferroni: the maxT adjustment rejects at least as often when the rows are alike, so the
    figure is on the safe side). Returns an array; 1.0 where even a perfect probe would not be detected, NaN where
    there is no test. Vectorised over all arguments.

    >>> round(float(min_detectable_accuracy(24, 0.5, 14)), 2)  # 12 + 12 names, 14 rows
    0.83
    """
    n_eff, chance, n_tests = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (n_eff, chance, n_tests)))
    out = np.full(n_eff.shape, np.nan)
    grid = np.linspace(0.0, 1.0, 2001)
    done: dict[tuple, float] = {}  # the rows of a table share their design: each one computed once
    for idx in np.ndindex(n_eff.shape):
        n, c, m = n_eff[idx], chance[idx], n_tests[idx]
        if not (np.isfinite(n) and np.isfinite(c) and np.isfinite(m)) or n < 1 or m < 1:
            continue
        key = (int(round(n)), round(float(c), 12), float(m))
        if key not in done:
            done[key] = _mde(key[0], key[1], alpha / key[2], power, grid)
        out[idx] = done[key]
    return out


def _mde(n: int, chance: float, level: float, power: float, grid: np.ndarray) -> float:
    ks = np.arange(n + 1)
    crit = ks[stats.binom.sf(ks - 1, n, chance) <= level]  # counts significant at this level
    if len(crit) == 0:  # none at this n and family size
        return 1.0
    hit = stats.binom.sf(int(crit[0]) - 1, n, grid) >= power
    return float(grid[np.argmax(hit)]) if hit.any() else 1.0


def min_detectable_shift(sd: Any, n: Any, n_tests: Any, alpha: float = 0.05, power: float = 0.8) -> np.ndarray:
    """The mean paired difference a two-sided family-wise test detects with ``power``.

    ``(t(1 - alpha / (2 n_tests)) + t(power)) * sd / sqrt(n)`` with ``n - 1`` degrees of freedom: the
    t-test's power at level ``alpha / n_tests`` (Bonferroni: the maxT adjustment of a family of alike rows
    rejects at least as often), which the sign-flip test of :func:`sign_flip_null` matches in large samples.
    ``sd``: the spread of the unit differences; NaN where ``n < 2``. Vectorised.

    >>> round(float(min_detectable_shift(1.0, 100, 1)), 3)
    0.283
    """
    sd, n, m = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (sd, n, n_tests)))
    with np.errstate(invalid="ignore", divide="ignore"):
        df = np.where(n >= 2, n - 1, np.nan)
        q = stats.t.ppf(1 - alpha / (2 * m), df) + stats.t.ppf(power, df)
        out = q * sd / np.sqrt(n)
    return out
