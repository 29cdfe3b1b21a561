"""Rows for a fixed score per sample (a membership attack, a lens log-probability): AUC, its CI, its permutation null.

A score that needs no fitting (the loss of a teacher-forced answer, a layer's lens log-probability
of the true token) is tested like a probe row: its statistic is the AUC of "higher score = the
positive class", recomputed on the same label permutations as the probe tables of the same labels,
groups, seed and ``n_perm`` (:func:`probekit._stats.permutations`), so :func:`add_verdicts` corrects
a family of probe rows and score rows in one pass. ``accuracy`` holds the AUC (chance 0.5), with
a group-bootstrap 95% CI (whole groups within each class), and TPR at 1% and 0.1% FPR with theirs.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy import stats

from .._stats import percentile_interval, permutations, unit_weights
from ..errors import InputError
from ._data import encode_groups, encode_labels

__all__ = ["auc_null", "score_row", "tpr_at_fpr"]


def _ranks(score: np.ndarray) -> np.ndarray:
    return stats.rankdata(score)  # average ranks for ties: the AUC's own convention


def auc_null(score: Sequence[float], labels: Any, positive: Any, groups: Any = None, n_perm: int = 1000,
             seed: int = 0) -> np.ndarray:
    """``[n_perm + 1]``: the AUC of ``score`` for ``labels == positive``, observed (index 0) and on every
    permutation that a probe table of the same labels, groups, seed and ``n_perm`` uses.

    >>> float(auc_null([0.1, 0.2, 0.8, 0.9], ["no", "no", "yes", "yes"], "yes", n_perm=19)[0])
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
    return float(_weighted_roc(np.asarray(score, float), np.asarray(member, bool), np.ones((1, len(score))), (fpr,))[1][0])


def _weighted_roc(score: np.ndarray, member: np.ndarray, w: np.ndarray, fprs: Sequence[float]) -> tuple[np.ndarray, ...]:
    """AUC (ties count half) and TPR at each FPR in ``fprs`` for every row of weights ``w`` ``[B, n]``, in O(B n)."""
    order = np.argsort(-score, kind="stable")  # high score first
    s, pos = score[order], member[order]
    W = w[:, order]
    Wp, Wn = W * pos, W * ~pos
    cp, cn = np.cumsum(Wp, 1), np.cumsum(Wn, 1)
    tp, tn = cp[:, -1:], cn[:, -1:]
    last = np.r_[s[1:] != s[:-1], True]  # the last position of each tie group: a threshold
    start = np.r_[0, np.flatnonzero(last)[:-1] + 1]
    group = np.repeat(np.arange(len(start)), np.diff(np.r_[start, len(s)]))
    above_n = np.concatenate([np.zeros((len(W), 1)), cn[:, last]], 1)[:, :-1][:, group]  # negatives strictly above
    eq_n = cn[:, last][:, group] - above_n
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = 1.0 - (Wp * (above_n + 0.5 * eq_n)).sum(1) / (tp[:, 0] * tn[:, 0])
        fpr, tpr = cn[:, last] / tn, cp[:, last] / tp
    tprs = [np.where(fpr <= f + 1e-12, tpr, 0.0).max(1) for f in fprs]
    return (auc, *tprs)


def score_row(score: Sequence[float], labels: Any, positive: Any, groups: Any = None, *, point: str, position: str,
              n_perm: int = 1000, n_boot: int = 1000, seed: int = 0, source: str = "score") -> dict:
    """One table row for a fixed score: AUC as ``accuracy`` with its 95% CI, TPR at 1% and 0.1% FPR with theirs
    (group bootstrap within each class), ``chance`` 0.5, the independent units and the permutation null.

    >>> row = score_row([0.1, 0.4, 0.35, 0.8], ["no", "no", "yes", "yes"], "yes", point="p", position="loss",
    ...                 n_perm=19, n_boot=0)
    >>> row["accuracy"], row["tpr_at_1fpr"]
    (0.75, 0.5)
    """
    s = np.asarray(score, dtype=np.float64)
    n = len(s)
    codes, classes = encode_labels(labels, n)
    if positive not in classes.tolist():
        raise InputError(f"{positive!r} is not one of the labels {classes.tolist()}", fix="pass positive= a label")
    member = codes == int(np.flatnonzero(classes == positive)[0])
    g = encode_groups(groups, n)
    units = np.arange(n) if g is None else g
    obs = _weighted_roc(s, member, np.ones((1, n)), (0.01, 0.001))
    boot = _weighted_roc(s, member, unit_weights(member, units, n_boot, seed), (0.01, 0.001)) if n_boot else None
    ci = [list(percentile_interval(b, nan=True)) if boot is not None else [np.nan, np.nan] for b in (boot or [[]] * 3)]
    return {"point": point, "position": position, "source": source, "kind": "score", "n": n, "n_classes": 2,
            "accuracy": float(obs[0][0]), "accuracy_lo": ci[0][0], "accuracy_hi": ci[0][1], "chance": 0.5,
            "tpr_at_1fpr": float(obs[1][0]), "tpr_lo": ci[1][0], "tpr_hi": ci[1][1],
            "tpr_at_01fpr": float(obs[2][0]), "tpr01_lo": ci[2][0], "tpr01_hi": ci[2][1],
            "n_units": int(len(np.unique(units))), "perm_null": auc_null(s, labels, positive, groups, n_perm, seed)}
