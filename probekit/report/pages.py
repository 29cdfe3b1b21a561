"""The two pages a report writes (a scan, a comparison) and their notebook views.

Each is a jinja2 template filled from the report object (:class:`~probekit.report.ScanReport`
or :class:`~probekit.report.Comparison`, used through their attributes only), plus the rows
of its HTML tables: estimates with their CI in one cell, ``0.93 [0.90, 0.95]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..readout.significance import add_verdicts
from .html import Markup, escape, figure_div, html_table, kv_table, notebook_js, page, raw_table, render, summary_div
from .order import point_order
from .text import SHORT, ci_columns, ci_text, fmt, fmt_ci, fmt_p, role_names

__all__ = ["CAPTIONS", "TITLES", "SCAN_TITLE", "leakage_rows", "paired_rows", "scan_page", "scan_notebook",
           "comparison_page", "comparison_notebook"]

TITLES = {"leakage": "Probe accuracy per layer", "mi": "Mutual information per layer",
          "heatmap": "Accuracy per point and position", "lens": "Logit lens", "targets": "Target tokens",
          "ladder": "Leakage ladder"}
CAPTIONS = {
    "leakage": "Held-out accuracy of a linear probe per layer, 95% CI as a band. Grey dotted: chance "
               "(majority class). Right panel, output (top-k logits): the same probe on the output's top-k logits "
               "only. Filled markers: points that leak after the family-wise correction over all points (MI bound above the "
               "floor); open: not significant.",
    "mi": "Mutual information between hidden state and label, as a held-out probe lower bound "
          "H(Y) − CE in bits, 95% bootstrap CI. Grey dotted: the same estimate on permuted labels "
          "(the estimator's floor); dash-dotted: H(Y), the most any estimate can reach. Filled markers: points "
          "that leak after correction; open: not significant.",
    "heatmap": "Probe accuracy per hook point (rows, input at the top) and token position (columns).",
    "lens": "Logit lens: the most probable next token when each layer's residual stream is decoded "
            "with the model's own final norm and unembedding; colour = its probability.",
    "targets": "Logit lens: rank (1 = the top token) and probability of each target string's first "
               "token per layer; probability with a 95% CI over samples.",
    "ladder": "The leakage ladder: the same probe on the residual stream and the tuned-lens projection per "
              "layer (left) and on the output's top-k log-probabilities (right; k = 2 are the answer tokens); "
              "95% CIs, grey dotted: chance.",
}

_SCAN_BODY = """\
{{ summary }}
{% if notes %}
<div class="notes"><b>Notes</b><ul>{% for n in notes %}<li>{{ n }}</li>{% endfor %}</ul></div>
{% endif %}
<h2>Model and data</h2>
{{ model }}
{{ data }}
{% for f in figures %}
<h2>{{ f.title }}</h2>{{ f.div }}<p class='caption'>{{ f.caption }}</p>
{% endfor %}
{% if leakage %}
<h2>Leakage table</h2>{{ leakage }}
<details><summary>all columns</summary>{{ everything }}</details>
{% endif %}
{% for t in tables %}
<details><summary>{{ t.name }} table ({{ t.n }} rows)</summary>{{ t.html }}</details>
{% endfor %}
<h2>Settings</h2>{{ settings }}"""

_COMPARISON_BODY = """\
{{ summary }}
{% for f in figures %}
<h2>{{ f.title }}</h2>{{ f.div }}<p class='caption'>Top: both models with 95% CIs. Bottom: {{ tuned }} − {{ base }}; \
its CI combines the two CIs assuming independent estimates.</p>
{% endfor %}
<h2>Paired table</h2>{{ table }}
{% for side in sides %}
<h2>{{ side.name }}: settings and data</h2>{{ side.settings }}{{ side.data }}\
{% if side.notes %}{{ nl }}<div class="notes">{{ side.notes }}</div>{% endif %}{% if not loop.last %}{{ nl }}{% endif %}
{% endfor %}"""


def leakage_rows(table: pd.DataFrame) -> tuple[list[dict], list[tuple[str, str]], list[str]]:
    """The rows of a normalised leakage table as cell text (each estimate with its CI in one
    cell: ``0.93 [0.90, 0.95]``), with the verdict per row; returns rows, (key, heading)
    columns present, and the numeric keys.

    Ten columns at most, so that the table fits a page 1000 px wide: the source is written
    beside the hook point (``logits (logits-topk)``), the permuted-label floor beside H(Y)
    (``-0.010 / 1.00``) and the selectivity beside the control accuracy (``0.52 (0.41)``);
    each row keeps every value under its own key as well.
    """
    t = add_verdicts(table) if "accuracy" in table.columns else table
    t = t.iloc[np.argsort([point_order(t.point).index(p) for p in t.point], kind="stable")]
    rows = []
    for rec in t.to_dict("records"):
        row = {
            "point": rec["point"], "position": rec["position"], "source": rec["source"],
            "hook": rec["point"] if rec["source"] == "residual" else f"{rec['point']} ({rec['source']})",
            "n": "" if pd.isna(rec.get("n", np.nan)) else int(rec["n"]),
            "accuracy": ci_text(rec, "accuracy") if "accuracy" in rec else "",
            "chance": fmt(rec.get("chance")),
            "mi_bits": ci_text(rec, "mi_bits") if "mi_bits" in rec else "",
            "entropy_bits": fmt(rec.get("entropy_bits")),
            "mi_perm_bits": fmt(rec.get("mi_perm_bits"), 3),
            "control_accuracy": fmt(rec.get("control_accuracy")),
            "selectivity": fmt(rec.get("selectivity")),
            "p_adjusted": fmt_p(rec.get("p_adjusted")),
            "leaks": "yes" if rec.get("leaks") is True or rec.get("leaks") == 1 else _power(rec.get("mde_accuracy")),
        }
        row["floor_entropy"] = " / ".join(row[k] for k in ("mi_perm_bits", "entropy_bits") if k in rec)
        row["control"] = row["control_accuracy"] + (f" ({row['selectivity']})" if "selectivity" in rec else "")
        rows.append(row)
    floor = [w for k, w in (("mi_perm_bits", "permuted floor"), ("entropy_bits", "H(Y)")) if k in t.columns]
    control = "control acc. (selectivity)" if "selectivity" in t.columns else "control acc."
    columns = [("hook", "hook point"), ("position", "position"), ("n", "n"),
               ("accuracy", "accuracy [95% CI]"), ("chance", "chance"), ("mi_bits", "MI bits [95% CI]"),
               ("floor_entropy", " / ".join(floor) + " bits"), ("control", control),
               ("p_adjusted", "p (family-wise)"), ("leaks", "leaks (else: would detect)")]
    needs = {"hook": "point", "position": "position", "floor_entropy": ("mi_perm_bits", "entropy_bits"),
             "control": "control_accuracy"}
    present = [c for c in columns if any(k in t.columns for k in np.atleast_1d(needs.get(c[0], c[0])))]
    return rows, present, [c for c, _ in present if c not in ("hook", "position")]


def _power(mde: Any) -> str:
    """The cell of a row that does not leak: the accuracy its test would have detected (80% power)."""
    if mde is None or pd.isna(mde):
        return ""
    return "no (could detect nothing)" if float(mde) >= 1 else f"no (≥ {float(mde):.2f})"


def paired_rows(table: pd.DataFrame, metric: str, names: tuple[str, str]
                ) -> tuple[list[dict], list[tuple[str, str]], list[str]]:
    """The rows of a :class:`~probekit.report.Comparison` table as cell text: base, tuned and
    their difference, each with its CI."""
    lo, hi = ci_columns(metric)
    rows = []
    for rec in table.to_dict("records"):
        rows.append({"point": rec["point"], "position": rec["position"], "source": rec["source"],
                     "base": fmt_ci(rec.get(f"{metric}_base"), rec.get(f"{lo}_base"), rec.get(f"{hi}_base")),
                     "tuned": fmt_ci(rec.get(f"{metric}_tuned"), rec.get(f"{lo}_tuned"), rec.get(f"{hi}_tuned")),
                     "diff": fmt_ci(rec["diff"], rec["diff_lo"], rec["diff_hi"])})
    label = SHORT.get(metric, metric)
    cols = [("point", "hook point"), ("position", "position"), ("source", "source"),
            ("base", f"{names[0]} {label} [95% CI]"), ("tuned", f"{names[1]} {label} [95% CI]"),
            ("diff", f"{names[1]} − {names[0]} [95% CI]")]
    if set(table.source) == {"residual"}:
        cols = [c for c in cols if c[0] != "source"]
    return rows, cols, ["base", "tuned", "diff"]


SCAN_TITLE = "probekit scan report"


def scan_page(report: Any, title: str | None = None, intro: str | None = None) -> str:
    """The self-contained page of a scan report, titled ``title`` (default :data:`SCAN_TITLE`),
    with an ``intro`` paragraph under the title when given."""
    model = report.settings.get("model", "model")
    leakage = everything = None
    if report.has_leakage:
        leakage = html_table(*leakage_rows(report.table), cls="fit")
        everything = raw_table(report.table)
    body = render(
        _SCAN_BODY, summary=summary_div(report.summary()), notes=report.notes,
        model=kv_table({"model": model, **{k: v for k, v in report.settings.items()
                                           if k in ("family", "dtype", "device")}}),
        data=kv_table(report.data),
        figures=[{"title": TITLES[k], "div": figure_div(f), "caption": CAPTIONS[k]} for k, f in report.figures().items()],
        leakage=leakage, everything=everything,
        tables=[{"name": name, "n": len(df), "html": raw_table(df)} for name in ("lens", "targets", "ladder")
                if (df := getattr(report, name)) is not None and not df.empty],
        settings=kv_table(report.settings))
    return page(title or SCAN_TITLE, f"{model}", body, intro=intro)


def scan_notebook(report: Any, kind: str | None) -> str:
    """A scan report in a notebook: the verdict, notes, the figure of ``kind``, the top rows."""
    parts = [f"<p><b>{escape(report.summary().splitlines()[0])}</b></p>"]
    if report.notes:
        parts.append("<ul>" + "".join(f"<li>{escape(n)}</li>" for n in report.notes) + "</ul>")
    if kind is not None:
        parts.append(f"{notebook_js()}{figure_div(report.figure(kind))}")
    if report.has_leakage:
        rows, cols, num = leakage_rows(report.table)
        key = {(r["point"], r["position"], r["source"]): i for i, r in enumerate(rows)}
        t = report.table.sort_values("accuracy", ascending=False).head(5)
        top = [rows[key[(p, q, s)]] for p, q, s in zip(t.point, t.position, t.source)]
        parts.append(f"<p>Rows with the highest accuracy ({len(top)} of {len(rows)}); <code>.table</code> has them all:</p>"
                     f"{html_table(top, cols, num)}")
    return "<div>" + "\n".join(parts) + "</div>"


def comparison_page(c: Any, title: str | None = None, intro: str | None = None) -> str:
    """The self-contained page of a :class:`~probekit.report.Comparison`, titled ``title``
    (default ``probekit comparison: base vs tuned``), with an ``intro`` paragraph when given."""
    nb, nt = c.names
    metrics = [c.metric] + [m for m in ("accuracy", "mi_bits") if m != c.metric and f"{m}_diff" in c.table.columns]
    headings = {"accuracy": "Probe accuracy", "mi_bits": "Mutual information (bits)"}
    roles = role_names(c.names)
    body = render(
        _COMPARISON_BODY, summary=summary_div(c.summary(), bold=3), base=nb, tuned=nt,
        figures=[{"title": headings.get(m, m), "div": figure_div(c.figure(m))} for m in metrics],
        table=html_table(*paired_rows(c.table, c.metric, c.names)),
        sides=[{"name": name, "settings": kv_table(rep.settings), "data": kv_table(rep.data),
                "notes": Markup("<br>".join(escape(n) for n in rep.notes))} for name, rep in zip(roles, (c.base, c.tuned))],
        nl="\n")
    sub = " vs ".join(f"{role}: {rep.settings.get('model', name)}"
                      + (f" (fingerprint {rep.settings['model_fingerprint']})" if rep.settings.get("model_fingerprint") else "")
                      for role, name, rep in ((roles[0], nb, c.base), (roles[1], nt, c.tuned)))
    return page(title or f"probekit comparison: {roles[0]} vs {roles[1]}", sub, body, intro=intro)


def comparison_notebook(c: Any) -> str:
    """A comparison in a notebook: the summary, the figure, the rows that changed most."""
    rows, cols, num = paired_rows(c.table, c.metric, c.names)
    order = c.table["diff"].abs().sort_values(ascending=False).index[:5]
    top = [rows[i] for i in order]
    lines = "".join(f"<p>{escape(x)}</p>" for x in c.summary().splitlines())
    # f-strings, not +: adding a str to a Markup fragment would escape the str
    return (f"<div>{lines}{notebook_js()}{figure_div(c.figure())}"
            f"<p>Largest changes ({len(top)} of {len(rows)} rows); <code>.table</code> has them all:</p>"
            f"{html_table(top, cols, num)}</div>")
