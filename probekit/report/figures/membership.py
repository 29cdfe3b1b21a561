"""The membership figure: AUC per layer for every score and lens, with CIs, the output attacks at the right."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .frame import GREY, PALETTE, layout

__all__ = ["membership_figure"]


def membership_figure(table: pd.DataFrame, title: str = "Membership per layer (AUC, 95% CI)") -> go.Figure:
    """Left: AUC of each layer-wise row against depth (one line per source and score; filled markers are
    detected after the family-wise correction). Right, in its own narrow panel: the output attacks.
    The dotted line is chance (0.5)."""
    t = table.copy()
    t["depth"] = [_depth(p) for p in t.point]
    inner, out = t[t.source.str.split(" minus").str[0] != "output"], t[t.source.str.split(" minus").str[0] == "output"]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.82, 0.18], shared_yaxes=True, horizontal_spacing=0.04)
    for i, ((src, score), g) in enumerate(inner.groupby(["source", "score"], sort=False)):
        g = g.sort_values("depth")
        colour = PALETTE[i % len(PALETTE)]
        fig.add_trace(go.Scatter(x=g.depth, y=g.auc, mode="lines+markers", name=f"{src}: {score}",
                                 line={"color": colour}, error_y=_err(g),
                                 marker={"symbol": ["circle" if d else "circle-open" for d in g.detected], "size": 8}),
                      row=1, col=1)
    for j, (src, g) in enumerate(out.groupby("source", sort=False)):
        fig.add_trace(go.Scatter(x=[f"{s}" + (" − base" if "minus" in src else "") for s in g.score], y=g.auc,
                                 mode="markers", name=f"{src} (output)", error_y=_err(g),
                                 marker={"color": PALETTE[(len(fig.data) + j) % len(PALETTE)], "size": 9,
                                         "symbol": ["diamond" if d else "diamond-open" for d in g.detected]}),
                      row=1, col=2)
    for c in (1, 2):
        fig.add_hline(y=0.5, line={"dash": "dot", "color": GREY}, row=1, col=c)
    fig.update_xaxes(title_text="language-model layer (output of block i)", row=1, col=1)
    fig.update_xaxes(title_text="output attacks", row=1, col=2)
    fig.update_yaxes(title_text="AUC member vs non-member", range=[0, 1.02], row=1, col=1)
    return layout(fig, title, 460)


def _depth(point: str) -> float:
    parts = point.split(".")
    return float(parts[1]) if len(parts) > 2 and parts[1].isdigit() else float("nan")


def _err(g: pd.DataFrame) -> dict:
    return {"type": "data", "symmetric": False, "array": (g.auc_hi - g.auc).tolist(),
            "arrayminus": (g.auc - g.auc_lo).tolist(), "thickness": 1}
