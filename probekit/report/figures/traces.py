"""The traces layer-by-layer figures are drawn from: a curve with its CI band, a reference line."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..text import fmt, fmt_ci, where
from .frame import GREY, Axes

__all__ = ["curve", "reference", "rgba", "styles", "groups", "source_name"]


def rgba(color: str, alpha: float) -> str:
    """``"#1f77b4"`` with opacity ``alpha`` as a CSS ``rgba(...)``."""
    c = color.lstrip("#")
    r, g, b = (int(c[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def curve(fig: go.Figure, axes: Axes, cols: dict[str, int], row: int, df: pd.DataFrame, y: str,
          ci: tuple[str, str] | None, *, name: str, color: str, dash: str = "solid", symbol: str = "circle",
          group: str, showlegend: bool, hover: str = "", span: bool = False, dx: float = 0.0) -> int:
    """One curve (with its CI band) per panel; returns how many traces it added.

    With ``span``, a curve of a single LM-panel point (leakage from the output's top-k
    logits) is also drawn as a level line with its CI across the whole LM panel, so every
    layer can be compared with it. ``dx`` shifts the markers sideways so that error bars of
    several such points at one x do not hide each other.
    """
    added = 0
    d = df.assign(_panel=[axes.x[p][0] for p in df.point], _x=[axes.x[p][1] for p in df.point])
    for panel, part in d.groupby("_panel", sort=False):
        part = part.sort_values("_x")
        col = cols[panel]
        x, yv = part["_x"].to_numpy(float), part[y].to_numpy(float)
        lo = part[ci[0]].to_numpy(float) if ci else None
        hi = part[ci[1]].to_numpy(float) if ci else None
        text = [f"<b>{where(p, pos)}</b><br>{hover or y}: {fmt_ci(v, a, b) if ci else fmt(v, 3)}"
                for p, pos, v, a, b in zip(part.point, part.position, yv,
                                           lo if ci else yv, hi if ci else yv)]
        if "leaks" in part.columns:  # the verdict per point: filled = leaks after Holm, open = not significant
            flag = part["leaks"].fillna(False).astype(bool).to_numpy()
            marker_symbol = [symbol if f else f"{symbol}-open" for f in flag]
            text = [f"{tx}<br>{'leaks (Holm-corrected)' if f else 'not significant after correction'}"
                    for tx, f in zip(text, flag)]
        else:
            marker_symbol = symbol
        ok = np.isfinite(yv) & (np.isfinite(lo) & np.isfinite(hi) if ci else True)
        error = None
        if ci is not None and ok.sum() >= 2:
            # a filled polygon (upper edge forward, lower edge back) draws the 95% CI band
            fig.add_trace(go.Scatter(x=np.r_[x[ok], x[ok][::-1]], y=np.r_[hi[ok], lo[ok][::-1]], fill="toself",
                                     fillcolor=rgba(color, 0.2), line=dict(width=0), mode="lines",
                                     hoverinfo="skip", showlegend=False, legendgroup=group,
                                     name=f"{name} 95% CI"), row=row, col=col)
            added += 1
        elif ci is not None and ok.any():
            error = dict(type="data", symmetric=False, array=hi - yv, arrayminus=yv - lo, color=color, thickness=1.5)
        if span and panel == "lm" and len(part) == 1 and np.isfinite(yv[0]):
            x0, x1 = axes.span("lm")
            if ci is not None and ok[0]:
                fig.add_trace(go.Scatter(x=[x0, x1, x1, x0], y=[hi[0], hi[0], lo[0], lo[0]], fill="toself",
                                         fillcolor=rgba(color, 0.12), line=dict(width=0), mode="lines",
                                         hoverinfo="skip", showlegend=False, legendgroup=group,
                                         name=f"{name} 95% CI"), row=row, col=col)
                added += 1
            fig.add_trace(go.Scatter(x=[x0, x1], y=[yv[0], yv[0]], mode="lines", line=dict(color=color, dash=dash,
                                     width=1.5), showlegend=False, legendgroup=group, name=name,
                                     text=text * 2, hovertemplate="%{text}<extra></extra>"), row=row, col=col)
            added += 1
        fig.add_trace(go.Scatter(x=x + dx, y=yv, mode="lines+markers", name=name, legendgroup=group,
                                 showlegend=showlegend, line=dict(color=color, dash=dash, width=2),
                                 marker=dict(color=color, symbol=marker_symbol, size=7), error_y=error,
                                 text=text, hovertemplate="%{text}<extra></extra>"), row=row, col=col)
        showlegend = False
        added += 1
    return added


def reference(fig: go.Figure, axes: Axes, cols: dict[str, int], row: int, table: pd.DataFrame, column: str,
              *, name: str, dash: str, reduce: str = "max", color: str = GREY) -> None:
    """A grey reference line (chance, permutation floor, H(Y)) per panel, one legend entry."""
    if column not in table.columns or not table[column].notna().any():
        return
    per = table.groupby("point")[column].agg(reduce)
    first = True
    for panel in axes.panels:
        pts = [p for p in per.index if axes.x[p][0] == panel]
        if not pts:
            continue
        xs = np.array([axes.x[p][1] for p in pts])
        ys = per[pts].to_numpy(float)
        o = np.argsort(xs)
        xs, ys = xs[o], ys[o]
        if not np.isfinite(ys).any():
            continue
        if np.nanmax(ys) - np.nanmin(ys) < 1e-12:  # a constant: span the whole panel
            xs, ys = np.array(axes.span(panel)), np.array([np.nanmax(ys)] * 2)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=name, legendgroup=name, showlegend=first,
                                 line=dict(color=color, dash=dash, width=1.5),
                                 hovertemplate=f"{name}: %{{y:.3f}}<extra></extra>"), row=row, col=cols[panel])
        first = False


def styles(values: Sequence[Any], options: Sequence[Any]) -> dict[Any, Any]:
    """One option (colour, dash, symbol) per distinct value, cycling."""
    return {v: options[i % len(options)] for i, v in enumerate(values)}


def groups(t: pd.DataFrame, keys: list[str]) -> list[tuple[tuple, pd.DataFrame]]:
    """groupby in a reading order: positions as they first appear, the residual source first."""
    first = {k: {v: i for i, v in enumerate(dict.fromkeys(t[k]))} for k in keys}

    def rank(key: tuple) -> tuple:
        return tuple((v != "residual", first[k][v]) if k == "source" else (0, first[k][v]) for k, v in zip(keys, key))

    return sorted(t.groupby(keys, sort=False), key=lambda kv: rank(kv[0]))


def source_name(source: str) -> str:
    """How a legend names a ``source`` (``"logits-topk"`` -> ``"output top-k logits"``)."""
    return "output top-k logits" if source == "logits-topk" else source
