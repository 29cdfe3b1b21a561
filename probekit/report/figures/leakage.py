"""Leakage per layer: curves with 95% CI bands, and a hook point × position heatmap.

Both take a leakage table (:func:`probekit.readout.probes.probe_layers`, :func:`probekit.scan`)
and return a :class:`plotly.graph_objects.Figure`; nothing here touches a model or torch.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ...errors import InputError
from ..order import point_order
from ..tables import check_metric, normalise
from ..text import LABELS, SHORT, ci_columns, fmt, fmt_ci, where
from .frame import PALETTE, Axes, grid_height, layout, subplots
from .traces import curve, groups, offsets, reference, styles

__all__ = ["leakage_curves", "leakage_heatmap"]


def leakage_curves(table: pd.DataFrame, metric: str = "accuracy", by: str = "position",
                   title: str | None = None) -> go.Figure:
    """Leakage per layer: one curve per ``by`` value (and source), 95% CI bands, a reference line.

    x is the LM layer; points before the language model (vision tower, Q-Former, projector)
    get their own panel on the left. Rows from ``source == "logits-topk"`` (probes on the
    output's top-k logits) are markers with error bars in a narrow panel at the right,
    "output (top-k logits)", in the colour of their position. For ``metric="accuracy"`` the
    grey dotted line is chance (the majority-class rate); for ``"mi_bits"`` it is the
    permuted-label floor of the estimator and the dash-dotted line H(Y), the most any estimate
    can reach.

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
    t = normalise(table)
    check_metric(t, metric)
    if by not in t.columns:
        raise InputError(f"by={by!r} is not a column of the table", fix='use by="position", "kind" or "source"')
    if t.empty:
        raise InputError("the leakage table is empty", fix="scan with labels to get a leakage table")
    ci = ci_columns(metric, t.columns)
    axes = Axes.of_table(t)
    t["_stream"] = [axes.streams[p] for p in t.point]
    fig, cols = subplots(axes)
    # the image path (vision tower -> projector) continues the residual stream: same name and colour
    t["_named"] = t["_stream"].replace({"image": "resid"})
    # a curve joins several kinds (embed, resid, norm): colour "by kind" means by that stream
    t["_by"] = t["_named"] if by == "kind" else t[by].astype(str)
    colors = styles(list(dict.fromkeys(t["_by"])), PALETTE)
    lm_streams = sorted(set(t._named))
    symbols = styles(["resid"] + [s for s in lm_streams if s != "resid"], ["circle", "square", "diamond", "x"])
    # when colour is not position, line style is
    pos_dash = styles(list(dict.fromkeys(t.position)), ["solid", "dot", "dashdot", "longdashdot"])
    seen: set[str] = set()
    parts = groups(t, ["position", "source", "_stream"])
    # output-only rows share their position's name and colour: the panel they sit in says what they are
    shift = offsets([k for k, _ in parts if k[1] != "residual"])
    for (position, source, stream), part in parts:
        named = part._named.iloc[0]
        label = [part._by.iloc[0]]
        if by != "position" and t.position.nunique() > 1:
            label.append(str(position))
        if len(lm_streams) > 1 and by != "kind":
            label.append(named)
        name = " · ".join(label)
        curve(fig, axes, cols, 1, part, metric, ci, name=name, color=colors[part._by.iloc[0]],
              dash="solid" if by == "position" else pos_dash[position], symbol=symbols[named],
              group=name, showlegend=name not in seen, hover=SHORT.get(metric, metric),
              dx=shift.get((position, source, stream), 0.0))
        seen.add(name)
    if metric == "accuracy":
        reference(fig, axes, cols, 1, t, "chance", name="chance (majority class)", dash="dot")
    elif metric == "mi_bits":
        reference(fig, axes, cols, 1, t, "mi_perm_bits", name="permuted-label floor", dash="dot")
        reference(fig, axes, cols, 1, t, "entropy_bits", name="H(Y): the most it can be", dash="dashdot")
    fig.update_yaxes(title_text=LABELS.get(metric, metric) + (", 95% CI" if ci else ""), row=1, col=1)
    if metric == "accuracy":
        vals = np.r_[t[ci[0]] if ci else t[metric], t["chance"] if "chance" in t else []].astype(float)
        lo = float(np.min(vals[np.isfinite(vals)])) if np.isfinite(vals).any() else 0.0
        # accuracy lives in [0, 1]; start a little below the lowest CI or chance, end at 1
        fig.update_yaxes(range=[max(0.0, math.floor(lo * 10) / 10 - 0.05), 1.02])
    what = {"accuracy": "How well a linear probe reads the label", "mi_bits": "What the hidden states reveal (bits)"}
    return layout(fig, title or f"{what.get(metric, metric)}, layer by layer", 460,
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
    t = normalise(table)
    check_metric(t, metric)
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
        text[i, j] = fmt(rec[metric])
        val = fmt_ci(rec[metric], rec[ci[0]], rec[ci[1]]) if ci else fmt(rec[metric], 3)
        hover[i, j] = f"<b>{where(rec['_row'], rec['position'])}</b><br>{SHORT.get(metric, metric)}: {val}"
    zmin, zmax = (None, None)
    if metric == "accuracy":
        zmin, zmax = (float(t["chance"].min()) if "chance" in t else 0.0), 1.0
    elif metric == "mi_bits":
        zmin = 0.0
        zmax = float(t["entropy_bits"].max()) if "entropy_bits" in t and t.entropy_bits.notna().any() else None
    fig = go.Figure(go.Heatmap(
        z=z, x=positions, y=rows, text=text, texttemplate="%{text}", hovertext=hover,
        hovertemplate="%{hovertext}<extra></extra>", colorscale="Blues", zmin=zmin, zmax=zmax,
        xgap=1, ygap=1, colorbar=dict(title=dict(text="bits" if metric == "mi_bits" else SHORT.get(metric, metric),
                                                 side="right"), thickness=14),
    ))
    fig.update_yaxes(title_text="hook point (input at the top)", autorange="reversed", type="category")
    fig.update_xaxes(title_text="token position", side="bottom", type="category")
    what = {"accuracy": "Probe accuracy", "mi_bits": "Mutual information (bits, lower bound)"}
    fig = layout(fig, title or f"{what.get(metric, metric)} per hook point and position", grid_height(len(rows)))
    fig.update_layout(margin=dict(t=60))
    return fig
