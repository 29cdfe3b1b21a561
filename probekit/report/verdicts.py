"""The verdict line every report starts with, and how headlines show an MI bound.

One function per sentence, used by :meth:`probekit.report.ScanReport.summary` (and so the
HTML page, the notebook view and ``probekit scan``), :meth:`probekit.report.Comparison.summary`
and the demo's printout, so all of them say the same thing. The statistics (p-values,
the family-wise correction, ``leaks``, the power) live in :mod:`probekit.readout.significance`;
this module only words them.

Example:
    >>> import pandas as pd
    >>> t = pd.DataFrame({"point": ["lm.0.resid", "lm.1.resid"], "position": "last",
    ...     "accuracy": [0.52, 0.93], "accuracy_lo": [0.47, 0.90], "accuracy_hi": [0.57, 0.95], "chance": 0.5})
    >>> verdict(t)
    'Leakage detected at 1 of 2 points (first at lm.1.resid @ last)'
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..readout.significance import ALPHA, add_verdicts, difference_p_values, holm
from .order import point_order
from .tables import normalise
from .text import ci_text, where

__all__ = ["verdict", "difference_verdict", "difference_rows", "mi_headline", "tested_rows"]


def _no_leak(t: pd.DataFrame) -> str:
    """The null line, with its power: the accuracy the test would have detected, or "inconclusive"."""
    m = len(t)
    mde = t["mde_accuracy"].dropna() if "mde_accuracy" in t.columns else pd.Series(dtype=float)
    if not mde.empty and float(mde.max()) >= 1.0:
        return (f"Inconclusive: no leakage detected at any of {m} points, but with {_units(t)} for {m} tests not "
                "even a perfect probe would have been detected")
    power = f"; would have detected accuracy >= {float(mde.max()):.2f} at 80% power" if not mde.empty else ""
    return f"No leakage detected at any of {m} points (family-wise test{power})"


def _units(t: pd.DataFrame) -> str:
    n = t["n_units"].dropna() if "n_units" in t.columns else pd.Series(dtype=float)
    return f"{int(n.min())} independent samples or groups" if not n.empty else "this few samples"


def tested_rows(table: pd.DataFrame | None) -> pd.DataFrame:
    """Rows that were tested, with ``p_adjusted``/``leaks`` over exactly these rows (the one verdict)."""
    if table is None or table.empty or "accuracy" not in table.columns:
        return pd.DataFrame()
    t = normalise(add_verdicts(table))
    return t[t["p_value"].notna()]


def _forward(t: pd.DataFrame) -> pd.DataFrame:
    """Rows in forward order: residual points from the input on, output-logit rows last."""
    order = {p: i for i, p in enumerate(point_order(t.point))}
    return t.assign(_s=(t.source != "residual").astype(int), _o=[order[p] for p in t.point]).sort_values(
        ["_s", "_o"], kind="stable").drop(columns=["_s", "_o"])


def verdict(table: pd.DataFrame | None) -> str:
    """The first line of every report: is there leakage, after correcting for all points tested?

    ``"Leakage detected at N of M points (first at <point> @ <position>)"``, ``"No leakage
    detected at any of M points (family-wise test; would have detected accuracy >= A at 80%
    power)"``, or ``"Inconclusive: ..."`` when the test could have detected nothing. M counts
    every row tested (each point × position × source); a row leaks when its family-wise
    adjusted p-value is below 0.05 and its MI bound exceeds the permuted-label floor
    (:mod:`probekit.readout.significance`). "First" is the earliest leaking point in the
    forward pass.

    Example:
        >>> import pandas as pd
        >>> t = pd.DataFrame({"point": ["lm.0.resid", "lm.1.resid"], "position": "last",
        ...     "accuracy": [0.52, 0.55], "accuracy_lo": [0.45, 0.48], "accuracy_hi": [0.59, 0.62], "chance": 0.5})
        >>> verdict(t.assign(n_units=200))
        'No leakage detected at any of 2 points (family-wise test; would have detected accuracy >= 0.60 at 80% power)'
    """
    t = tested_rows(table)
    if t.empty:
        return "Nothing tested: the table has no probe accuracy."
    hits = _forward(t[t["leaks"]])
    if hits.empty:
        return _no_leak(t)
    first = hits.iloc[0]
    return f"Leakage detected at {len(hits)} of {len(t)} points (first at {where(first.point, first.position)})"


def mi_headline(rec: dict) -> str:
    """An MI bound for a headline: ``0.12 [0.08, 0.16]``, or ``0 (no evidence)`` when below 0.

    A negative held-out bound is the estimator's own error, not negative information; the
    table keeps the raw value.

    >>> mi_headline({"mi_bits": -0.031, "mi_lo": -0.06, "mi_hi": 0.0}), mi_headline({"mi_bits": 0.2})
    ('0 (no evidence)', '0.20')
    """
    v = rec.get("mi_bits")
    if v is None or not np.isfinite(float(v)) or float(v) > 0:
        return ci_text(rec, "mi_bits")
    return "0 (no evidence)"


def difference_rows(table: pd.DataFrame) -> pd.DataFrame:
    """A paired table with the test of each difference: everything a comparison's summary counts.

    Adds ``diff_p`` (two-sided normal p-value that tuned − base is 0, from ``diff`` and its
    95% CI; NaN where the row has no difference or no CI: not tested), ``diff_p_holm`` (Holm
    over the tested rows), ``changed`` (``diff_p_holm`` < 0.05) and ``excludes_0`` (``diff_p``
    < 0.05, i.e. the uncorrected CI excludes 0; every changed row is one). Idempotent.

    >>> t = pd.DataFrame({"point": ["lm.0.resid", "lm.1.resid", "lm.2.resid"], "diff": [-0.3, 0.02, float("nan")],
    ...                   "diff_lo": [-0.35, -0.04, float("nan")], "diff_hi": [-0.25, 0.08, float("nan")]})
    >>> difference_rows(t)[["changed", "excludes_0"]].values.tolist()
    [[True, True], [False, False], [False, False]]
    """
    t = normalise(table)
    p = difference_p_values(t["diff"], t["diff_lo"], t["diff_hi"])
    t["diff_p"] = p
    t["diff_p_holm"] = holm(p)
    t["changed"] = (t["diff_p_holm"] < ALPHA).to_numpy(bool)
    t["excludes_0"] = (t["diff_p"] < ALPHA).to_numpy(bool)
    return t


def difference_verdict(table: pd.DataFrame, label: str) -> str:
    """Verdict on tuned − base: Holm over the rows on the two-sided normal p-value of each difference.

    Counts the rows of :func:`difference_rows` (computed here unless ``table`` has them): M
    rows with a tested difference (every source and position), N of them changed.
    """
    t = table if "changed" in table.columns else difference_rows(table)
    t = t[np.isfinite(t["diff_p"].to_numpy(float))]
    if t.empty:
        return f"{label}: no difference with a CI to test"
    hits = _forward(t[t["changed"]])
    if hits.empty:
        return f"{label}: no change detected at any of {len(t)} points (every interval of the difference includes 0)"
    first = hits.iloc[0]
    return (f"{label}: change detected at {len(hits)} of {len(t)} points "
            f"(first at {where(first.point, first.position)})")
