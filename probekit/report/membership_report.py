"""The result of :func:`probekit.membership`: the guard and the verdict first, a per-layer table, a figure, HTML."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..readout.localise import localise, lowest
from ..readout.significance import drop_nulls
from .figures.membership import membership_figure
from .html import figure_div, html_table, kv_table, page, summary_div
from .serialise import atomic_write, dump_report
from .text import fmt, fmt_ci, fmt_p

__all__ = ["MembershipReport"]


@dataclass(eq=False)
class MembershipReport:
    """Membership readouts per layer (``table``), the blind baseline (``guard``), the causal shares of each
    layer when a base model was given (``attribution``), and what was run (``settings``)."""

    table: pd.DataFrame
    guard: pd.DataFrame | None = None
    attribution: pd.DataFrame | None = None
    settings: dict = field(default_factory=dict)

    @property
    def localisation(self) -> pd.DataFrame:
        """Down to which layer the detected leak is formed: the patching rows in a fixed sequence from the output
        down (:func:`~probekit.readout.localise.localise`; empty without patching rows)."""
        return localise(self.table, last=self.settings.get("last_point"))

    @property
    def confounded(self) -> bool:
        """Whether the blind baseline tells members from non-members: a distribution shift, not memorisation."""
        return self.guard is not None and bool(self.guard.detected.any())

    def summary(self) -> str:
        """Guard first, then the verdict (or the null with its power), then the output attacks and the best layer."""
        t = self.table
        lines = []
        if self.confounded:
            g = self.guard[self.guard.detected].iloc[0]
            lines.append(f"Confounded: members and non-members differ before any model reads them (blind baseline on "
                         f"{g.point}: AUC {fmt_ci(g.auc, g.auc_lo, g.auc_hi)}); the rows below measure that shift, "
                         "not memorisation")
        hits = t[t.detected]
        m = int(t.p_value.notna().sum())
        if len(hits):
            inner = hits[~hits.source.str.startswith("output")]
            if len(inner):  # the shallowest detected layer (rows are ordered by source first, then depth)
                depth = inner.point.str.extract(r"\.(\d+)\.", expand=False).astype(float).fillna(float("inf"))
                r = inner.loc[depth.sort_values(kind="stable").index[0]]
                first = f"; first layer: {r.point} ({r.source}, {r.score})"
            else:
                first = "; at the output only"
            lines.append(f"Membership detected at {len(hits)} of {m} rows (permutation test, family-wise 0.05){first}")
            loc = self.localisation
            if len(loc):
                low = lowest(loc)
                lines.append((f"Localised: part of the leak is formed by {low} (patching there moves the member / "
                              "non-member gap; " if low else "Not localised below the last layer (patching at "
                              f"{loc.point.iloc[0]} does not move the member / non-member gap detectably; ")
                             + f"fixed sequence from the output down: {_steps(loc)}; family-wise 0.05)")
        else:
            mde = float(t.mde_auc.max())
            lines.append(f"Inconclusive: no membership detected at any of {m} rows, and with this few samples or groups "
                         "nothing could have been" if mde >= 1 else
                         f"No membership detected at any of {m} rows (family-wise test; would have detected "
                         f"AUC >= {mde:.2f} at 80% power)")
        for r in t[t.source == "output"].itertuples():
            lines.append(f"Output attack {r.score}: AUC {fmt_ci(r.auc, r.auc_lo, r.auc_hi)}, TPR@1%FPR {fmt(r.tpr_at_1fpr)}, "
                         f"p (family-wise) {fmt_p(r.p_adjusted)}{' detected' if r.detected else ''}")
        inner = t[~t.source.str.startswith("output")]
        if len(inner):
            b = inner.loc[inner.auc.idxmax()]
            lines.append(f"Highest layer-wise AUC: {b.point} ({b.source}, {b.score}) {fmt_ci(b.auc, b.auc_lo, b.auc_hi)}")
        if self.attribution is not None and self.attribution.share_tuned.notna().any():
            a = self.attribution.loc[self.attribution.share_tuned.idxmax()]
            lines.append(f"Patching the base model's residual in at {a.point} removes {a.share_tuned:.0%} "
                         f"[{a.share_tuned_lo:.0%}, {a.share_tuned_hi:.0%}] of the member / non-member loss gap")
        return "\n".join(lines)

    def figure(self) -> Any:
        return membership_figure(self.table)

    def to_json(self) -> str:
        return dump_report("membership", {"table": self.table, "guard": self.guard, "attribution": self.attribution},
                           self.settings, {}, [])

    def to_html(self, title: str = "probekit membership report") -> str:
        cols = [("point", "point"), ("source", "source"), ("score", "score"), ("auc", "AUC [95% CI]"),
                ("tpr", "TPR@1%FPR"), ("p", "p (family-wise)"), ("detected", "detected (else: would detect)")]

        def rows(t: pd.DataFrame) -> list[dict]:
            return [{"point": r.point, "source": r.source, "score": r.score, "auc": fmt_ci(r.auc, r.auc_lo, r.auc_hi),
                     "tpr": fmt(r.tpr_at_1fpr), "p": fmt_p(r.p_adjusted),
                     "detected": "yes" if r.detected else ("no (could detect nothing)" if r.mde_auc >= 1
                                                            else f"no (≥ {r.mde_auc:.2f})")} for r in t.itertuples()]

        parts = [str(summary_div(self.summary(), bold=2 if self.confounded else 1)),
                 "<h2>Blind baseline (distribution-shift guard)</h2>",
                 str(html_table(rows(self.guard), cols, cls="fit")) if self.guard is not None else "<p>not run</p>",
                 "<h2>Membership per layer</h2>", str(figure_div(self.figure())),
                 str(html_table(rows(self.table), cols, cls="fit"))]
        loc = self.localisation
        if len(loc):
            parts += ["<h2>Where it is formed: the patching rows in a fixed sequence from the output down</h2>",
                      loc.to_html(index=False, float_format=lambda v: f"{v:.3g}", border=0)]
        if self.attribution is not None:
            parts += ["<h2>Causal share of each layer (activation patching)</h2>",
                      drop_nulls(self.attribution).to_html(index=False, float_format=lambda v: f"{v:.3g}", border=0)]
        parts += ["<h2>Settings</h2>", str(kv_table(self.settings))]
        return page(title, f"model {self.settings.get('model', '')}", "\n".join(parts))

    def save(self, path: str | Path) -> Path:
        """Write the HTML report (``.html``) or the JSON (``.json``), atomically."""
        text = self.to_json() if str(path).endswith(".json") else self.to_html()
        return atomic_write(path, text)

    def __repr__(self) -> str:
        return f"MembershipReport(model={self.settings.get('model')!r}, rows={len(self.table)}, " \
               f"confounded={self.confounded})"


def _steps(loc: pd.DataFrame) -> str:
    """The sequence as tested: each layer's p, up to the first that failed."""
    return ", ".join(f"{r.point} p {fmt_p(r.p)}" for r in loc[loc.tested].itertuples())
