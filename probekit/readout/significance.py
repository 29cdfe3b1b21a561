"""The one verdict: which rows of a table leak, corrected over the whole family, with the power of every null.

Every table, study, report, summary and the CLI decides "detected" here (:func:`add_verdicts`).

The test of a row is the permutation test of :mod:`probekit.readout.permutation`: the labels are
permuted (whole groups trade labels when samples come in groups) and the cross-validated
statistic recomputed on each permutation, every row of a table on the same permutations. Its
p-value (``p_value``) is ``(1 + #{T_b >= T_0}) / (B + 1)``. The family-wise correction over all
rows of the table (every point, position and source) is Westfall and Young's step-down maxT on
each row's standardised statistic (``p_adjusted``): it keeps the chance of even one false
"leaks" at ``alpha`` whatever the dependence between rows, and, because it uses that dependence
(layers of one model are strongly correlated), it does not pay Holm's full price for a large
family. MaxT rather than Holm or min-p on the permutation p-values: those need
``n_perm >= M / alpha`` permutations before they can reject anything at all (the smallest
permutation p-value of each of M rows turns up in about M permutations), where maxT gives a row
far above every permutation ``1 / (n_perm + 1)`` whatever M.

A row ``leaks`` when ``p_adjusted < alpha`` AND its MI bound exceeds the permuted-label floor
(``mi_bits > mi_perm_bits``, where the table has both), so "no leakage" reads: no corrected test
rejects, or the information bound is no higher than the estimator gives on permuted labels.

Beside every verdict, ``mde_accuracy``: the held-out accuracy the family-wise test would have
detected with 80% power at that number of independent units (``n_units``: samples, or groups),
chance rate and family size (:func:`probekit._stats.min_detectable_accuracy`). A null whose
``mde_accuracy`` is 1 is inconclusive: nothing could have been detected.

Why not the tests probekit used before (kept in ``docs/concepts.md`` with their measured rates):
cross-validated held-out predictions are not independent draws, so an exact binomial test on
them rejects too often at small n (11% of README-sized null scans at nominal 5%); a t-test or a
bootstrap over ~24 groups treats them as many (20% family-wise on the watermark design).

A table that carries no permutation statistics (``perm_null``): one read back from a report file
keeps the ``p_value`` / ``p_adjusted`` it was written with; one made by hand keeps its own
``p_value`` (``test = "given p"``) or gets a normal p-value read off its accuracy CI
(``test = "from CI"``), and Holm's correction over them.

Example:
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> null = rng.normal(size=(3, 201)); null[0, 0] = 10.0      # row 0 far above its permutations
    >>> t = pd.DataFrame({"accuracy": [0.9, 0.5, 0.5], "chance": 0.5, "n_units": 100,
    ...                   "perm_null": list(null)})
    >>> add_verdicts(t)[["leaks"]].values.ravel().tolist()
    [True, False, False]
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._stats import holm, maxt_adjust, min_detectable_accuracy, p_difference_from_ci, p_from_ci, permutation_p

__all__ = ["ALPHA", "NULL", "holm", "add_verdicts", "difference_p_values", "drop_nulls", "null_phrase"]

ALPHA = 0.05  # family-wise error rate over all rows of a table
NULL = "perm_null"  # column of each row's statistic on the observed labels (index 0) and every permutation


def _nulls(t: pd.DataFrame) -> np.ndarray | None:
    """``[M, B + 1]`` permutation statistics of every row, or None when the table does not carry them all."""
    if NULL not in t.columns or len(t) == 0:
        return None
    cells = list(t[NULL])
    if any(not isinstance(c, np.ndarray) for c in cells) or len({c.shape for c in cells}) != 1:
        return None
    return np.stack(cells).astype(np.float64)


def add_verdicts(table: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """The table with ``p_value``, ``p_adjusted`` (over all its rows), ``leaks`` and ``mde_accuracy``.

    Recomputes the correction over exactly the rows given, so call it on the whole table a
    verdict is about (:func:`probekit.readout.leakage.leakage` does, after joining the residual
    and output-logit rows; their permutations are the same when they were made from the same
    labels, groups, seed and ``n_perm``). Rows without a test (no accuracy, NaN statistics) get
    NaN p-values and ``leaks`` False.
    """
    t = table.copy()
    null = _nulls(t)
    if null is not None:
        t["p_value"], t["p_adjusted"] = permutation_p(null)[0], maxt_adjust(null)
        t["test"] = "permutation"
    elif {"p_value", "p_adjusted"} <= set(t.columns) and t["p_adjusted"].notna().any():
        t["test"] = t["test"] if "test" in t.columns else "as read"  # a report read back: its verdicts stand
    else:  # a table made by hand: its own p-values, or ones read off its accuracy CIs; Holm over them
        if "p_value" not in t.columns or t["p_value"].isna().all():
            have = {"accuracy", "accuracy_lo", "accuracy_hi", "chance"} <= set(t.columns)
            t["p_value"] = p_from_ci(t["accuracy"].to_numpy(float), t["accuracy_lo"].to_numpy(float),
                                     t["accuracy_hi"].to_numpy(float), t["chance"].to_numpy(float)) if have else np.nan
            t["test"] = "from CI"
        else:
            t["test"] = "given p"
        t["p_adjusted"] = holm(t["p_value"].to_numpy(float))
    above_floor = (t["mi_bits"] > t["mi_perm_bits"]) | t["mi_perm_bits"].isna() | t["mi_bits"].isna() \
        if {"mi_bits", "mi_perm_bits"} <= set(t.columns) else True
    t["leaks"] = ((t["p_adjusted"] < alpha) & above_floor).astype(bool)
    tested = t["p_value"].notna()
    units = t["n_units"].to_numpy(float) if "n_units" in t.columns else \
        (t["n"].to_numpy(float) if "n" in t.columns else np.full(len(t), np.nan))
    chance = t["chance"].to_numpy(float) if "chance" in t.columns else np.full(len(t), np.nan)
    mde = min_detectable_accuracy(units, chance, max(int(tested.sum()), 1), alpha=alpha)
    t["mde_accuracy"] = np.where(tested, mde, np.nan)
    return t


def null_phrase(table: pd.DataFrame) -> str:
    """How a table where nothing leaks reads, with its power: "nothing detected (would have detected
    accuracy >= 0.81 at 80% power)", or "inconclusive (...)" where no accuracy could have been detected."""
    mde = table["mde_accuracy"].dropna() if "mde_accuracy" in table.columns else pd.Series(dtype=float)
    if mde.empty:
        return "nothing detected"
    worst = float(mde.max())
    if worst >= 1.0:
        return ("inconclusive: nothing detected, and with this few samples or groups for this many tests not even a "
                "perfect probe would have been")
    return f"nothing detected (would have detected accuracy >= {worst:.2f} at 80% power)"


def drop_nulls(table: pd.DataFrame) -> pd.DataFrame:
    """The table without its permutation statistics (for files and display); its verdicts stay."""
    return table.drop(columns=[NULL], errors="ignore")


def difference_p_values(diff: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Two-sided normal p-values that a difference is 0, from its estimate and 95% CI."""
    return p_difference_from_ci(diff, lo, hi)
