"""Two models' leakage curves (e.g. base and fine-tuned) and their difference with its CI."""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import plotly.graph_objects as go

from ...errors import InputError
from ..tables import check_metric, normalise, paired_table
from ..text import LABELS, ci_columns, role_names
from .frame import GREY, PALETTE, Axes, layout, subplots
from .traces import curve, groups, reference, source_name, styles

__all__ = ["compare_curves"]


def compare_curves(base_table: pd.DataFrame, tuned_table: pd.DataFrame, metric: str = "accuracy",
                   names: Sequence[str] = ("base", "tuned"), title: str | None = None) -> go.Figure:
    """Two models' leakage curves with CI bands (top) and their difference with its CI (bottom).

    The difference is ``tuned - base``; its 95% CI combines the two CIs assuming independence
    (half-width ``sqrt(hw1² + hw2²)``). Only (point, position, source) rows present in both
    tables are drawn. One colour per model, one dash per position.

    Example:
        >>> import pandas as pd
        >>> b = pd.DataFrame({"point": ["lm.0.resid", "lm.1.resid"], "position": "last",
        ...                   "accuracy": [.6, .9], "accuracy_lo": [.5, .85], "accuracy_hi": [.7, .95]})
        >>> t = b.assign(accuracy=[.55, .6])
        >>> fig = compare_curves(b, t)
        >>> sorted({tr.name for tr in fig.data if tr.showlegend is not False})
        ['base', 'tuned', 'tuned − base']
    """
    if len(names) != 2:
        raise InputError(f"names must be two labels, got {names!r}", fix='use names=("base", "tuned")')
    for tb in (base_table, tuned_table):
        check_metric(normalise(tb), metric)
    paired = paired_table(base_table, tuned_table, [metric], names)
    ci = ci_columns(metric)
    has_ci = f"{ci[0]}_base" in paired.columns and f"{ci[0]}_tuned" in paired.columns
    axes = Axes.of(paired.point)
    paired["_stream"] = [axes.streams[p] for p in paired.point]
    fig, cols = subplots(axes, rows=2, row_heights=[0.58, 0.42])
    # colour = model, line style = position; "dash" is kept for the output-logits source
    dashes = styles(list(dict.fromkeys(paired.position)), ["solid", "dot", "dashdot", "longdashdot"])
    colors = {names[0]: PALETTE[0], names[1]: PALETTE[1], "diff": "#333333"}
    labels = {names[0]: names[0], names[1]: names[1], "diff": f"{names[1]} − {names[0]}"}
    seen: set[str] = set()
    for (position, source, stream), part in groups(paired, ["position", "source", "_stream"]):
        dash = "dash" if source != "residual" else dashes[position]
        for key, s in ((names[0], "base"), (names[1], "tuned"), ("diff", "diff")):
            if s == "diff":
                cur, row = part.rename(columns={f"{metric}_diff": "_y", f"{metric}_diff_lo": "_lo",
                                                f"{metric}_diff_hi": "_hi"}), 2
            else:
                cur, row = part.rename(columns={f"{metric}_{s}": "_y", f"{ci[0]}_{s}": "_lo", f"{ci[1]}_{s}": "_hi"}), 1
            curve(fig, axes, cols, row, cur, "_y", ("_lo", "_hi") if has_ci else None, name=labels[key],
                   color=colors[key], dash=dash, group=labels[key], showlegend=labels[key] not in seen,
                   hover=labels[key], span=source != "residual")
            seen.add(labels[key])
    keys = {f"@ {p}": d for p, d in dashes.items()}
    if (paired.source != "residual").any():
        keys.update({source_name(s): "dash" for s in set(paired.source) - {"residual"}})
    if len(keys) > 1:  # a grey key per line style; the colours are already in the legend
        for label, d in keys.items():
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=label, legendgroup=f"style {label}",
                                     line=dict(color=GREY, dash=d, width=2), hoverinfo="skip"), row=1, col=1)
    for c in cols.values():
        fig.add_hline(y=0, line=dict(color=GREY, width=1), row=2, col=c)
    if metric == "accuracy" and "chance_base" in paired.columns:
        ref = paired.assign(chance=paired[["chance_base", "chance_tuned"]].max(axis=1)
                            if "chance_tuned" in paired.columns else paired.chance_base)
        reference(fig, axes, cols, 1, ref, "chance", name="chance (majority class)", dash="dot")
    fig.update_yaxes(title_text=LABELS.get(metric, metric) + (", 95% CI" if has_ci else ""), row=1, col=1)
    fig.update_yaxes(title_text=f"difference ({names[1]} − {names[0]})", row=2, col=1)
    what = {"accuracy": "Probe accuracy", "mi_bits": "Mutual information (bits)"}.get(metric, metric)
    return layout(fig, title or f"{what}: {role_names(names)[0]} vs {role_names(names)[1]}", 640)
