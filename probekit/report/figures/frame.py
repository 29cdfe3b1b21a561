"""The frame every layer-by-layer figure shares: x positions per panel, subplots, layout.

:class:`Axes` turns hook points into x coordinates (a "pre" panel for the image path, an
"lm" panel numbered by layer, see :mod:`probekit.report.order`, and a narrow "out" panel at
the right for rows read from the model's output alone, ``source == "logits-topk"``);
:func:`subplots` makes the panels and :func:`layout` the title, legend and size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Sequence

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from ...hooks.points import Point
from ..order import place, point_order

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["PALETTE", "GREY", "TEMPLATE", "OUTPUT_TITLE", "Axes", "thin", "subplots", "legend_rows", "layout",
           "grid_height"]

PALETTE = qualitative.D3
GREY = "#7f7f7f"
TEMPLATE = "plotly_white"
OUTPUT_TITLE = "output<br>(top-k logits)"  # the x title of the output panel
_OUTPUT_TICKS = {"logits-topk": "top-k"}


@dataclass
class Axes:
    """x coordinates of every point: panel "pre" (0..k-1) and panel "lm" (layer number); rows
    of an output-only source (``"logits-topk"``) sit in panel "out", one x per source."""

    x: dict[str, tuple[str, float]] = field(default_factory=dict)
    ticks: dict[str, tuple[list[float], list[str]]] = field(default_factory=dict)
    streams: dict[str, str] = field(default_factory=dict)
    out: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, points: Iterable[str], outputs: Iterable[str] = ()) -> "Axes":
        """The axes for these hook points (repeats are fine) and output-only ``outputs`` sources."""
        ax = cls()
        outs = [s for s in dict.fromkeys(outputs) if s != "residual"]
        if outs:
            ax.out = {s: float(i) for i, s in enumerate(outs)}
            ax.ticks["out"] = (list(ax.out.values()), [_OUTPUT_TICKS.get(s, s) for s in outs])
        pts = point_order(points)
        pl = {p: place(p) for p in pts}
        pre = [p for p in pts if pl[p].panel == "pre"]
        lm = [p for p in pts if pl[p].panel == "lm"]
        labels: dict[float, str] = {}
        for i, p in enumerate(dict.fromkeys(pl[p].key for p in pre)):
            for q in pre:
                if pl[q].key == p:
                    ax.x[q] = ("pre", float(i))
                    labels[float(i)] = pl[q].label
        if pre:
            ax.ticks["pre"] = thin(labels, 10)
        finite = [pl[p].key[0] for p in lm if math.isfinite(pl[p].key[0])]
        top = max(finite, default=-1)
        after = sorted({pl[p].key for p in lm if not math.isfinite(pl[p].key[0])})
        labels = {}
        for p in lm:
            k = pl[p].key
            xv = float(k[0]) if math.isfinite(k[0]) else float(top + 1 + after.index(k))
            ax.x[p] = ("lm", xv)
            labels[xv] = pl[p].label
        if lm:
            ax.ticks["lm"] = thin(labels, 12)
        ax.streams = {p: pl[p].stream for p in pts}
        return ax

    @classmethod
    def of_table(cls, table: "pd.DataFrame") -> "Axes":
        """The axes of a normalised table: residual rows by hook point, other sources in the output panel."""
        sources = table["source"] if "source" in table.columns else ["residual"] * len(table)
        rows = list(zip(table.point, sources))
        ax = cls.of([p for p, s in rows if s == "residual"], outputs=[s for _, s in rows if s != "residual"])
        ax.streams.update({p: place(p).stream for p, s in rows if s != "residual" and p not in ax.streams})
        return ax

    def locate(self, point: str, source: str = "residual") -> tuple[str, float]:
        """(panel, x) of one row: an output-only source in the output panel, else its hook point."""
        return ("out", self.out[source]) if source in self.out else self.x[point]

    def located(self, table: "pd.DataFrame") -> "pd.DataFrame":
        """``table`` with the columns ``_panel`` and ``_x`` (:meth:`locate` of every row)."""
        sources = table["source"] if "source" in table.columns else ["residual"] * len(table)
        loc = [self.locate(p, s) for p, s in zip(table.point, sources)]
        return table.assign(_panel=[panel for panel, _ in loc], _x=[x for _, x in loc])

    @property
    def panels(self) -> list[str]:
        return [p for p in ("pre", "lm", "out") if p in self.ticks]

    def span(self, panel: str) -> tuple[float, float]:
        xs = list(self.out.values()) if panel == "out" else [v for p, v in self.x.values() if p == panel]
        return min(xs) - 0.5, max(xs) + 0.5

    def pre_title(self) -> str:
        names = {Point.parse(p).side for p, (panel, _) in self.x.items() if panel == "pre"}
        parts = [w for k, w in (("vision", "vision-tower layer"), ("qformer", "Q-Former layer (Q)"),
                               ("projector", "projector")) if k in names]
        return " → ".join(parts) or "before the language model"


def thin(labels: dict[float, str], most: int) -> tuple[list[float], list[str]]:
    """At most about ``most`` ticks, keeping the named ones (embed, norm, logits, projector)."""
    xs = sorted(labels)
    step = max(1, math.ceil(len(xs) / most))
    keep = [x for j, x in enumerate(xs) if j % step == 0 or not labels[x].split()[-1].isdigit()
            or j == len(xs) - 1]
    return keep, [labels[x] for x in keep]


def subplots(axes: Axes, rows: int = 1, row_heights: Sequence[float] | None = None,
             x_titles: dict[str, str] | None = None) -> tuple[go.Figure, dict[str, int]]:
    """A figure with one column per panel of ``axes`` and ``rows`` rows; returns it and the column of each panel."""
    panels = axes.panels or ["lm"]
    # the output panel is narrow (one column of markers per output source), the others share the rest
    out = min(0.3, 0.1 * len(axes.out)) if "out" in panels and len(panels) > 1 else 0.0
    rest = [p for p in panels if p != "out"]
    if len(rest) == 2:
        n_pre = len({v for p, v in axes.x.values() if p == "pre"}) + 1
        n_lm = len({v for p, v in axes.x.values() if p == "lm"}) + 1
        share = min(0.45, max(0.2, n_pre / (n_pre + n_lm)))
        widths = [share * (1 - out), (1 - share) * (1 - out)]
    else:
        widths = [1.0 - out] if rest else [1.0]
    widths += [out] if out else []
    # x axes are not "matched" across rows: plotly.js then skips the y autorange when the x
    # range is set (every panel shows [-1, 4]); equal ranges on every row do the same job
    fig = make_subplots(rows=rows, cols=len(panels), column_widths=widths, shared_yaxes=True,
                        row_heights=list(row_heights) if row_heights else None,
                        horizontal_spacing=0.04, vertical_spacing=0.08)
    titles = {"pre": axes.pre_title(), "lm": "language-model layer (output of block i)", "out": OUTPUT_TITLE}
    titles.update(x_titles or {})
    cols = {p: j + 1 for j, p in enumerate(panels)}
    for p, c in cols.items():
        vals, text = axes.ticks.get(p, ([], []))
        for r in range(1, rows + 1):
            fig.update_xaxes(tickmode="array", tickvals=vals, ticktext=text, row=r, col=c,
                             showgrid=True, zeroline=False, showticklabels=r == rows,
                             range=list(axes.span(p)) if p in axes.ticks else None)
        fig.update_xaxes(title_text=titles[p], row=rows, col=c)
    return fig, cols


def legend_rows(fig: go.Figure, width: int = 700) -> int:
    """About how many rows the horizontal legend takes at notebook width (~800 px)."""
    widths = [45 + 7 * len(str(tr.name)) for tr in fig.data if tr.showlegend is not False and tr.name]
    rows, used = (1, 0) if widths else (0, 0)
    for w in widths:
        if used and used + w > width:
            rows, used = rows + 1, 0
        used += w
    return rows


def layout(fig: go.Figure, title: str, height: int, legend_title: str | None = None) -> go.Figure:
    """Title top left, a horizontal legend above the plot (room made for its rows), the template."""
    n_legend = legend_rows(fig)
    fig.update_layout(
        template=TEMPLATE,
        title=dict(text=title, x=0.0, xanchor="left", y=1.0, yanchor="top", pad=dict(t=12),
                   yref="container", font=dict(size=16)),
        height=height + 22 * max(0, n_legend - 1),
        margin=dict(l=70, r=20, t=48 + 24 * n_legend, b=60),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0.0,
                    title=dict(text=legend_title) if legend_title else None),
        hovermode="closest",
        font=dict(size=12),
    )
    return fig


def grid_height(n_rows: int) -> int:
    """Pixel height of a heatmap with ``n_rows`` rows."""
    return int(min(1600, max(320, 22 * n_rows + 140)))
