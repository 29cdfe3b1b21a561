"""Plotly figures for leakage tables, logit-lens tables and base/tuned comparisons.

Every function takes a plain :class:`pandas.DataFrame` (the tables of
:func:`probekit.readout.probes.probe_layers`, :meth:`probekit.readout.lens.LogitLens.top_k`
and :meth:`~probekit.readout.lens.LogitLens.target_ranks`) and returns a
:class:`plotly.graph_objects.Figure`; nothing here touches a model or torch.

Hook points are placed on the x axis by their name, not by the ``layer`` column, because
the readout numbers vision layers too (``vision.3.resid`` has layer 3): language-model
points (``lm.embed``, ``lm.{i}.*``, ``lm.norm``, ``logits``) go on a numeric "LM layer"
axis, points before the language model (``vision.{i}.*``, ``qformer.{i}.*``, ``projector``)
on a narrower panel to its left, in the order the image passes through them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from .errors import InputError
from .hooks.points import Point

__all__ = [
    "leakage_curves",
    "leakage_heatmap",
    "lens_grid",
    "target_curves",
    "compare_curves",
    "paired_table",
    "ci_columns",
    "point_order",
    "fmt_ci",
    "where",
]

PALETTE = qualitative.D3
GREY = "#7f7f7f"
TEMPLATE = "plotly_white"
KEYS = ("point", "position", "source")
NO_POSITION = "—"  # shown for rows without a position (activations given as [n, d])
_LABELS = {
    "accuracy": "held-out probe accuracy (fraction correct)",
    "mi_bits": "mutual information, lower bound (bits)",
    "selectivity": "selectivity (accuracy − control accuracy)",
    "control_accuracy": "control-task accuracy (fraction)",
    "log_loss": "held-out cross-entropy (nats)",
    "prob": "probability",
}
_SHORT = {"accuracy": "accuracy", "mi_bits": "MI (bits)"}


# ---------------------------------------------------------------- tables


def ci_columns(metric: str, columns: Iterable[str] | None = None) -> tuple[str, str] | None:
    """Names of the 95% CI columns of ``metric`` (``mi_bits`` -> ``mi_lo``/``mi_hi``).

    Returns None when ``columns`` is given and lacks them.

    >>> ci_columns("mi_bits"), ci_columns("accuracy")
    (('mi_lo', 'mi_hi'), ('accuracy_lo', 'accuracy_hi'))
    """
    stem = "mi" if metric == "mi_bits" else metric
    lo, hi = f"{stem}_lo", f"{stem}_hi"
    if columns is not None and not {lo, hi} <= set(columns):
        return None
    return lo, hi


def _position_name(p: Any) -> str:
    return NO_POSITION if p is None or (not isinstance(p, str) and bool(pd.isna(p))) else str(p)


def where(point: Any, position: Any) -> str:
    """``"lm.3.resid @ last"``; just the point when it has no position.

    >>> where("lm.3.resid", "last"), where("projector", None)
    ('lm.3.resid @ last', 'projector')
    """
    pos = _position_name(position)
    return str(point) if pos == NO_POSITION else f"{point} @ {pos}"


def _normalise(table: pd.DataFrame, what: str = "table") -> pd.DataFrame:
    """A copy with ``position``/``source`` filled in; probe_layers has no ``source`` column."""
    if not isinstance(table, pd.DataFrame):
        raise InputError(f"{what} must be a pandas DataFrame, got {type(table).__name__}",
                         fix="pass the table returned by probekit.scan or probe_layers")
    if "point" not in table.columns:
        raise InputError(f"{what} has no 'point' column (columns: {list(table.columns)[:8]})",
                         fix="pass the table returned by probekit.scan or probe_layers")
    t = table.copy()
    # a [n, d] activation has no named position: probe_layers leaves it NaN
    t["position"] = t["position"].map(_position_name) if "position" in t.columns else NO_POSITION
    t["source"] = t["source"].fillna("residual").astype(str) if "source" in t.columns else "residual"
    return t.reset_index(drop=True)


def _check_metric(table: pd.DataFrame, metric: str) -> None:
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
    b, t = _normalise(base, f"the {names[0]} table"), _normalise(tuned, f"the {names[1]} table")
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


# ---------------------------------------------------------------- where a point goes

_PRE_GROUP = {"vision": 0, "qformer": 1}


@dataclass
class _Place:
    panel: str  # "pre" (before the language model) or "lm"
    key: tuple  # sort key within the panel
    label: str  # tick label
    stream: str  # curves connect points of one stream


def _place(point: str) -> _Place:
    pt = Point.parse(str(point))
    name = pt.name
    if pt.numbered:
        part, i, kind = pt.side, pt.layer, pt.kind
        if part == "lm":
            return _Place("lm", (i, 0), str(i), "resid" if kind == "resid" else kind)
        label = {"vision": "", "qformer": "Q"}[part] + str(i)
        # the vision tower and the Q-Former are one path from pixels to the LM: one curve
        return _Place("pre", (_PRE_GROUP[part], i, kind), label if kind in ("resid", "xattn") else f"{label} {kind}",
                      "image")
    if name == "lm.embed":
        return _Place("lm", (-1, 0), "embed", "resid")
    if name == "lm.norm":
        return _Place("lm", (math.inf, 0), "norm", "resid")
    if name.startswith("logits"):
        return _Place("lm", (math.inf, 1), "logits", "resid")
    if name == "projector":
        return _Place("pre", (2, 0, ""), "proj", "image")
    return _Place("pre", (3, 0, name), name, "image")


def point_order(points: Iterable[str]) -> list[str]:
    """Distinct hook points in the order the input flows through the model.

    >>> point_order(["lm.1.resid", "projector", "lm.embed", "logits", "vision.0.resid", "lm.0.resid"])
    ['vision.0.resid', 'projector', 'lm.embed', 'lm.0.resid', 'lm.1.resid', 'logits']
    """
    pts = list(dict.fromkeys(str(p) for p in points))
    pl = {p: _place(p) for p in pts}
    return sorted(pts, key=lambda p: (pl[p].panel == "lm", pl[p].key))


@dataclass
class _Axes:
    """x coordinates of every point: panel "pre" (0..k-1) and panel "lm" (layer number)."""

    x: dict[str, tuple[str, float]] = field(default_factory=dict)
    ticks: dict[str, tuple[list[float], list[str]]] = field(default_factory=dict)
    streams: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, points: Iterable[str]) -> "_Axes":
        ax = cls()
        pts = point_order(points)
        pl = {p: _place(p) for p in pts}
        pre = [p for p in pts if pl[p].panel == "pre"]
        lm = [p for p in pts if pl[p].panel == "lm"]
        labels: dict[float, str] = {}
        for i, p in enumerate(dict.fromkeys(pl[p].key for p in pre)):
            for q in pre:
                if pl[q].key == p:
                    ax.x[q] = ("pre", float(i))
                    labels[float(i)] = pl[q].label
        if pre:
            ax.ticks["pre"] = _thin(labels, 10)
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
            ax.ticks["lm"] = _thin(labels, 12)
        ax.streams = {p: pl[p].stream for p in pts}
        return ax

    @property
    def panels(self) -> list[str]:
        return [p for p in ("pre", "lm") if p in self.ticks]

    def span(self, panel: str) -> tuple[float, float]:
        xs = [v for p, v in self.x.values() if p == panel]
        return min(xs) - 0.5, max(xs) + 0.5

    def pre_title(self) -> str:
        names = {Point.parse(p).side for p, (panel, _) in self.x.items() if panel == "pre"}
        parts = [w for k, w in (("vision", "vision-tower layer"), ("qformer", "Q-Former layer (Q)"),
                               ("projector", "projector")) if k in names]
        return " → ".join(parts) or "before the language model"


def _thin(labels: dict[float, str], most: int) -> tuple[list[float], list[str]]:
    """At most about ``most`` ticks, keeping the named ones (embed, norm, logits, projector)."""
    xs = sorted(labels)
    step = max(1, math.ceil(len(xs) / most))
    keep = [x for j, x in enumerate(xs) if j % step == 0 or not labels[x].split()[-1].isdigit()
            or j == len(xs) - 1]
    return keep, [labels[x] for x in keep]


def _subplots(axes: _Axes, rows: int = 1, row_heights: Sequence[float] | None = None,
              x_titles: dict[str, str] | None = None) -> tuple[go.Figure, dict[str, int]]:
    panels = axes.panels or ["lm"]
    if len(panels) == 2:
        n_pre = len({v for p, v in axes.x.values() if p == "pre"}) + 1
        n_lm = len({v for p, v in axes.x.values() if p == "lm"}) + 1
        share = min(0.45, max(0.2, n_pre / (n_pre + n_lm)))
        widths = [share, 1 - share]
    else:
        widths = [1.0]
    # x axes are not "matched" across rows: plotly.js then skips the y autorange when the x
    # range is set (every panel shows [-1, 4]); equal ranges on every row do the same job
    fig = make_subplots(rows=rows, cols=len(panels), column_widths=widths, shared_yaxes=True,
                        row_heights=list(row_heights) if row_heights else None,
                        horizontal_spacing=0.04, vertical_spacing=0.08)
    titles = {"pre": axes.pre_title(), "lm": "language-model layer (output of block i)"}
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


def _legend_rows(fig: go.Figure, width: int = 700) -> int:
    """About how many rows the horizontal legend takes at notebook width (~800 px)."""
    widths = [45 + 7 * len(str(tr.name)) for tr in fig.data if tr.showlegend is not False and tr.name]
    rows, used = (1, 0) if widths else (0, 0)
    for w in widths:
        if used and used + w > width:
            rows, used = rows + 1, 0
        used += w
    return rows


def _layout(fig: go.Figure, title: str, height: int, legend_title: str | None = None) -> go.Figure:
    legend_rows = _legend_rows(fig)
    fig.update_layout(
        template=TEMPLATE,
        title=dict(text=title, x=0.0, xanchor="left", y=1.0, yanchor="top", pad=dict(t=12),
                   yref="container", font=dict(size=16)),
        height=height + 22 * max(0, legend_rows - 1),
        margin=dict(l=70, r=20, t=48 + 24 * legend_rows, b=60),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0.0,
                    title=dict(text=legend_title) if legend_title else None),
        hovermode="closest",
        font=dict(size=12),
    )
    return fig


def _rgba(color: str, alpha: float) -> str:
    c = color.lstrip("#")
    r, g, b = (int(c[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _fmt(v: Any, digits: int = 2) -> str:
    try:
        if v is None or not np.isfinite(float(v)):
            return "–"
        return f"{round(float(v), digits) + 0.0:.{digits}f}"  # + 0.0: no "-0.00"
    except (TypeError, ValueError):
        return str(v)


def fmt_ci(v: Any, lo: Any, hi: Any, digits: int = 2) -> str:
    """``0.93 [0.90, 0.95]``; the bracket is left out when the CI is missing.

    >>> fmt_ci(0.934, 0.9, 0.951), fmt_ci(0.5, float("nan"), None)
    ('0.93 [0.90, 0.95]', '0.50')
    """
    s = _fmt(v, digits)
    if _fmt(lo) == "–" or _fmt(hi) == "–":
        return s
    return f"{s} [{_fmt(lo, digits)}, {_fmt(hi, digits)}]"


def _curve(fig: go.Figure, axes: _Axes, cols: dict[str, int], row: int, df: pd.DataFrame, y: str,
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
        text = [f"<b>{where(p, pos)}</b><br>{hover or y}: {fmt_ci(v, a, b) if ci else _fmt(v, 3)}"
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
                                     fillcolor=_rgba(color, 0.2), line=dict(width=0), mode="lines",
                                     hoverinfo="skip", showlegend=False, legendgroup=group,
                                     name=f"{name} 95% CI"), row=row, col=col)
            added += 1
        elif ci is not None and ok.any():
            error = dict(type="data", symmetric=False, array=hi - yv, arrayminus=yv - lo, color=color, thickness=1.5)
        if span and panel == "lm" and len(part) == 1 and np.isfinite(yv[0]):
            x0, x1 = axes.span("lm")
            if ci is not None and ok[0]:
                fig.add_trace(go.Scatter(x=[x0, x1, x1, x0], y=[hi[0], hi[0], lo[0], lo[0]], fill="toself",
                                         fillcolor=_rgba(color, 0.12), line=dict(width=0), mode="lines",
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


def _reference(fig: go.Figure, axes: _Axes, cols: dict[str, int], row: int, table: pd.DataFrame, column: str,
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


def _styles(values: Sequence[Any], options: Sequence[Any]) -> dict[Any, Any]:
    return {v: options[i % len(options)] for i, v in enumerate(values)}


def _groups(t: pd.DataFrame, keys: list[str]) -> list[tuple[tuple, pd.DataFrame]]:
    """groupby in a reading order: positions as they first appear, the residual source first."""
    first = {k: {v: i for i, v in enumerate(dict.fromkeys(t[k]))} for k in keys}

    def rank(key: tuple) -> tuple:
        return tuple((v != "residual", first[k][v]) if k == "source" else (0, first[k][v]) for k, v in zip(keys, key))

    return sorted(t.groupby(keys, sort=False), key=lambda kv: rank(kv[0]))


def _source_name(source: str) -> str:
    return "output top-k logits" if source == "logits-topk" else source


# ---------------------------------------------------------------- figures


def leakage_curves(table: pd.DataFrame, metric: str = "accuracy", by: str = "position",
                   title: str | None = None) -> go.Figure:
    """Leakage per layer: one curve per ``by`` value (and source), 95% CI bands, a reference line.

    x is the LM layer; points before the language model (vision tower, Q-Former, projector)
    get their own panel on the left. Curves from ``source == "logits-topk"`` (probes on the
    output's top-k logits) are dashed. For ``metric="accuracy"`` the grey dotted line is
    chance (the majority-class rate); for ``"mi_bits"`` it is the permuted-label floor of the
    estimator and the dash-dotted line H(Y), the most any estimate can reach.

    Args:
        table: a leakage table (:func:`probekit.readout.probes.probe_layers`, ``scan``).
        metric: ``"accuracy"``, ``"mi_bits"`` or any numeric column (CIs from
            ``{metric}_lo``/``_hi`` when present).
        by: the column that gets one colour per value (``"position"``, ``"kind"``, ``"source"``).

    Example:
        >>> import pandas as pd
        >>> t = pd.DataFrame({"point": [f"lm.{i}.resid" for i in range(4)], "position": "last",
        ...                   "accuracy": [.5, .6, .8, .9], "accuracy_lo": [.4, .5, .7, .85],
        ...                   "accuracy_hi": [.6, .7, .9, .95], "chance": .5})
        >>> fig = leakage_curves(t)
        >>> [tr.name for tr in fig.data]
        ['last 95% CI', 'last', 'chance (majority class)']
    """
    t = _normalise(table)
    _check_metric(t, metric)
    if by not in t.columns:
        raise InputError(f"by={by!r} is not a column of the table", fix='use by="position", "kind" or "source"')
    if t.empty:
        raise InputError("the leakage table is empty", fix="scan with labels to get a leakage table")
    ci = ci_columns(metric, t.columns)
    axes = _Axes.of(t.point)
    t["_stream"] = [axes.streams[p] for p in t.point]
    fig, cols = _subplots(axes)
    # the image path (vision tower -> projector) continues the residual stream: same name and colour
    t["_named"] = t["_stream"].replace({"image": "resid"})
    # a curve joins several kinds (embed, resid, norm): colour "by kind" means by that stream
    t["_by"] = t["_named"] if by == "kind" else t[by].astype(str)
    colors = _styles(list(dict.fromkeys(t["_by"])), PALETTE)
    lm_streams = sorted(set(t._named))
    symbols = _styles(["resid"] + [s for s in lm_streams if s != "resid"], ["circle", "square", "diamond", "x"])
    # "dash" is kept for the output-logits source; when colour is not position, style is
    pos_dash = _styles(list(dict.fromkeys(t.position)), ["solid", "dot", "dashdot", "longdashdot"])
    seen: set[str] = set()
    groups = _groups(t, ["position", "source", "_stream"])
    singles = [k for k, part in groups if k[1] != "residual" and len(part) == 1]
    for (position, source, stream), part in groups:
        named = part._named.iloc[0]
        label = [part._by.iloc[0]]
        if by != "position" and t.position.nunique() > 1:
            label.append(str(position))
        if len(lm_streams) > 1 and by != "kind":
            label.append(named)
        if source != "residual" and by != "source":
            label.append(_source_name(source))
        name = " · ".join(label)
        _curve(fig, axes, cols, 1, part, metric, ci, name=name, color=colors[part._by.iloc[0]],
               dash="dash" if source != "residual" else "solid" if by == "position" else pos_dash[position],
               symbol=symbols[named],
               group=name, showlegend=name not in seen, hover=_SHORT.get(metric, metric),
               span=source != "residual",
               dx=0.12 * (singles.index((position, source, stream)) - (len(singles) - 1) / 2)
               if (position, source, stream) in singles else 0.0)
        seen.add(name)
    res = t[t.source == "residual"] if (t.source == "residual").any() else t
    if metric == "accuracy":
        _reference(fig, axes, cols, 1, res, "chance", name="chance (majority class)", dash="dot")
    elif metric == "mi_bits":
        _reference(fig, axes, cols, 1, res, "mi_perm_bits", name="permuted-label floor", dash="dot")
        _reference(fig, axes, cols, 1, res, "entropy_bits", name="H(Y): the most it can be", dash="dashdot")
    fig.update_yaxes(title_text=_LABELS.get(metric, metric) + (", 95% CI" if ci else ""), row=1, col=1)
    if metric == "accuracy":
        vals = np.r_[t[ci[0]] if ci else t[metric], t["chance"] if "chance" in t else []].astype(float)
        lo = float(np.min(vals[np.isfinite(vals)])) if np.isfinite(vals).any() else 0.0
        # accuracy lives in [0, 1]; start a little below the lowest CI or chance, end at 1
        fig.update_yaxes(range=[max(0.0, math.floor(lo * 10) / 10 - 0.05), 1.02])
    what = {"accuracy": "How well a linear probe reads the label", "mi_bits": "What the hidden states reveal (bits)"}
    return _layout(fig, title or f"{what.get(metric, metric)}, layer by layer", 460,
                   legend_title=by if by != "position" else "position:")


def leakage_heatmap(table: pd.DataFrame, metric: str = "accuracy", title: str | None = None) -> go.Figure:
    """Hook point (rows, in model order) × position (columns) heatmap with the values written in.

    Rows from another ``source`` (``logits-topk``) get their own row labelled with it.
    The colour scale starts at chance for accuracy and at 0 for bits.

    Example:
        >>> import pandas as pd
        >>> t = pd.DataFrame({"point": ["lm.0.resid", "lm.0.resid", "lm.1.resid", "lm.1.resid"],
        ...                   "position": ["last", "image_mean"] * 2, "accuracy": [.5, .6, .8, .9]})
        >>> fig = leakage_heatmap(t)
        >>> fig.data[0].z.shape
        (2, 2)
    """
    t = _normalise(table)
    _check_metric(t, metric)
    if t.empty:
        raise InputError("the leakage table is empty", fix="scan with labels to get a leakage table")
    ci = ci_columns(metric, t.columns)
    t["_row"] = [p if s == "residual" else f"{p} ({s})" for p, s in zip(t.point, t.source)]
    order = {p: i for i, p in enumerate(point_order(t.point))}
    rows = sorted(set(t._row), key=lambda r: (order[r.split(" (")[0]], r))
    positions = list(dict.fromkeys(t.position))
    z = np.full((len(rows), len(positions)), np.nan)
    text = np.full(z.shape, "", dtype=object)
    hover = np.full(z.shape, "", dtype=object)
    ri, ci_ = {r: i for i, r in enumerate(rows)}, {p: j for j, p in enumerate(positions)}
    for rec in t.to_dict("records"):
        i, j = ri[rec["_row"]], ci_[rec["position"]]
        z[i, j] = rec[metric]
        text[i, j] = _fmt(rec[metric])
        val = fmt_ci(rec[metric], rec[ci[0]], rec[ci[1]]) if ci else _fmt(rec[metric], 3)
        hover[i, j] = f"<b>{where(rec['_row'], rec['position'])}</b><br>{_SHORT.get(metric, metric)}: {val}"
    zmin, zmax = (None, None)
    if metric == "accuracy":
        zmin, zmax = (float(t["chance"].min()) if "chance" in t else 0.0), 1.0
    elif metric == "mi_bits":
        zmin = 0.0
        zmax = float(t["entropy_bits"].max()) if "entropy_bits" in t and t.entropy_bits.notna().any() else None
    fig = go.Figure(go.Heatmap(
        z=z, x=positions, y=rows, text=text, texttemplate="%{text}", hovertext=hover,
        hovertemplate="%{hovertext}<extra></extra>", colorscale="Blues", zmin=zmin, zmax=zmax,
        xgap=1, ygap=1, colorbar=dict(title=dict(text="bits" if metric == "mi_bits" else _SHORT.get(metric, metric),
                                                 side="right"), thickness=14),
    ))
    fig.update_yaxes(title_text="hook point (input at the top)", autorange="reversed", type="category")
    fig.update_xaxes(title_text="token position", side="bottom", type="category")
    what = {"accuracy": "Probe accuracy", "mi_bits": "Mutual information (bits, lower bound)"}
    fig = _layout(fig, title or f"{what.get(metric, metric)} per hook point and position", _grid_height(len(rows)))
    fig.update_layout(margin=dict(t=60))
    return fig


def _grid_height(n_rows: int) -> int:
    return int(min(1600, max(320, 22 * n_rows + 140)))


def _token_text(tok: Any, width: int = 14) -> str:
    """A token as readable cell text: visible spaces and newlines, HTML escaped, truncated."""
    s = str(tok)
    s = s.replace("\n", "\\n").replace("\t", "\\t")
    if s.strip() == "":
        s = "␣" * len(s) if s else "∅"
    elif s.startswith(" "):
        s = "␣" + s[1:]
    if len(s) > width:
        s = s[: width - 1] + "…"
    # plotly renders a subset of HTML in text; tokens such as "<image>" must stay literal
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def lens_grid(lens: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Logit lens: the top-1 token per layer (rows) and position (columns), coloured by probability.

    ``lens`` is :meth:`probekit.readout.lens.LogitLens.top_k` output; with ``per_sample=True``
    tables the cell shows the most frequent top-1 token and its mean probability. Hover lists
    the top-k tokens. Spaces are shown as ``␣``.

    Example:
        >>> import pandas as pd
        >>> lens = pd.DataFrame({"point": ["lm.embed", "lm.0.resid"], "layer": [-1, 0],
        ...                      "position": "last", "rank": 1, "token_id": [5, 6],
        ...                      "token": [" a", "cat"], "prob": [0.1, 0.6]})
        >>> lens_grid(lens).data[0].text.tolist()
        [['␣a'], ['cat']]
    """
    t = _normalise(lens, "the lens table")
    need = {"rank", "token", "prob"} - set(t.columns)
    if need:
        raise InputError(f"the lens table lacks columns {sorted(need)}", fix="pass LogitLens(model).top_k(store)")
    if t.empty:
        raise InputError("the lens table is empty", fix="collect lm.*.resid points and run LogitLens.top_k")
    top = t[t["rank"] == t["rank"].min()]
    if "sample" in t.columns:
        def pick(g: pd.DataFrame) -> pd.Series:
            tok = g["token"].mode().iloc[0]
            return pd.Series({"token": tok, "prob": g.loc[g.token == tok, "prob"].mean(),
                              "share": (g.token == tok).mean()})
        top = top.groupby(["point", "position"], sort=False)[["token", "prob"]].apply(pick).reset_index()
    rows = point_order(top.point)
    positions = list(dict.fromkeys(top.position))
    z = np.full((len(rows), len(positions)), np.nan)
    text = np.full(z.shape, "", dtype=object)
    hover = np.full(z.shape, "", dtype=object)
    ri, cj = {r: i for i, r in enumerate(rows)}, {p: j for j, p in enumerate(positions)}
    ranked = t.sort_values("rank") if "sample" not in t.columns else None
    for rec in top.to_dict("records"):
        i, j = ri[rec["point"]], cj[rec["position"]]
        z[i, j] = rec["prob"]
        text[i, j] = _token_text(rec["token"])
        if ranked is not None:
            g = ranked[(ranked.point == rec["point"]) & (ranked.position == rec["position"])]
            lines = [f"{int(r)}. {_token_text(tk, 24)}  {_fmt(p, 3)}" for r, tk, p in zip(g["rank"], g.token, g.prob)]
        else:
            lines = [f"most frequent top-1: {_token_text(rec['token'], 24)} ({_fmt(100 * rec['share'], 0)}% of samples)",
                     f"its mean probability: {_fmt(rec['prob'], 3)}"]
        hover[i, j] = f"<b>{where(rec['point'], rec['position'])}</b><br>" + "<br>".join(lines)
    fig = go.Figure(go.Heatmap(
        z=z, x=positions, y=rows, text=text, texttemplate="%{text}", hovertext=hover,
        hovertemplate="%{hovertext}<extra></extra>", colorscale="Blues", zmin=0.0,
        zmax=max(0.05, float(np.nanmax(z))) if np.isfinite(z).any() else 1.0, xgap=1, ygap=1,
        colorbar=dict(title=dict(text="top-1 prob.", side="right"), thickness=14),
    ))
    fig.update_yaxes(title_text="hook point (input at the top)", autorange="reversed", type="category")
    fig.update_xaxes(title_text="token position", type="category")
    fig = _layout(fig, title or "Logit lens: the most likely next token at each layer", _grid_height(len(rows)))
    fig.update_layout(margin=dict(t=60))
    return fig


def target_curves(targets: pd.DataFrame, token_index: int = 0, title: str | None = None) -> go.Figure:
    """Rank (log scale, 1 at the top) and probability of each target string per layer.

    One curve per target and position (dashed for the second position, ...); the lower panel
    shows the mean probability with its 95% CI band. A target of several tokens is tracked
    by its token ``token_index`` (the first by default: what the model would say next).

    Example:
        >>> import pandas as pd
        >>> tg = pd.DataFrame({"point": ["lm.0.resid", "lm.1.resid"], "layer": [0, 1], "position": "last",
        ...                    "target": "alice", "token_index": 0, "rank_median": [900.0, 3.0],
        ...                    "prob": [0.001, 0.2], "prob_lo": [0.0, 0.15], "prob_hi": [0.002, 0.25]})
        >>> fig = target_curves(tg)
        >>> fig.layout.yaxis.type, len(fig.data)
        ('log', 3)
    """
    t = _normalise(targets, "the targets table")
    need = {"target", "rank_median"} - set(t.columns)
    if need:
        raise InputError(f"the targets table lacks columns {sorted(need)}",
                         fix="pass LogitLens(model).target_ranks(store, targets)")
    if "token_index" in t.columns:
        sel = t[t.token_index == token_index]
        if sel.empty:
            raise InputError(f"no target has a token at token_index={token_index}", fix="use token_index=0")
        t = sel
    if t.empty:
        raise InputError("the targets table is empty", fix="pass LogitLens(model).target_ranks(store, targets)")
    axes = _Axes.of(t.point)
    has_prob = "prob" in t.columns
    fig, cols = _subplots(axes, rows=2 if has_prob else 1, row_heights=[0.6, 0.4] if has_prob else None)
    colors = _styles(list(dict.fromkeys(t.target)), PALETTE)
    dashes = _styles(list(dict.fromkeys(t.position)), ["solid", "dash", "dot", "dashdot"])
    many = t.position.nunique() > 1
    for (target, position), part in t.groupby(["target", "position"], sort=False):
        tok = f" (token {part.token.iloc[0]!r})" if "token" in part.columns and token_index else ""
        name = f"“{target}”{tok}" + (f" @ {position}" if many else "")
        kw = dict(name=name, color=colors[target], dash=dashes[position], group=name)
        _curve(fig, axes, cols, 1, part, "rank_median", None, showlegend=True, hover="median rank", **kw)
        if has_prob:
            ci = ci_columns("prob", part.columns)
            _curve(fig, axes, cols, 2, part, "prob", ci, showlegend=False, hover="probability", **kw)
    for c in cols.values():
        fig.update_yaxes(type="log", autorange="reversed", row=1, col=c)
    fig.update_yaxes(title_text="median rank (1 = top token)", row=1, col=1)
    if has_prob:
        # plain decimals: plotly's default SI suffixes read "600µ" for 0.0006
        fig.update_yaxes(title_text="probability, 95% CI", rangemode="tozero", tickformat=".2~g", row=2, col=1)
    return _layout(fig, title or "Logit lens: how close each target is to being said", 560 if has_prob else 420)


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
        _check_metric(_normalise(tb), metric)
    paired = paired_table(base_table, tuned_table, [metric], names)
    ci = ci_columns(metric)
    has_ci = f"{ci[0]}_base" in paired.columns and f"{ci[0]}_tuned" in paired.columns
    axes = _Axes.of(paired.point)
    paired["_stream"] = [axes.streams[p] for p in paired.point]
    fig, cols = _subplots(axes, rows=2, row_heights=[0.58, 0.42])
    # colour = model, line style = position; "dash" is kept for the output-logits source
    dashes = _styles(list(dict.fromkeys(paired.position)), ["solid", "dot", "dashdot", "longdashdot"])
    colors = {names[0]: PALETTE[0], names[1]: PALETTE[1], "diff": "#333333"}
    labels = {names[0]: names[0], names[1]: names[1], "diff": f"{names[1]} − {names[0]}"}
    seen: set[str] = set()
    for (position, source, stream), part in _groups(paired, ["position", "source", "_stream"]):
        dash = "dash" if source != "residual" else dashes[position]
        for key, s in ((names[0], "base"), (names[1], "tuned"), ("diff", "diff")):
            if s == "diff":
                cur, row = part.rename(columns={f"{metric}_diff": "_y", f"{metric}_diff_lo": "_lo",
                                                f"{metric}_diff_hi": "_hi"}), 2
            else:
                cur, row = part.rename(columns={f"{metric}_{s}": "_y", f"{ci[0]}_{s}": "_lo", f"{ci[1]}_{s}": "_hi"}), 1
            _curve(fig, axes, cols, row, cur, "_y", ("_lo", "_hi") if has_ci else None, name=labels[key],
                   color=colors[key], dash=dash, group=labels[key], showlegend=labels[key] not in seen,
                   hover=labels[key], span=source != "residual")
            seen.add(labels[key])
    styles = {f"@ {p}": d for p, d in dashes.items()}
    if (paired.source != "residual").any():
        styles.update({_source_name(s): "dash" for s in set(paired.source) - {"residual"}})
    if len(styles) > 1:  # a grey key per line style; the colours are already in the legend
        for label, d in styles.items():
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=label, legendgroup=f"style {label}",
                                     line=dict(color=GREY, dash=d, width=2), hoverinfo="skip"), row=1, col=1)
    for c in cols.values():
        fig.add_hline(y=0, line=dict(color=GREY, width=1), row=2, col=c)
    if metric == "accuracy" and "chance_base" in paired.columns:
        ref = paired.assign(chance=paired[["chance_base", "chance_tuned"]].max(axis=1)
                            if "chance_tuned" in paired.columns else paired.chance_base)
        _reference(fig, axes, cols, 1, ref, "chance", name="chance (majority class)", dash="dot")
    fig.update_yaxes(title_text=_LABELS.get(metric, metric) + (", 95% CI" if has_ci else ""), row=1, col=1)
    fig.update_yaxes(title_text=f"difference ({names[1]} − {names[0]})", row=2, col=1)
    what = {"accuracy": "Probe accuracy", "mi_bits": "Mutual information (bits)"}.get(metric, metric)
    return _layout(fig, title or f"{what}: {role_names(names)[0]} vs {role_names(names)[1]}", 640)


def role_names(names: Sequence[str]) -> tuple[str, str]:
    """Labels that say which model is the base and which the tuned one, e.g. ``"A (base)"``.

    Example:
        >>> role_names(("base", "tuned")), role_names(("7b", "7b-ft"))
        (('base', 'tuned'), ('7b (base)', '7b-ft (tuned)'))
    """
    return tuple(n if n == role else f"{n} ({role})" for n, role in zip(names, ("base", "tuned")))  # type: ignore[return-value]
