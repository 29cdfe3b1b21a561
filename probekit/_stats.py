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

__all__ = ["Z95", "wilson", "bootstrap_mean", "cluster_bootstrap", "p_from_ci", "p_difference_from_ci", "holm"]

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
