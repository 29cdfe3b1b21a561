"""The leakage-ladder figure: probe accuracy per layer (residual, tuned lens) beside accuracy vs k (output logits)."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ...errors import InputError
from .frame import GREY, PALETTE, TEMPLATE

__all__ = ["ladder_figure", "k_label"]

_COLOURS = {"residual": PALETTE[0], "tuned-lens": PALETTE[1], "logits": PALETTE[2]}


def k_label(k: float, vocab: int | None = None) -> str:
    """``"2"``, ``"50"``, or ``"full"`` for the whole vocabulary."""
    if k is None or (isinstance(k, float) and math.isnan(k)):
        return ""
    return "full" if vocab is not None and int(k) >= vocab else str(int(k))


def ladder_figure(table: pd.DataFrame, metric: str = "accuracy", title: str | None = None) -> go.Figure:
    """Left: ``metric`` per layer on the residual stream and the tuned lens; right: on the top-k
    output log-probabilities vs k. One colour per label when ``table`` has an ``attribute``
    column (several labels, each with its own chance: then the accuracy above chance is drawn),
    else per source. Error bars: the table's 95% CIs. The template, palette and title place are
    those of every other report figure (:mod:`.frame`).

    Example:
        >>> t = pd.DataFrame({"source": ["residual", "tuned-lens", "logits", "logits"], "layer": [0, 0, None, None],
        ...                   "k": [None, None, 2, 10], "accuracy": [0.9, 0.8, 0.6, 0.7],
        ...                   "accuracy_lo": [0.85, 0.75, 0.55, 0.65], "accuracy_hi": [0.95, 0.85, 0.65, 0.75], "chance": 0.5})
        >>> len(ladder_figure(t).data)
        3
    """
    need = {"source", "layer", "k", metric, "chance"}
    if table is None or table.empty or not need <= set(table.columns):
        raise InputError(f"a ladder table needs columns {sorted(need)}", fix="pass probekit.readout.ladder.leakage_ladder(...)")
    lo, hi = f"{metric}_lo", f"{metric}_hi"
    has_ci = lo in table.columns and hi in table.columns
    by = "attribute" if "attribute" in table.columns else None
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, column_widths=[0.55, 0.45], horizontal_spacing=0.06,
                        subplot_titles=("residual stream and tuned lens, per layer", "output log-probabilities, top k"))
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#7f7f7f", "#17becf"]
    groups = list(table.groupby(by, sort=False)) if by else [(None, table)]
    relative = by is not None and metric == "accuracy"
    for gi, (name, g) in enumerate(groups):
        shift = float(g.chance.iloc[0]) if relative else 0.0
        for src, dash, col in (("residual", "solid", 1), ("tuned-lens", "dash", 1), ("logits", "solid", 2)):
            d = g[g.source == src]
            if d.empty:
                continue
            d = d.sort_values("layer" if col == 1 else "k")
            x = d.layer.astype(float).tolist() if col == 1 else (d.k_label.tolist() if "k_label" in d else [k_label(k) for k in d.k])
            colour = palette[gi % len(palette)] if by else _COLOURS[src]
            label = f"{name}: {src}" if by else src
            err = dict(type="data", symmetric=False, array=(d[hi] - d[metric]).tolist(),
                       arrayminus=(d[metric] - d[lo]).tolist()) if has_ci else None
            fig.add_trace(go.Scatter(x=x, y=d[metric] - shift, mode="lines+markers", name=label, legendgroup=str(name),
                                     line=dict(color=colour, dash=dash), error_y=err,
                                     marker=dict(symbol="diamond" if src == "logits" else "circle")), row=1, col=col)
    chance = 0.0 if relative else float(table.chance.max())
    for col in (1, 2):
        fig.add_hline(y=chance, line_dash="dot", line_color=GREY, row=1, col=col)
    fig.update_xaxes(title="layer (lm.{i}.resid)", dtick=1, row=1, col=1)
    fig.update_xaxes(title="k (2 = the answer tokens' log-probabilities)", type="category", row=1, col=2)
    fig.update_yaxes(title=f"probe {metric}" + (" minus chance" if relative else "") + " (95% CI)", row=1, col=1)
    fig.update_layout(template=TEMPLATE, title=dict(text=title or "Leakage ladder: what a probe reads from each level "
                      "of access", x=0.0, xanchor="left", font=dict(size=16)),
                      height=460, width=1000, font=dict(size=12), legend=dict(font=dict(size=10)))
    return fig
