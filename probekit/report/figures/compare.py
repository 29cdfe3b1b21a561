"""Two models' leakage curves (e.g. base and fine-tuned) and their difference with its CI."""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import plotly.graph_objects as go

from ...errors import InputError
from ..tables import check_metric, normalise, paired_table
from ..text import LABELS, ci_columns, role_names
from .frame import GREY, PALETTE, Axes, layout, subplots
from .traces import curve, groups, offsets, reference, styles

__all__ = ["compare_curves"]


def compare_curves(base_table: pd.DataFrame, tuned_table: pd.DataFrame, metric: str = "accuracy",
                   names: Sequence[str] = ("base", "tuned"), title: str | None = None) -> go.Figure:
    """Two models' leakage curves with CI bands (top) and their difference with its CI (bottom).

    The difference is ``tuned - base``; its 95% CI combines the two CIs assuming independence
    (half-width ``sqrt(hw1² + hw2²)``). Only (point, position, source) rows present in both
    tables are drawn. One colour per model, one dash and marker per position; rows from the
    output's top-k logits are markers in a narrow panel at the right, "output (top-k logits)".

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
    axes = Axes.of_table(paired)
    paired["_stream"] = [axes.streams[p] for p in paired.point]
    fig, cols = subplots(axes, rows=2, row_heights=[0.58, 0.42])
    # colour = model, line style and marker = position
    positions = list(dict.fromkeys(paired.position))
    dashes = styles(positions, ["solid", "dot", "dashdot", "longdashdot"])
    symbols = styles(positions, ["circle", "square", "diamond", "triangle-up"])
    colors = {names[0]: PALETTE[0], names[1]: PALETTE[1], "diff": "#333333"}
    labels = {names[0]: names[0], names[1]: names[1], "diff": f"{names[1]} − {names[0]}"}
    seen: set[str] = set()
    parts = groups(paired, ["position", "source", "_stream"])
    outs = [k for k, _ in parts if k[1] != "residual"]
    # in the output panel: base and tuned side by side per position (top), the differences (bottom)
    shift = {**offsets([(k, m) for k in outs for m in names]), **offsets([(k, "diff") for k in outs], 0.5)}
    for (position, source, stream), part in parts:
        dash = dashes[position]
        for key, s in ((names[0], "base"), (names[1], "tuned"), ("diff", "diff")):
            if s == "diff":
                cur, row = part.rename(columns={f"{metric}_diff": "_y", f"{metric}_diff_lo": "_lo",
                                                f"{metric}_diff_hi": "_hi"}), 2
            else:
                cur, row = part.rename(columns={f"{metric}_{s}": "_y", f"{ci[0]}_{s}": "_lo", f"{ci[1]}_{s}": "_hi"}), 1
            curve(fig, axes, cols, row, cur, "_y", ("_lo", "_hi") if has_ci else None, name=labels[key],
                  color=colors[key], dash=dash, symbol=symbols[position], group=labels[key],
                  showlegend=labels[key] not in seen, hover=labels[key],
                  dx=shift.get(((position, source, stream), key), 0.0))
            seen.add(labels[key])
    if len(positions) > 1:  # a grey key per line style and marker; the colours are already in the legend
        for p in positions:
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines+markers", name=f"@ {p}",
                                     legendgroup=f"style {p}", line=dict(color=GREY, dash=dashes[p], width=2),
                                     marker=dict(color=GREY, symbol=symbols[p], size=7), hoverinfo="skip"),
                          row=1, col=1)
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
