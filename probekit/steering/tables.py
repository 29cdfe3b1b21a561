"""The evaluation report: suppression next to cost, in a tidy table and a wide per-point one."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .heldout import distance_from_chance

__all__ = ["EvalReport", "build_report"]


@dataclass
class EvalReport:
    """What :func:`evaluate` measured.

    Attributes:
        table: tidy DataFrame, one row per (section, metric, point, position) with ``before``,
            ``before_lo``, ``before_hi``, ``after``, ``after_lo``, ``after_hi``, ``chance``, ``n``;
            sections ``"suppression"`` (metrics ``probe_accuracy``, ``abs_excess`` =
            ``|accuracy - chance|``, ``mi_bits``, per point) and ``"cost"`` (``kl_nats``,
            ``task_accuracy``, ``answer_loss_nats``).
        suppression: wide per-point table (``accuracy_before``, ``accuracy_after``,
            ``abs_excess_before``, ``abs_excess_after`` with ``_lo`` / ``_hi``, ``mi_before``, ...,
            ``below_chance_after``: the after-edit accuracy interval lies below chance, which is
            leakage, not success; ``fit_overlap``).
        cost: the cost numbers as a dict.
        data: which images fitted and which evaluated (``split``, ``n_fit``, ``n_eval``,
            ``fit_overlap``, ``fit_index``/``eval_index`` for a seeded split, ``seed``).
        probes_before / probes_after: the full :func:`probekit.readout.probe_layers` tables.
    """

    table: pd.DataFrame
    suppression: pd.DataFrame
    cost: dict
    probes_before: pd.DataFrame = field(repr=False)
    probes_after: pd.DataFrame = field(repr=False)
    data: dict = field(default_factory=dict, repr=False)

    def summary(self, label: str = "intervention") -> pd.DataFrame:
        """One row in :func:`sweep`'s format (worst case over points), for :func:`tradeoff_figure`."""
        return pd.DataFrame([{"label": label, **_summary_numbers(self.suppression), **_data_numbers(self.data),
                              **self.cost}])

    def __repr__(self) -> str:
        s = self.suppression
        k = self.data.get("fit_overlap")
        warn = f", FITTED ON {k} EVALUATION IMAGES" if k else ""
        return (f"EvalReport(points={len(s)}, max |accuracy - chance| {s.abs_excess_before.max():.3f} -> "
                f"{s.abs_excess_after.max():.3f} (accuracy {s.accuracy_before.max():.3f} -> "
                f"{s.accuracy_after.max():.3f}, chance {s.chance.max():.3f}), KL {self.cost.get('kl_mean', math.nan):.4f} nats, "
                f"{self.data.get('n_eval')} evaluation images ({self.data.get('split', 'unknown')} split){warn})")


def _summary_numbers(sup: pd.DataFrame) -> dict:
    return {
        "accuracy_before_max": float(sup.accuracy_before.max()),
        "accuracy_after_max": float(sup.accuracy_after.max()),
        "accuracy_after_min": float(sup.accuracy_after.min()),
        "abs_excess_before_max": float(sup.abs_excess_before.max()),
        "abs_excess_after_max": float(sup.abs_excess_after.max()),
        "abs_excess_after_hi_max": float(sup.abs_excess_after_hi.max()),
        "mi_before_max": float(sup.mi_before.max()),
        "mi_after_max": float(sup.mi_after.max()),
        "chance": float(sup.chance.max()),
    }


def _data_numbers(data: dict) -> dict:
    return {k: data.get(k) for k in ("split", "n_fit", "n_eval", "fit_overlap")}


def build_report(probes_before: pd.DataFrame, after: pd.DataFrame, cost: dict, positions: Any,
                 data: dict) -> EvalReport:
    """The report from the probe tables before and after, the cost numbers and the data record."""
    keys = ["point", "layer", "kind", "position"]
    label = positions if isinstance(positions, str) else str(positions)
    b = probes_before.assign(position=probes_before.position.fillna(label)).set_index(keys)
    a = after.assign(position=after.position.fillna(label)).set_index(keys)
    # distance from chance in both directions, from the readout's accuracy and its interval
    eb, eb_lo, eb_hi = distance_from_chance(b["accuracy"], b["accuracy_lo"], b["accuracy_hi"], b["chance"])
    ea, ea_lo, ea_hi = distance_from_chance(a["accuracy"], a["accuracy_lo"], a["accuracy_hi"], a["chance"])
    sup = pd.DataFrame({
        "n": b["n"], "chance": b["chance"],
        "accuracy_before": b["accuracy"], "accuracy_before_lo": b["accuracy_lo"], "accuracy_before_hi": b["accuracy_hi"],
        "accuracy_after": a["accuracy"], "accuracy_after_lo": a["accuracy_lo"], "accuracy_after_hi": a["accuracy_hi"],
        "abs_excess_before": eb, "abs_excess_before_lo": eb_lo, "abs_excess_before_hi": eb_hi,
        "abs_excess_after": ea, "abs_excess_after_lo": ea_lo, "abs_excess_after_hi": ea_hi,
        "below_chance_after": (a["accuracy_hi"] < a["chance"]).to_numpy(),
        "mi_before": b["mi_bits"], "mi_before_lo": b["mi_lo"], "mi_before_hi": b["mi_hi"],
        "mi_after": a["mi_bits"], "mi_after_lo": a["mi_lo"], "mi_after_hi": a["mi_hi"],
        "mi_perm_after": a["mi_perm_bits"],
    }).reset_index()
    sup["fit_overlap"] = data.get("fit_overlap")
    if bool(sup.below_chance_after.any()):
        warnings.warn("after the intervention retrained probes score reliably *below* chance at "
                      f"{sorted(set(sup.point[sup.below_chance_after]))}: that is not suppression (a probe "
                      "reading the label inverted, or folds anti-correlated with the data as an eraser fitted "
                      "on the evaluation images leaves them, does this); read abs_excess_after"
                      + (" (the direction was fitted on the evaluation images)" if data.get("fit_overlap") else ""),
                      stacklevel=3)
    rows = []
    for r in sup.itertuples(index=False):
        common = {"section": "suppression", "point": r.point, "layer": r.layer, "position": r.position, "n": r.n}
        rows.append({**common, "metric": "probe_accuracy", "before": r.accuracy_before, "before_lo": r.accuracy_before_lo,
                     "before_hi": r.accuracy_before_hi, "after": r.accuracy_after, "after_lo": r.accuracy_after_lo,
                     "after_hi": r.accuracy_after_hi, "chance": r.chance})
        rows.append({**common, "metric": "abs_excess", "before": r.abs_excess_before, "before_lo": r.abs_excess_before_lo,
                     "before_hi": r.abs_excess_before_hi, "after": r.abs_excess_after, "after_lo": r.abs_excess_after_lo,
                     "after_hi": r.abs_excess_after_hi, "chance": 0.0})
        rows.append({**common, "metric": "mi_bits", "before": r.mi_before, "before_lo": r.mi_before_lo,
                     "before_hi": r.mi_before_hi, "after": r.mi_after, "after_lo": r.mi_after_lo,
                     "after_hi": r.mi_after_hi, "chance": 0.0})
    cost_common = {"section": "cost", "point": None, "layer": math.nan, "position": None}
    rows.append({**cost_common, "metric": "kl_nats", "n": cost["kl_n"], "before": 0.0, "before_lo": 0.0, "before_hi": 0.0,
                 "after": cost["kl_mean"], "after_lo": cost["kl_lo"], "after_hi": cost["kl_hi"], "chance": math.nan})
    if "task_accuracy_before" in cost:
        rows.append({**cost_common, "metric": "task_accuracy", "n": cost["task_n"],
                     "before": cost["task_accuracy_before"], "before_lo": cost["task_accuracy_before_lo"],
                     "before_hi": cost["task_accuracy_before_hi"], "after": cost["task_accuracy_after"],
                     "after_lo": cost["task_accuracy_after_lo"], "after_hi": cost["task_accuracy_after_hi"], "chance": math.nan})
        rows.append({**cost_common, "metric": "answer_loss_nats", "n": cost["task_n"], "before": cost["answer_loss_before"],
                     "before_lo": math.nan, "before_hi": math.nan, "after": cost["answer_loss_after"],
                     "after_lo": cost["answer_loss_before"] + cost["answer_loss_delta_lo"],
                     "after_hi": cost["answer_loss_before"] + cost["answer_loss_delta_hi"], "chance": math.nan})
    cols = ["section", "metric", "point", "layer", "position", "n", "before", "before_lo", "before_hi",
            "after", "after_lo", "after_hi", "chance"]
    return EvalReport(table=pd.DataFrame(rows, columns=cols), suppression=sup, cost=cost,
                      probes_before=probes_before, probes_after=after, data=dict(data))
