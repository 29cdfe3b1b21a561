"""Removal in the facts study: steering fitted on held-out views and scored through ``evaluate()``, the
retrained reference, and the relearning attack.

- :func:`steering`: the job subspace (difference of means, LEACE, or the weight edit) is fitted on
  the forget profiles' *held-out* portrait views (:data:`FIT_VIEWS`, never trained on and never
  scored) and evaluated by :func:`probekit.steering.evaluate` on the views and by-name prompts the
  forget score is measured on, of the forget profiles and ``cfg.n_eval_retain`` retain profiles
  (its probes fold by profile, so every job needs profiles in several folds; the overlap check of
  :mod:`probekit.steering.heldout` runs on the image bytes); returns the fitted intervention for
  the utility measures and the evaluation report.
- :func:`retrain_samples`: the training set without the forget profiles (the gold-standard
  reference: the same base, seed and schedule, never shown the forget set).
- :func:`relearn_attack`: a few steps of plain fine-tuning on retain samples (Goel et al.: unlearned
  facts stay decodable and come back), then forget accuracy, membership and the layer-wise
  membership probe again; ``delta`` is the change in forget accuracy and ``recovered`` the share of
  the forget accuracy lost to unlearning that the attack brings back (where unlearning removed at
  least :data:`MIN_LOST`: a share of a small loss is noise).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import pandas as pd

from . import profiles as P
from ...organisms.facts_metrics import mc_accuracy
from ...organisms.unlearn import relearn
from .measures import TEST_VIEWS, facts, layer_membership, mia

__all__ = ["STEERING", "FIT_VIEWS", "steering", "retrain_samples", "relearn_attack"]

STEERING = ("ablate", "leace", "orthogonalize")
FIT_VIEWS = tuple(range(200, 204))  # held-out portraits the steering removers are fitted on
MIN_LOST = 0.2  # "recovered" is a share of what unlearning removed: only when it removed at least this much


def _job_items(world: P.World, pids: Sequence[int], views: Sequence[int], by_name: bool) -> list:
    items = [s for v in views for s in facts(world, pids, "image", v) if s.attribute == "job"]
    if by_name:
        items += [s for s in facts(world, pids, "text") if s.attribute == "job"]
    return items


def steering(model: Any, world: P.World, forget: Sequence[int], retain: Sequence[int], method: str,
             cfg: Any) -> tuple[Callable[[], Any], Any]:
    """Fit ``method`` on held-out views of the forget profiles and evaluate it; returns
    ``(make_context, EvalReport)``: ``make_context()`` is a fresh, not yet entered intervention."""
    from ...hooks.collect import collect
    from ...steering import Direction, ablate, evaluate
    from ...steering.weights import orthogonalized

    fit = _job_items(world, forget, FIT_VIEWS, by_name=False)
    ev = _job_items(world, list(forget) + list(retain[:cfg.n_eval_retain]), (0,) + TEST_VIEWS[:2], by_name=True)
    task = [s for s in facts(world, retain, "text") + facts(world, retain, "image")]
    fitted: dict = {}

    def fitter(images, labels):
        store = collect(model, list(images), fit[0].question, points="lm.*.resid", positions="last", batch_size=64,
                        progress=False)
        d = Direction.leace(store, list(labels)) if method == "leace" else Direction.from_means(store, list(labels))
        fitted["d"] = d
        return d

    def intervention(d):
        if method == "orthogonalize":
            return orthogonalized(model, d, sorted(model.resolve("lm.*.resid"))[-1])
        return ablate(model, d, points="lm.*.resid")

    report = evaluate(model, intervention, [s.image for s in ev], [s.answer for s in ev], fit=fitter,
                      fit_images=[s.image for s in fit], fit_labels=[s.answer for s in fit],
                      prompts=[s.question for s in ev], groups=[s.pid for s in ev], points="lm.*.resid",
                      positions="last", task_samples=task, cv=min(cfg.probe_cv, 3), seed=cfg.seed, n_boot=cfg.n_boot)
    return (lambda: intervention(fitted["d"])), report


def steering_columns(report: Any) -> dict:
    """The unlearning-table columns of one ``evaluate()`` report (worst case over points)."""
    s, c = report.suppression, report.cost
    worst = s.loc[s.abs_excess_after.idxmax()]
    return {"steer_points": len(s), "steer_acc_after_max": float(s.accuracy_after.max()),
            "steer_abs_excess_after_max": float(worst.abs_excess_after), "steer_worst_point": str(worst.point),
            "steer_kl": float(c["kl_mean"]), "steer_kl_lo": float(c["kl_lo"]), "steer_kl_hi": float(c["kl_hi"]),
            "steer_task_before": float(c.get("task_accuracy_before", math.nan)),
            "steer_task_after": float(c.get("task_accuracy_after", math.nan)),
            "steer_fit_overlap": report.data.get("fit_overlap"), "steer_n_fit": report.data.get("n_fit"),
            "steer_n_eval": report.data.get("n_eval")}


def retrain_samples(world: P.World, forget: Sequence[int]) -> list:
    """The world's training samples without the forget profiles' (what the reference model is tuned on)."""
    gone = set(forget)
    return [s for s in world.train if s.pid not in gone]


def relearn_attack(model: Any, world: P.World, forget: Sequence[int], retain_samples: Sequence[Any], cfg: Any,
                   before: dict, after: dict, **tags: Any) -> tuple[dict, pd.DataFrame]:
    """Relearn in place (``cfg.relearn_steps`` steps on retain samples), then measure the forget set again.

    ``before`` / ``after``: the utility rows of the model before unlearning and after it (for ``recovered``).
    Returns the row's relearning columns and the layer-wise membership table after relearning.
    """
    relearn(model, list(retain_samples), steps=cfg.relearn_steps, batch_size=16, lr=cfg.relearn_lr, seed=cfg.seed)
    row: dict = {}
    for mod in ("image", "text"):
        r = mc_accuracy(model, facts(world, forget, mod), P.ATTRIBUTES, seed=cfg.seed, n_boot=cfg.n_boot)
        row.update({f"relearn_forget_{mod}": r["accuracy"], f"relearn_forget_{mod}_lo": r["lo"],
                    f"relearn_forget_{mod}_hi": r["hi"]})
        lost = before[f"forget_{mod}"] - after[f"forget_{mod}"]
        row[f"relearn_delta_{mod}"] = r["accuracy"] - after[f"forget_{mod}"]
        row[f"relearn_recovered_{mod}"] = row[f"relearn_delta_{mod}"] / lost if lost >= MIN_LOST else math.nan
    m = {x["attack"]: x for x in mia(model, world, forget, cfg)}["loss"]
    row.update({"relearn_mia_auc": m["auc"], "relearn_mia_auc_lo": m["auc_lo"], "relearn_mia_auc_hi": m["auc_hi"]})
    lm = layer_membership(model, world, forget, cfg, **tags, stage="after relearning")
    best = lm.loc[lm.accuracy.idxmax()]
    row.update({"relearn_member_acc": float(best.accuracy), "relearn_member_point": str(best.point),
                "relearn_member_detected": int(lm.detected.sum())})
    return row, lm
