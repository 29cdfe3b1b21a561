"""Which points leak: per-point p-values, Holm's correction over every point tested, a verdict.

A scan tests many hook points and positions at once, so a 95% interval that clears chance
at one of twenty points is what chance alone produces. Each point gets a one-sided p-value
for "held-out accuracy is above chance" (``p_value``); Holm's step-down method (Holm 1979)
adjusts them over all M points of the table (``p_adjusted``), which keeps the chance of
even one false "leaks" at ``alpha`` whatever the dependence between points (layers of one
model are strongly dependent, which rules out methods that assume independence). A point
``leaks`` when ``p_adjusted < alpha`` AND its MI bound exceeds the permuted-label floor
(``mi_bits > mi_perm_bits``, where the table has a floor), so a verdict of "no leakage"
reads: every corrected accuracy test includes chance, or the MI bound is no higher than
what the same estimator gives on permuted labels.

The p-value of a point, with ``k`` of ``n`` held-out predictions correct and ``chance`` the
majority-class rate:

- without groups: the exact binomial tail ``P(Binomial(n, chance) >= k)``. Under
  independence each held-out label is correct with probability at most ``chance`` whatever
  the probe (fitted on other folds) predicts, so the test is exact for balanced classes and
  conservative otherwise;
- with groups (samples sharing a source are not independent): a one-sided t-test on the
  per-group excess ``k_g - chance * n_g`` (G - 1 degrees of freedom), i.e. a cluster-robust
  test whose sample size is the number of groups, as the group bootstrap of the CI is;
- for a table that lacks ``p_value`` (hand-made, or written by an older probekit): a normal
  approximation from the accuracy's 95% CI, ``z = (accuracy - chance) / ((hi - lo) / 3.92)``.

Example:
    >>> import numpy as np
    >>> holm(np.array([0.01, 0.04, 0.03, 0.5])).round(2).tolist()
    [0.04, 0.09, 0.09, 0.5]
    >>> p = accuracy_p_values(np.array([[1] * 70 + [0] * 30, [1] * 52 + [0] * 48]), 0.5)
    >>> (p < 0.001).tolist()
    [True, False]
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from .._stats import holm, p_difference_from_ci, p_from_ci

__all__ = ["ALPHA", "accuracy_p_values", "holm", "add_verdicts", "difference_p_values"]

ALPHA = 0.05  # family-wise error rate over all points of a table


def accuracy_p_values(correct: np.ndarray, chance: float, units: np.ndarray | None = None) -> np.ndarray:
    """One-sided p-values [P] that held-out accuracy beats ``chance``; ``correct`` is [P, n].

    ``units``: group id per sample (then the cluster-robust t-test described in the module
    docstring), or None for the exact binomial test.
    """
    correct = np.asarray(correct, dtype=np.float64)
    P, n = correct.shape
    if units is None:
        k = correct.sum(-1)
        return stats.binom.sf(k - 1, n, chance)  # P(K >= k)
    U = int(units.max()) + 1
    per_k = np.zeros((U, P)); np.add.at(per_k, units, correct.T)
    size = np.bincount(units, minlength=U).astype(np.float64)
    excess = per_k - chance * size[:, None]  # [U, P]
    G = int((size > 0).sum())
    excess = excess[size > 0]
    mean, sd = excess.mean(0), excess.std(0, ddof=1) if G > 1 else np.zeros(P)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(sd > 0, mean / (sd / np.sqrt(G)), np.sign(mean) * np.inf)
    return np.where(mean > 0, stats.t.sf(t, max(G - 1, 1)), 1.0)


def _p_from_ci(table: pd.DataFrame) -> np.ndarray:
    return p_from_ci(table["accuracy"].to_numpy(float), table["accuracy_lo"].to_numpy(float),
                     table["accuracy_hi"].to_numpy(float), table["chance"].to_numpy(float))


def add_verdicts(table: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """The table with ``p_value``, ``p_adjusted`` (Holm over all its rows) and ``leaks``.

    Recomputes the correction over exactly the rows given, so call it on the whole table a
    verdict is about (:func:`probekit.readout.leakage.leakage` does, after joining the
    residual and output-logit rows). ``p_value`` is kept when present, else derived from the
    accuracy CI; rows without an accuracy are not tested (``p_value`` NaN, ``leaks`` False).
    """
    t = table.copy()
    if "p_value" not in t.columns or t["p_value"].isna().all():
        have = {"accuracy", "accuracy_lo", "accuracy_hi", "chance"} <= set(t.columns)
        t["p_value"] = _p_from_ci(t) if have else np.nan
    t["p_adjusted"] = holm(t["p_value"].to_numpy(float))
    above_floor = (t["mi_bits"] > t["mi_perm_bits"]) | t["mi_perm_bits"].isna() | t["mi_bits"].isna() \
        if {"mi_bits", "mi_perm_bits"} <= set(t.columns) else True
    t["leaks"] = ((t["p_adjusted"] < alpha) & above_floor).astype(bool)
    return t


def difference_p_values(diff: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Two-sided normal p-values that a difference is 0, from its estimate and 95% CI."""
    return p_difference_from_ci(diff, lo, hi)
