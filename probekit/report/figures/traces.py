"""The traces layer-by-layer figures are drawn from: a curve with its CI band, a reference line."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..text import fmt, fmt_ci, where
from .frame import GREY, Axes

__all__ = ["curve", "reference", "offsets", "rgba", "styles", "groups", "source_name"]


def rgba(color: str, alpha: float) -> str:
    """``"#1f77b4"`` with opacity ``alpha`` as a CSS ``rgba(...)``."""
    c = color.lstrip("#")
    r, g, b = (int(c[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def curve(fig: go.Figure, axes: Axes, cols: dict[str, int], row: int, df: pd.DataFrame, y: str,
          ci: tuple[str, str] | None, *, name: str, color: str, dash: str = "solid", symbol: str = "circle",
          group: str, showlegend: bool, hover: str = "", dx: float = 0.0) -> int:
    """One curve (with its CI band) per panel; returns how many traces it added.

    Rows of an output-only source (``"logits-topk"``, see :meth:`Axes.locate`) are drawn in the
    output panel as markers with error bars, never as a line or band across the layers; ``dx``
    shifts them sideways there so that several series at one x do not hide each other.
    """
    added = 0
    for panel, part in axes.located(df).groupby("_panel", sort=False):
        part = part.sort_values("_x")
        col, out = cols[panel], panel == "out"
        x, yv = part["_x"].to_numpy(float) + (dx if out else 0.0), part[y].to_numpy(float)
        lo = part[ci[0]].to_numpy(float) if ci else None
        hi = part[ci[1]].to_numpy(float) if ci else None
        text = [f"<b>{where(p, pos)}{' (' + source_name(s) + ')' if out else ''}</b><br>"
                f"{hover or y}: {fmt_ci(v, a, b) if ci else fmt(v, 3)}"
                for p, pos, s, v, a, b in zip(part.point, part.position, part.get("source", part.point), yv,
                                              lo if ci else yv, hi if ci else yv)]
        if "leaks" in part.columns:  # the verdict per point: filled = leaks (family-wise), open = not significant
            flag = part["leaks"].fillna(False).astype(bool).to_numpy()
            marker_symbol = [symbol if f else f"{symbol}-open" for f in flag]
            text = [f"{tx}<br>{'leaks (family-wise corrected)' if f else 'not significant after correction'}"
                    for tx, f in zip(text, flag)]
        else:
            marker_symbol = symbol
        ok = np.isfinite(yv) & (np.isfinite(lo) & np.isfinite(hi) if ci else True)
        error = None
        if ci is not None and ok.sum() >= 2 and not out:
            # a filled polygon (upper edge forward, lower edge back) draws the 95% CI band
            fig.add_trace(go.Scatter(x=np.r_[x[ok], x[ok][::-1]], y=np.r_[hi[ok], lo[ok][::-1]], fill="toself",
                                     fillcolor=rgba(color, 0.2), line=dict(width=0), mode="lines",
                                     hoverinfo="skip", showlegend=False, legendgroup=group,
                                     name=f"{name} 95% CI"), row=row, col=col)
            added += 1
        elif ci is not None and ok.any():
            error = dict(type="data", symmetric=False, array=hi - yv, arrayminus=yv - lo, color=color, thickness=1.5)
        fig.add_trace(go.Scatter(x=x, y=yv, mode="markers" if out else "lines+markers", name=name, legendgroup=group,
                                 showlegend=showlegend, line=dict(color=color, dash=dash, width=2),
                                 marker=dict(color=color, symbol=marker_symbol, size=8 if out else 7), error_y=error,
                                 text=text, hovertemplate="%{text}<extra></extra>"), row=row, col=col)
        showlegend = False
        added += 1
    return added


def reference(fig: go.Figure, axes: Axes, cols: dict[str, int], row: int, table: pd.DataFrame, column: str,
              *, name: str, dash: str, reduce: str = "max", color: str = GREY) -> None:
    """A grey reference line (chance, permutation floor, H(Y)) per panel, one legend entry."""
    if column not in table.columns or not table[column].notna().any():
        return
    per = axes.located(table).groupby(["_panel", "_x"])[column].agg(reduce)
    first = True
    for panel in axes.panels:
        if panel not in per.index.get_level_values(0):
            continue
        part = per.loc[panel].sort_index()
        xs, ys = part.index.to_numpy(float), part.to_numpy(float)
        if not np.isfinite(ys).any():
            continue
        if np.nanmax(ys) - np.nanmin(ys) < 1e-12:  # a constant: span the whole panel
            xs, ys = np.array(axes.span(panel)), np.array([np.nanmax(ys)] * 2)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=name, legendgroup=name, showlegend=first,
                                 line=dict(color=color, dash=dash, width=1.5),
                                 hovertemplate=f"{name}: %{{y:.3f}}<extra></extra>"), row=row, col=cols[panel])
        first = False


def offsets(keys: Sequence[Any], width: float = 0.5) -> dict[Any, float]:
    """Sideways shifts, spread over ``width``, for several series of markers at one x."""
    n = len(keys)
    return {k: (width * (i / (n - 1) - 0.5) if n > 1 else 0.0) for i, k in enumerate(keys)}


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
