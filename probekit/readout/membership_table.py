"""The tables of a membership audit: score rows, probe rows, output rows, and the blind baseline.

Everything here works on per-sample arrays (the scores of :mod:`probekit.readout.token_scores`) and
labels; :func:`probekit.membership` runs the model. Every row carries its permutation null on the
same permutations (labels, groups, seed, ``n_perm``), so one call of
:func:`~probekit.readout.significance.add_verdicts` decides over the whole family.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ._data import encode_groups, encode_labels, make_folds
from .layers import probe_layers
from .score_test import score_row
from .scorers import heldout_logits
from .significance import add_verdicts
from .token_scores import FEATURES, SCORES

__all__ = ["membership_table", "guard_table", "probe_rows", "MEMBER"]

MEMBER = "member"
_ORDER = {"logit-lens": 0, "tuned-lens": 1, "probe": 2, "patched": 3, "output": 4}


def probe_rows(features: dict[str, np.ndarray], labels: Sequence[str], groups: Sequence[Any], *, source: str,
               cv: int, seed: int, n_perm: int, n_boot: int) -> list[dict]:
    """A membership probe per entry of ``features`` (``[n, F]`` each): its held-out AUC (folds by group) as
    the effect size, and the probe table's permutation null (the cross-validation re-run on each)."""
    n = len(labels)
    codes, classes = encode_labels(labels, n)
    g = encode_groups(groups, n)
    acts = {k: torch.as_tensor(np.nan_to_num(v, nan=0.0), dtype=torch.float32) for k, v in features.items()}
    table = probe_layers(acts, labels, groups, cv=cv, seed=seed, n_perm=n_perm, n_boot=0, progress=False,
                         control=False, permutation=False)
    folds = torch.as_tensor(make_folds(codes, g, cv, seed))
    member_code = int(np.flatnonzero(classes == MEMBER)[0])
    tasks = torch.as_tensor(codes)[None]
    z = [heldout_logits(((a - a.mean(0)) / a.std(0).clamp_min(1e-9))[None], tasks, folds, 2)[0][0, 0, :, 0]
         .double().numpy() for a in acts.values()]  # one solve per entry: their widths differ
    rows = []
    for (key, _), zp, rec in zip(acts.items(), z, table.to_dict("records")):
        score = zp if member_code == 1 else -zp
        row = score_row(score, labels, MEMBER, groups, point=key, position="features", n_perm=n_perm, n_boot=n_boot,
                        seed=seed, source=source)
        row["perm_null"] = rec["perm_null"]  # fitted on the labels: the re-fitted statistic's null, not the AUC's
        rows.append(row)
    return rows


def membership_table(scores: dict, base_scores: dict | None, points: list[str], *, labels: Sequence[str],
                     groups: Sequence[Any], cv: int, seed: int, n_perm: int, n_boot: int,
                     patched: dict | None = None) -> pd.DataFrame:
    """Rows per (source, point, score), the probe per point, the patching rows, the output attacks last; with
    ``base_scores`` every score row also as the difference from the base's score of the same source (reference
    calibration: output from output, logit lens from logit lens, tuned lens from the base's own tuned lens);
    ``patched`` (:func:`probekit.membership.patched_scores`, ``{(source, point): {score: [n]}}``) adds its rows
    as they are (they are differences already); one verdict over all of them."""
    kw = dict(n_perm=n_perm, n_boot=n_boot, seed=seed)
    rows = []
    for (src, point), s in scores.items():
        for name in SCORES:
            rows.append({**score_row(s[name], labels, MEMBER, groups, point=point, position=name, source=src, **kw)})
            if base_scores is not None and (src, point) in base_scores:  # the base's score from the same source
                ref = base_scores[(src, point)][name]
                rows.append(score_row(s[name] - ref, labels, MEMBER, groups, point=point, position=name,
                                      source=f"{src} minus base", **kw))
    feats = {p: np.stack([scores[("logit-lens", p)][f] for f in FEATURES], 1) for p in points
             if ("logit-lens", p) in scores}
    rows += probe_rows(feats, labels, groups, source="probe", cv=cv, **kw)
    for (src, point), s in (patched or {}).items():
        rows += [score_row(v, labels, MEMBER, groups, point=point, position=name, source=src, **kw)
                 for name, v in s.items()]
    t = add_verdicts(pd.DataFrame(rows))
    depth = {p: i for i, p in enumerate([*points, "logits"])}
    t["_o"] = [(_ORDER.get(s.split(" ")[0], 5), s, depth.get(p, -1)) for s, p in zip(t.source, t.point)]
    t = t.sort_values("_o", kind="stable").drop(columns="_o").reset_index(drop=True)
    return _public(t)


def guard_table(data: pd.DataFrame, base_scores: dict | None, *, labels: Sequence[str], groups: Sequence[Any],
                cv: int, seed: int, n_perm: int, n_boot: int) -> pd.DataFrame:
    """The blind baseline: can the inputs alone (image statistics, text lengths), or the base model's output
    scores when given, tell members from non-members? A detection means the split is confounded."""
    from ..data.images import decode

    stats_ = []
    for i, (im, prompt, answer) in enumerate(zip(data.image, data.prompt, data.answer)):
        a = np.asarray(decode(im, i), dtype=np.float64) / 255.0
        stats_.append([*a.mean((0, 1)), *a.std((0, 1)), a.shape[0], a.shape[1], len(prompt), len(answer),
                       len(answer.split())])
    feats = {"inputs": np.asarray(stats_)}
    if base_scores is not None:
        feats["base model output"] = np.stack([base_scores[("output", "logits")][s] for s in SCORES], 1)
    rows = probe_rows(feats, labels, groups, source="blind", cv=cv, seed=seed, n_perm=n_perm, n_boot=n_boot)
    return _public(add_verdicts(pd.DataFrame(rows)))


def _public(t: pd.DataFrame) -> pd.DataFrame:
    """The verdict's columns under the names of a membership table (AUC, not accuracy), nulls kept last."""
    t = t.rename(columns={"position": "score", "accuracy": "auc", "accuracy_lo": "auc_lo", "accuracy_hi": "auc_hi",
                          "leaks": "detected", "mde_accuracy": "mde_auc"})
    first = ["point", "source", "score", "auc", "auc_lo", "auc_hi", "tpr_at_1fpr", "tpr_at_01fpr", "p_value",
             "p_adjusted", "detected", "mde_auc", "n", "n_units", "chance", "test"]
    return t[[c for c in first if c in t.columns] + [c for c in t.columns if c not in first]]

