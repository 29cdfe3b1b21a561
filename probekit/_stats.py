"""Statistics shared by every layer: intervals, bootstraps, p-values from intervals, Holm.

One home, so that "95% CI" means the same interval in the readout, the steering evaluation,
the experiments and the organisms. Numpy and scipy only; nothing here knows about models.

- :data:`Z95`: the two-sided 95% normal quantile (``scipy.stats.norm.ppf(0.975)``).
- :func:`wilson`: Wilson score interval of a proportion (scalar or vectorised).
- :func:`bootstrap_mean`: mean and percentile-bootstrap CI (``scipy.stats.bootstrap``).
- :func:`cluster_bootstrap`: percentile CIs of ratios of per-unit sums, resampling whole units
  (samples or groups), many statistics on the same resamples; hand-written, as scipy resamples
  observations, not clusters.
- :func:`p_from_ci`, :func:`p_difference_from_ci`: normal-approximation p-values read off a
  95% interval (se = width / (2 * Z95)).
- :func:`holm`: Holm's step-down adjustment.
- :func:`permutations`: label permutations that respect groups (whole groups trade labels).
- :func:`permutation_p`, :func:`maxt_adjust`: permutation p-values and Westfall-Young step-down
  maxT adjustment over a family of tests sharing one set of permutations (the verdict).
- :func:`min_detectable_accuracy`: the accuracy a family-wise test at that n, group count and
  family size detects with 80% power (the power shown beside every "nothing detected").
- :func:`t_interval`, :func:`t_half_width`: Student-t intervals of a mean over a few independent
  replicates (seeds), scalar and vectorised.
- :func:`bootstrap_indices`, :func:`unit_resample`, :func:`unit_weights`, :func:`percentile_interval`:
  the resampling every hand-written bootstrap uses (samples; whole units within each stratum, as indices
  or as multiplicities) and its percentile interval.
- :func:`z_power`, :func:`min_detectable_z_effect`: power and minimal detectable effect of a one-sided
  z-test with a known standard error.
- :func:`sign_flip_null`, :func:`min_detectable_shift`: paired designs (one difference per unit, e.g.
  per name pair): the permutation statistics of a two-sided sign-flip test of the mean difference, every
  row on the same flips (the verdict's ``perm_null``), and the mean shift it detects with 80% power.

Example:
    >>> lo, hi = wilson(8, 10)
    >>> round(lo, 4), round(hi, 4)
    (0.4902, 0.9433)
    >>> holm([0.01, 0.04, 0.03, 0.5]).round(2).tolist()
    [0.04, 0.09, 0.09, 0.5]
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["Z95", "wilson", "bootstrap_mean", "cluster_bootstrap", "p_from_ci", "p_difference_from_ci", "holm",
           "permutations", "permutation_p", "maxt_adjust", "min_detectable_accuracy", "sign_flip_null",
           "min_detectable_shift", "t_interval", "t_half_width", "bootstrap_indices", "unit_resample", "unit_weights",
           "percentile_interval", "z_power", "min_detectable_z_effect"]

Z95 = 1.959963984540054  # scipy.stats.norm.ppf(0.975), spelled out so importing costs nothing

# scipy >= 1.15 takes the generator as ``rng``; older releases (setup.cfg allows 1.10) as ``random_state``.
_RNG_KW = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"


def wilson(k: Any, n: Any, z: float = Z95) -> tuple[Any, Any]:
    """Wilson score interval for ``k`` successes out of ``n`` (Wilson 1927).

    Scalars give a pair of floats, arrays a pair of arrays (``k`` and ``n`` broadcast). ``n = 0``
    gives NaN. Unlike the normal interval it stays inside [0, 1] and keeps its coverage near
    0 and 1; the ends are clipped to [0, 1] against rounding, and are exactly 0 at ``k = 0``
    and 1 at ``k = n``.
    """
    k_arr, n_arr = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k_arr / n_arr
        den = 1 + z * z / n_arr
        centre = (p + z * z / (2 * n_arr)) / den
        half = z * np.sqrt(p * (1 - p) / n_arr + z * z / (4 * n_arr * n_arr)) / den
    # At k = 0 (k = n) the lower (upper) end is exactly 0 (1); rounding would leave ~1e-17.
    lo = np.where(k_arr == 0, 0.0, np.clip(centre - half, 0.0, 1.0))
    hi = np.where(k_arr == n_arr, 1.0, np.clip(centre + half, 0.0, 1.0))
    lo, hi = np.where(np.isnan(p), np.nan, lo), np.where(np.isnan(p), np.nan, hi)
    if lo.ndim == 0:
        return float(lo), float(hi)
    return lo, hi


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


def p_from_ci(value: Any, lo: Any, hi: Any, chance: Any = 0.0, *, min_se: float | None = None) -> Any:
    """One-sided p-value that ``value > chance``, reading [lo, hi] as a normal 95% interval.

    ``se = (hi - lo) / (2 * Z95)``. A zero-width interval gives NaN (no information), unless
    ``min_se`` floors the standard error. Scalars give a float, arrays an array.
    """
    value, lo, hi, chance = (np.asarray(a, dtype=np.float64) for a in (value, lo, hi, chance))
    se = (hi - lo) / (2 * Z95)
    if min_se is not None:
        se = np.maximum(se, min_se)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (value - chance) / np.where(se > 0, se, np.nan)
    p = stats.norm.sf(z)
    return float(p) if np.ndim(p) == 0 else p


def p_difference_from_ci(diff: Any, lo: Any, hi: Any) -> np.ndarray:
    """Two-sided normal p-values that a difference is 0, from its estimate and 95% CI.

    A zero-width interval gives 0 for a non-zero difference and 1 for a zero one; NaN inputs NaN.
    """
    diff, lo, hi = (np.asarray(a, dtype=np.float64) for a in (diff, lo, hi))
    se = (hi - lo) / (2 * Z95)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(diff) / se
    z = np.where(se > 0, z, np.where(diff != 0, np.inf, 0.0))
    return np.where(np.isfinite(diff) & np.isfinite(se), 2 * stats.norm.sf(z), np.nan)


def holm(p: Any) -> np.ndarray:
    """Holm-adjusted p-values (Holm 1979); NaN stays NaN and does not count as a test.

    Keeps the family-wise error rate whatever the dependence between the tests (layers of one
    model are strongly dependent).
    """
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out


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


def _upper(level: float) -> float:
    """The upper quantile of a two-sided ``level`` interval; 0.975 exactly at 0.95."""
    return 0.5 + level / 2


def _lower(level: float) -> float:
    """The lower quantile; 0.025 exactly at 0.95 (``1 - 0.975`` is 0.025000000000000022)."""
    return round(0.5 - level / 2, 12)


def t_half_width(sd: Any, n: Any, level: float = 0.95) -> Any:
    """Half-width of the Student-t interval of a mean: ``t(level, n - 1) * sd / sqrt(n)``, vectorised;
    ``n`` below 2 uses one degree of freedom (callers mark such rows themselves).

    >>> round(float(t_half_width(1.0, 4)), 4)
    1.5912
    """
    n = np.asarray(n, dtype=np.float64)
    return stats.t.ppf(_upper(level), np.maximum(n - 1, 1)) * np.asarray(sd, dtype=np.float64) / np.sqrt(n)


def t_interval(x: Any, level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, lo, hi)`` over independent replicates (e.g. seeds): the Student-t interval; NaN bounds
    below two values.

    >>> [round(v, 3) for v in t_interval([0.6, 0.7, 0.8])]
    [0.7, 0.452, 0.948]
    """
    x = np.asarray(x, dtype=np.float64)
    m = float(x.mean())
    if len(x) < 2:
        return m, math.nan, math.nan
    h = float(stats.t.ppf(_upper(level), len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return m, m - h, m + h


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


def percentile_interval(boots: Any, level: float = 0.95, axis: int | None = None, nan: bool = False
                        ) -> tuple[Any, Any]:
    """``(lo, hi)``: the percentile interval of bootstrap statistics (``numpy.quantile``, linear);
    ``nan=True`` ignores resamples whose statistic is undefined (NaN).

    >>> percentile_interval(np.arange(101.0))
    (2.5, 97.5)
    """
    b = np.asarray(boots, dtype=np.float64)
    lo, hi = (np.nanquantile if nan else np.quantile)(b, [_lower(level), _upper(level)], axis=axis)
    return (float(lo), float(hi)) if np.ndim(lo) == 0 else (lo, hi)


def z_power(effect: float, se: float, alpha: float) -> float:
    """Power of a one-sided z-test at level ``alpha`` to detect a true ``effect`` with standard error ``se``.

    >>> round(z_power(0.25, 0.1, 0.05), 3)
    0.804
    """
    return float(stats.norm.sf(stats.norm.isf(alpha) - effect / se)) if se > 0 else float(effect > 0)


def min_detectable_z_effect(se: float, alpha: float, power: float = 0.8) -> float:
    """The smallest true effect a one-sided z-test at ``alpha`` detects with probability ``power``.

    >>> round(min_detectable_z_effect(0.1, 0.05), 3)
    0.249
    """
    return float((stats.norm.isf(alpha) + stats.norm.isf(1 - power)) * se)
