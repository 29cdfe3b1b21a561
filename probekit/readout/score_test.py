"""Rows for a fixed score per sample (a membership attack, a lens log-probability): AUC, its CI, its permutation null.

A score that needs no fitting (the loss of a teacher-forced answer, a layer's lens log-probability
of the true token) is tested like a probe row: its statistic is the AUC of "higher score = the
positive class", recomputed on the same label permutations as the probe tables of the same labels,
groups, seed and ``n_perm`` (:func:`probekit._stats.permutations`), so :func:`add_verdicts` corrects
a family of probe rows and score rows in one pass. ``accuracy`` holds the AUC (chance 0.5), with
a group-bootstrap 95% CI (whole groups within each class).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy import stats

from .._stats import permutations
from ..errors import InputError
from ._data import encode_groups, encode_labels

__all__ = ["auc_null", "score_row", "tpr_at_fpr"]


def _ranks(score: np.ndarray) -> np.ndarray:
    return stats.rankdata(score)  # average ranks for ties: the AUC's own convention


def auc_null(score: Sequence[float], labels: Any, positive: Any, groups: Any = None, n_perm: int = 1000,
             seed: int = 0) -> np.ndarray:
    """``[n_perm + 1]``: the AUC of ``score`` for ``labels == positive``, observed (index 0) and on every
    permutation that a probe table of the same labels, groups, seed and ``n_perm`` uses.

    >>> auc_null([0.1, 0.2, 0.8, 0.9], ["no", "no", "yes", "yes"], "yes", n_perm=19)[0]
    1.0
    """
    s = np.asarray(score, dtype=np.float64)
    n = len(s)
    codes, classes = encode_labels(labels, n)
    where = np.flatnonzero(classes == positive)
    if len(where) != 1:
        raise InputError(f"{positive!r} is not one of the labels {classes.tolist()}",
                         fix="pass the label of the members (the positive class) as positive=")
    g = encode_groups(groups, n)
    idx = permutations(codes, g, n_perm, seed)  # [B + 1, n]
    pos = (codes[idx] == where[0])  # [B + 1, n]
    n1 = pos.sum(1).astype(np.float64)
    n0 = n - n1
    r = _ranks(s)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos @ r - n1 * (n1 + 1) / 2) / (n1 * n0)


def tpr_at_fpr(member: np.ndarray, score: np.ndarray, fpr: float = 0.01) -> float:
    """Largest true-positive rate on the ROC curve whose false-positive rate is <= ``fpr``."""
    from sklearn.metrics import roc_curve

    f, t, _ = roc_curve(member, score)
    ok = f <= fpr + 1e-12
    return float(t[ok].max()) if ok.any() else 0.0


def score_row(score: Sequence[float], labels: Any, positive: Any, groups: Any = None, *, point: str, position: str,
              n_perm: int = 1000, n_boot: int = 1000, seed: int = 0, source: str = "score") -> dict:
    """One table row for a fixed score: AUC as ``accuracy`` with its 95% CI (group bootstrap within each
    class), TPR at 1% and 0.1% FPR, ``chance`` 0.5, the independent units and the permutation null."""
    from sklearn.metrics import roc_auc_score

    s = np.asarray(score, dtype=np.float64)
    n = len(s)
    codes, classes = encode_labels(labels, n)
    member = codes == int(np.flatnonzero(classes == positive)[0]) if positive in classes.tolist() else None
    if member is None:
        raise InputError(f"{positive!r} is not one of the labels {classes.tolist()}", fix="pass positive= a label")
    g = encode_groups(groups, n)
    units = np.arange(n) if g is None else g
    rng = np.random.default_rng([seed, 13])
    by_class = [[np.flatnonzero((units == u) & (member == c)) for u in np.unique(units[member == c])] for c in (True, False)]
    aucs = []
    for _ in range(n_boot):
        take = np.concatenate([cl[j] for cl in by_class for j in rng.integers(0, len(cl), len(cl))])
        aucs.append(roc_auc_score(member[take], s[take]))
    lo, hi = (np.quantile(aucs, [0.025, 0.975]).tolist() if aucs else [np.nan, np.nan])
    return {"point": point, "position": position, "source": source, "kind": "score", "n": n,
            "n_classes": 2, "accuracy": float(roc_auc_score(member, s)), "accuracy_lo": lo, "accuracy_hi": hi,
            "chance": 0.5, "tpr_at_1fpr": tpr_at_fpr(member, s, 0.01), "tpr_at_01fpr": tpr_at_fpr(member, s, 0.001),
            "n_units": int(len(np.unique(units))), "perm_null": auc_null(s, labels, positive, groups, n_perm, seed)}
