"""The steering trade-off figure: cost (KL on clean inputs) against what a retrained probe still reads.

It draws the tables of :func:`probekit.steering.sweep` and
:class:`probekit.steering.EvalReport`; ``probekit.steering.tradeoff_figure`` is this function.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

from ...errors import InputError

__all__ = ["tradeoff_figure"]


_Y = {"abs_excess": ("max |probe accuracy - chance| over layers", 0.0, "chance (0)"),
      "accuracy": ("max probe accuracy over layers", None, "chance"),
      "mi": ("max mutual information over layers (bits)", 0.0, "0 bits")}


def tradeoff_figure(df: Any, y: str = "abs_excess", title: str | None = None) -> go.Figure:
    """Cost (KL on clean inputs, x) against leakage (y), one labelled marker per setting.

    ``y="abs_excess"`` (default) plots the worst layer's ``|accuracy - chance|``, so a probe
    driven below chance does not pass for suppression; ``"accuracy"`` and ``"mi"`` plot the
    worst layer's accuracy or mutual information. The KL's 95% CI are horizontal error bars;
    a marker shows no intervention at KL = 0 and a dashed line the floor (chance, or 0). The
    subtitle says how many held-out images were evaluated, and warns in red when the
    direction was fitted on evaluation images. ``df`` is :func:`sweep`'s output or an
    :class:`~probekit.steering.evaluation.EvalReport`. Returns a plotly Figure.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"label": ["alpha=1"], "kl_mean": [0.01], "kl_lo": [0.0], "kl_hi": [0.02],
        ...                    "abs_excess_after_max": [0.1], "abs_excess_before_max": [0.49], "chance": [0.5],
        ...                    "split": ["seeded"], "n_fit": [100], "n_eval": [100], "fit_overlap": [0]})
        >>> fig = tradeoff_figure(df)
        >>> fig.layout.xaxis.title.text, fig.layout.yaxis.title.text
        ('KL on clean inputs (nats)', 'max |probe accuracy - chance| over layers')
    """
    if hasattr(df, "summary") and hasattr(df, "suppression"):  # an EvalReport (duck-typed: report does not import steering)
        df = df.summary()
    if y not in _Y:
        raise InputError(f"y must be one of {sorted(_Y)}, got {y!r}", fix="use y='abs_excess', 'accuracy' or 'mi'")
    need = {"label", "kl_mean", f"{y}_after_max", f"{y}_before_max"}
    missing = need - set(df.columns)
    if missing:
        raise InputError(f"the table lacks columns {sorted(missing)}", fix="pass the output of probekit.steering.sweep")
    ycol = f"{y}_after_max"
    err = None
    if {"kl_lo", "kl_hi"} <= set(df.columns):
        err = dict(type="data", symmetric=False, array=(df.kl_hi - df.kl_mean).clip(lower=0).tolist(),
                   arrayminus=(df.kl_mean - df.kl_lo).clip(lower=0).tolist(), thickness=1)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=df.kl_mean, y=df[ycol], mode="markers+text", text=df.label.astype(str),
                             textposition="top center", error_x=err, name="intervention",
                             marker=dict(size=10)))
    fig.add_trace(go.Scatter(x=[0.0], y=[float(df[f"{y}_before_max"].max())], mode="markers+text", text=["none"],
                             textposition="top center", name="no intervention", marker=dict(size=10, symbol="x")))
    axis, floor, floor_text = _Y[y]
    if floor is None:
        floor = float(df["chance"].max()) if "chance" in df else 0.5
    fig.add_hline(y=floor, line_dash="dash", annotation_text=floor_text)
    fig.update_layout(title=title or "Suppression vs cost", xaxis_title="KL on clean inputs (nats)",
                      yaxis_title=axis, template="plotly_white")
    note = _data_note(df)
    if note:
        overlap = "fit_overlap" in df and bool((pd.to_numeric(df.fit_overlap, errors="coerce").fillna(0) > 0).any())
        fig.add_annotation(text=note, xref="paper", yref="paper", x=0, y=1.06, showarrow=False, align="left",
                           font=dict(color="red" if overlap else "grey"))
    return fig


def _data_note(df: pd.DataFrame) -> str:
    """'evaluated on 100 held-out images (seeded split; fitted on 100)' or a warning."""
    if "n_eval" not in df:
        return ""
    r = df.iloc[0]
    k = pd.to_numeric(pd.Series(df.get("fit_overlap", [None])), errors="coerce").max()
    if k and k > 0:
        return f"WARNING: fitted on {int(k)} of the {r.n_eval} evaluation images: suppression is overstated"
    fitted = "" if pd.isna(r.get("n_fit")) else f"; fitted on {int(r.n_fit)}"
    where = "held-out " if r.get("fit_overlap") == 0 else ""
    return f"evaluated on {r.n_eval} {where}images ({r.get('split', 'unknown')} split{fitted})"
