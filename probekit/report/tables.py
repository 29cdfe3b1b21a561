"""The tables a report is built on: the normalised leakage table, two tables paired, the best row.

:func:`normalise` is what every table goes through once (``position`` and ``source`` filled
in); :func:`paired_table` matches two models' tables row by row with the difference and its CI.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from .order import point_order
from .text import NO_POSITION, ci_columns, position_name

__all__ = ["KEYS", "normalise", "check_metric", "paired_table", "best_row"]

KEYS = ("point", "position", "source")


def normalise(table: pd.DataFrame, what: str = "table") -> pd.DataFrame:
    """A copy with ``position``/``source`` filled in; probe_layers has no ``source`` column.

    Idempotent: a normalised table comes back equal.

    >>> normalise(pd.DataFrame({"point": ["projector"], "position": [None]}))[["position", "source"]].values.tolist()
    [['—', 'residual']]
    """
    if not isinstance(table, pd.DataFrame):
        raise InputError(f"{what} must be a pandas DataFrame, got {type(table).__name__}",
                         fix="pass the table returned by probekit.scan or probe_layers")
    if "point" not in table.columns:
        raise InputError(f"{what} has no 'point' column (columns: {list(table.columns)[:8]})",
                         fix="pass the table returned by probekit.scan or probe_layers")
    t = table.copy()
    # a [n, d] activation has no named position: probe_layers leaves it NaN
    t["position"] = t["position"].map(position_name) if "position" in t.columns else NO_POSITION
    t["source"] = t["source"].fillna("residual").astype(str) if "source" in t.columns else "residual"
    return t.reset_index(drop=True)


def check_metric(table: pd.DataFrame, metric: str) -> None:
    """Raise :class:`~probekit.errors.InputError` naming the numeric columns when ``metric`` is not one."""
    if metric not in table.columns:
        numeric = [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c])]
        raise InputError(f"metric {metric!r} is not a column of the table", fix=f"use one of {numeric}")


def paired_table(base: pd.DataFrame, tuned: pd.DataFrame, metrics: Sequence[str] = ("accuracy", "mi_bits"),
                 names: Sequence[str] = ("base", "tuned")) -> pd.DataFrame:
    """Rows of two leakage tables matched on (point, position, source), with differences.

    Every numeric column ``c`` of both tables appears as ``c_base`` and ``c_tuned``; for each
    metric present in both, ``{metric}_diff = tuned - base`` with a 95% CI whose half-width
    is ``sqrt(hw_base² + hw_tuned²)`` (the two CIs' half-widths, assuming the two
    measurements are independent), as ``{metric}_diff_lo`` / ``{metric}_diff_hi``.
    ``names`` only label error messages. Raises :class:`~probekit.errors.InputError` when
    the tables share no (point, position, source).

    >>> b = pd.DataFrame({"point": ["lm.0.resid"], "position": ["last"], "accuracy": [0.9],
    ...                   "accuracy_lo": [0.8], "accuracy_hi": [1.0]})
    >>> t = b.assign(accuracy=[0.6], accuracy_lo=[0.57], accuracy_hi=[0.63])
    >>> row = paired_table(b, t, ["accuracy"]).iloc[0]
    >>> round(float(row.accuracy_diff), 3), round(float(row.accuracy_diff_hi - row.accuracy_diff), 4)
    (-0.3, 0.1044)
    """
    b, t = normalise(base, f"the {names[0]} table"), normalise(tuned, f"the {names[1]} table")
    common = b.merge(t[list(KEYS)], on=list(KEYS))
    if common.empty:
        bp, tp = sorted(set(b.point)), sorted(set(t.point))
        raise InputError(
            f"the {names[0]} and {names[1]} reports have no hook point and position in common "
            f"({names[0]}: {bp[:4]}{'...' if len(bp) > 4 else ''} @ {sorted(set(b.position))}; "
            f"{names[1]}: {tp[:4]}{'...' if len(tp) > 4 else ''} @ {sorted(set(t.position))})",
            fix="scan both models with the same points= and positions=",
        )
    desc = [c for c in ("layer", "kind") if c in b.columns]
    num = lambda df: [c for c in df.columns if c not in KEYS and c not in desc  # noqa: E731
                      and pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]
    left = b[list(KEYS) + desc + num(b)]
    right = t[list(KEYS) + num(t)]
    out = left.merge(right, on=list(KEYS), suffixes=("_base", "_tuned"), how="inner")
    # merge only suffixes clashing names; a column in one table only still gets its suffix
    for c in num(b):
        if c not in num(t):
            out = out.rename(columns={c: f"{c}_base"})
    for c in num(t):
        if c not in num(b):
            out = out.rename(columns={c: f"{c}_tuned"})
    for m in metrics:
        if f"{m}_base" not in out.columns or f"{m}_tuned" not in out.columns:
            continue
        out[f"{m}_diff"] = out[f"{m}_tuned"] - out[f"{m}_base"]
        ci = ci_columns(m)
        if all(f"{c}_{s}" in out.columns for c in ci for s in ("base", "tuned")):
            hw = lambda s: (out[f"{ci[1]}_{s}"] - out[f"{ci[0]}_{s}"]) / 2  # noqa: E731
            half = np.sqrt(hw("base") ** 2 + hw("tuned") ** 2)
            out[f"{m}_diff_lo"] = out[f"{m}_diff"] - half
            out[f"{m}_diff_hi"] = out[f"{m}_diff"] + half
    order = {p: i for i, p in enumerate(point_order(out.point))}
    out = out.sort_values(["position", "source"], kind="stable")
    out = out.iloc[np.argsort([order[p] for p in out.point], kind="stable")]
    return out.reset_index(drop=True)


def best_row(table: pd.DataFrame | None, metric: str = "accuracy") -> dict | None:
    """The row of a normalised table with the highest ``metric`` (ties: the higher MI, then
    the earlier point), from the residual stream when it has rows; None when there is none.

    >>> t = normalise(pd.DataFrame({"point": ["lm.0.resid", "lm.1.resid"], "accuracy": [0.9, 0.9],
    ...                             "mi_bits": [0.1, 0.3]}))
    >>> best_row(t)["point"]
    'lm.1.resid'
    """
    if table is None or table.empty or metric not in table.columns or not table[metric].notna().any():
        return None
    res = table[table.source == "residual"] if (table.source == "residual").any() else table
    order = {p: i for i, p in enumerate(point_order(res.point))}
    res = res.assign(_o=[order[p] for p in res.point], _mi=res["mi_bits"] if "mi_bits" in res else 0.0)
    res = res.sort_values([metric, "_mi", "_o"], ascending=[False, False, True], na_position="last")
    return res.iloc[0].to_dict()
