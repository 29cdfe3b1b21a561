"""Logit-lens figures: the top-1 token per layer and position, and target strings' rank per layer.

``lens_grid`` draws :meth:`probekit.readout.lens.LogitLens.top_k`, ``target_curves``
:meth:`~probekit.readout.lens.LogitLens.target_ranks`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ...errors import InputError
from ..order import point_order
from ..tables import normalise
from ..text import ci_columns, fmt, token_text, where
from .frame import PALETTE, Axes, grid_height, layout, subplots
from .traces import curve, styles

__all__ = ["lens_grid", "target_curves"]


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
    t = normalise(lens, "the lens table")
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
        text[i, j] = token_text(rec["token"])
        if ranked is not None:
            g = ranked[(ranked.point == rec["point"]) & (ranked.position == rec["position"])]
            lines = [f"{int(r)}. {token_text(tk, 24)}  {fmt(p, 3)}" for r, tk, p in zip(g["rank"], g.token, g.prob)]
        else:
            lines = [f"most frequent top-1: {token_text(rec['token'], 24)} ({fmt(100 * rec['share'], 0)}% of samples)",
                     f"its mean probability: {fmt(rec['prob'], 3)}"]
        hover[i, j] = f"<b>{where(rec['point'], rec['position'])}</b><br>" + "<br>".join(lines)
    fig = go.Figure(go.Heatmap(
        z=z, x=positions, y=rows, text=text, texttemplate="%{text}", hovertext=hover,
        hovertemplate="%{hovertext}<extra></extra>", colorscale="Blues", zmin=0.0,
        zmax=max(0.05, float(np.nanmax(z))) if np.isfinite(z).any() else 1.0, xgap=1, ygap=1,
        colorbar=dict(title=dict(text="top-1 prob.", side="right"), thickness=14),
    ))
    fig.update_yaxes(title_text="hook point (input at the top)", autorange="reversed", type="category")
    fig.update_xaxes(title_text="token position", type="category")
    fig = layout(fig, title or "Logit lens: the most likely next token at each layer", grid_height(len(rows)))
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
    t = normalise(targets, "the targets table")
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
    axes = Axes.of(t.point)
    has_prob = "prob" in t.columns
    fig, cols = subplots(axes, rows=2 if has_prob else 1, row_heights=[0.6, 0.4] if has_prob else None)
    colors = styles(list(dict.fromkeys(t.target)), PALETTE)
    dashes = styles(list(dict.fromkeys(t.position)), ["solid", "dash", "dot", "dashdot"])
    many = t.position.nunique() > 1
    for (target, position), part in t.groupby(["target", "position"], sort=False):
        tok = f" (token {part.token.iloc[0]!r})" if "token" in part.columns and token_index else ""
        name = f"“{target}”{tok}" + (f" @ {position}" if many else "")
        kw = dict(name=name, color=colors[target], dash=dashes[position], group=name)
        curve(fig, axes, cols, 1, part, "rank_median", None, showlegend=True, hover="median rank", **kw)
        if has_prob:
            ci = ci_columns("prob", part.columns)
            curve(fig, axes, cols, 2, part, "prob", ci, showlegend=False, hover="probability", **kw)
    for c in cols.values():
        fig.update_yaxes(type="log", autorange="reversed", row=1, col=c)
    fig.update_yaxes(title_text="median rank (1 = top token)", row=1, col=1)
    if has_prob:
        # plain decimals: plotly's default SI suffixes read "600µ" for 0.0006
        fig.update_yaxes(title_text="probability, 95% CI", rangemode="tozero", tickformat=".2~g", row=2, col=1)
    return layout(fig, title or "Logit lens: how close each target is to being said", 560 if has_prob else 420)
