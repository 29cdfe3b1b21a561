"""Which samples a model was trained on, layer by layer (``probekit study membership [--small]``).

The organism (:mod:`.organism`): a tiny LLaVA fine-tuned to name its 16 member images, whose non-members carry the
same 16 names, beside a **control** fine-tuned the same way on third images, which cannot tell the sets apart.
For each seed the study runs :func:`probekit.membership` (the output attacks, the lens and probe rows per layer,
the patching rows, the distribution-shift guard and the one verdict) on the tuned model and on the control, and
the guard on a deliberately shifted split (brightened vs darkened images). What must hold: membership detected
on the tuned model, nothing on the control, and the shifted split called confounded first.

This study is also the worked example of "A new study" in ``docs/concepts.md``: one folder (this module and
:mod:`.organism`) plus one line in :data:`probekit.studies.REGISTRY`. It writes tables, no docs section.

Example:
    >>> from probekit.studies import get_study
    >>> get_study("membership").flags
    ('small',)
"""

from __future__ import annotations

import tempfile
import time

import pandas as pd

from ..base import Options, Outcome, Study

__all__ = ["STUDY", "summary_rows"]


def summary_rows(t: pd.DataFrame) -> dict:
    """One line of the summary table: what a report's table ``t`` detected, and where in depth."""
    out = t[(t.source == "output") & (t.score == "loss")]
    layers = t[t.detected & t.point.str.startswith("lm.")]
    depth = sorted({int(p.split(".")[1]) for p in layers.point})
    return {"rows": len(t), "detected_rows": int(t.detected.sum()),
            "output_loss_auc": float(out.auc.iloc[0]) if len(out) else float("nan"),
            "output_loss_detected": bool(out.detected.iloc[0]) if len(out) else False,
            "shallowest_detected_layer": f"lm.{depth[0]}" if depth else "-",
            "layers_detected": ",".join(f"lm.{d}" for d in depth) or "-"}


def _run(o: Options) -> Outcome:
    from ...membership import membership

    from .organism import MembershipConfig, build

    cfg = MembershipConfig.small() if o.small else MembershipConfig()
    kw = dict(cv=cfg.cv, n_perm=cfg.n_perm, n_boot=cfg.n_boot, progress=False)
    t0 = time.perf_counter()
    tables, rows, lines = [], [], []
    with tempfile.TemporaryDirectory(prefix="probekit-membership-") as work:
        for seed in cfg.seeds:
            org = build(cfg, seed, work)
            runs = {"memorising fine-tune": membership(org.tuned, org.members, org.nonmembers, base=org.base,
                                                                  seed=seed, **kw),
                    "control (saw neither set)": membership(org.control, org.members, org.nonmembers,
                                                                     base=org.base, seed=seed, **kw),
                    "shifted split (guard)": membership(org.tuned, *org.shifted, base=org.base, seed=seed,
                                                                 attribution=False, **kw)}
            for condition, rep in runs.items():
                tables.append(rep.table.assign(condition=condition, seed=seed))
                rows.append({"condition": condition, "seed": seed, "confounded": rep.confounded,
                             **summary_rows(rep.table)})
                lines.append(f"{condition}, seed {seed}: {rep.summary().splitlines()[0]}")
    summary = pd.DataFrame(rows)
    return Outcome(lines, {"membership": pd.concat(tables, ignore_index=True), "summary": summary},
                   time.perf_counter() - t0, STUDY.out(o), table=summary)


STUDY = Study("membership", "which training samples a model holds, layer by layer: a memorising fine-tune beside a "
              "matched control and a shifted split", _run,
              lambda o: "probekit-membership-small" if o.small else "probekit-membership", what="tables")
