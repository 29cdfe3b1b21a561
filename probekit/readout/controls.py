"""The label sets every readout is scored on: the real labels, a control task and a permutation.

A scorer sees them as rows of one ``tasks`` array [T, n], so controls cost one more column of
the same solve, not another pass over the activations. The table reads a point's selectivity
(real minus control accuracy) and its bias floor (MI on permuted labels) from them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["control_labels", "label_tasks"]


def control_labels(codes: np.ndarray, groups: np.ndarray | None, seed: int) -> np.ndarray:
    """Hewitt & Liang control task: one random label per group (per sample without groups).

    Groups are shuffled and laid end to end by size; each takes the class whose share of
    the samples covers the group's midpoint, so the class proportions over samples are kept
    (exactly, without groups: then it is a permutation). A probe can only score above chance
    on it by memorising group identity, which is what selectivity subtracts.
    """
    units = np.arange(len(codes)) if groups is None else groups
    sizes = np.bincount(units)
    order = np.random.default_rng([seed, 1]).permutation(len(sizes))
    mid = np.cumsum(sizes[order]) - sizes[order] / 2.0
    cls = np.searchsorted(np.cumsum(np.bincount(codes)), mid, side="right")
    group_label = np.empty(len(sizes), dtype=np.int64)
    group_label[order] = cls
    return group_label[units]


def label_tasks(
    codes: np.ndarray, groups: np.ndarray | None, control: bool, permutation: bool, seed: int,
) -> tuple[np.ndarray, list[str]]:
    """Label sets to score, [T, n], and their names: ``"real"``, then ``"control"`` (Hewitt &
    Liang) and ``"perm"`` (labels permuted with ``seed``) when asked."""
    tasks, names = [codes], ["real"]
    if control:
        tasks.append(control_labels(codes, groups, seed))
        names.append("control")
    if permutation:
        tasks.append(np.random.default_rng([seed, 2]).permutation(codes))
        names.append("perm")
    return np.stack(tasks), names
