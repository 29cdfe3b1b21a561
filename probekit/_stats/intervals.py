"""Intervals and tests read off them: Wilson, Student-t, percentile; p-values from intervals; Holm; z power."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

__all__ = ['Z95', 'wilson', 'p_from_ci', 'p_difference_from_ci', 'holm', 't_half_width', 't_interval', 'percentile_interval', 'z_power', 'min_detectable_z_effect']

Z95 = 1.959963984540054  # scipy.stats.norm.ppf(0.975), spelled out so importing costs nothing


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
