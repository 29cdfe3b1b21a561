"""Keep the images a direction is fitted on apart from the images it is graded on.

An eraser fitted on the very images it is evaluated on looks better than perfect: LEACE sets
the class means of *those* activations equal, so a cross-validated probe's held-out fold sees
class means pulled the opposite way from its training folds and scores far *below* chance
(measured on the tiny LLaVA: 0.78 -> 0.02 with chance 0.29, against 0.73 -> 0.34 on held-out
images). Below-chance accuracy still carries the label (flip the probe), so suppression is
reported as the distance from chance in both directions, ``|accuracy - chance|``.

This module holds the three pieces :func:`probekit.steering.evaluate` uses: a seeded,
label-stratified split (:func:`split_indices`), the overlap check between a direction's
recorded fitting images and the evaluation images (:func:`check_overlap`), and the
distance-from-chance columns derived from the readout layer's accuracy and its interval
(:func:`distance_from_chance`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..data.labels import check_label_types
from ..errors import InputError, LabelError, check_number

__all__ = ["OverlapWarning", "split_indices", "check_overlap", "distance_from_chance", "FIX"]

FIX = ("pass held-out images: eval_images=... (with eval_labels=...), or let evaluate split: "
       "evaluate(model, lambda d: ablate(model, d), images, labels, fit=lambda im, y: probekit.steering.leace_sequential(model, im, y))")


class OverlapWarning(UserWarning):
    """An intervention is evaluated on images it was fitted on (``allow_overlap=True``)."""


def split_indices(labels: Any, fraction: float = 0.5, seed: int = 0,
                  groups: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic fit / evaluation split: ``(fit_index, eval_index)``, sorted.

    Stratified by label (scikit-learn's ``StratifiedShuffleSplit``) so both parts keep the
    class proportions; with ``groups`` no group is in both parts (``GroupShuffleSplit``, e.g.
    every image of one watermark string on one side).

    Example:
        >>> fit, ev = split_indices([0, 1] * 10, seed=0)
        >>> len(fit), len(ev), sorted(set(fit) | set(ev)) == list(range(20))
        (10, 10, True)
    """
    from sklearn.model_selection import GroupShuffleSplit, StratifiedShuffleSplit

    check_label_types(labels)
    y = np.asarray(labels)
    if y.ndim != 1:
        raise LabelError(f"labels have shape {y.shape}", fix="pass one label per image")
    check_number(fraction, "split", low=0, high=1, low_open=True, high_open=True, fix="e.g. split=0.5 (half to fit)")
    _, counts = np.unique(y, return_counts=True)
    if len(counts) < 2 or counts.min() < 2:
        raise LabelError(f"cannot split {len(y)} images into fitting and evaluation halves: class sizes {counts.tolist()}",
                         fix="give at least two images of every class (and two classes), or pass fit_images= and eval_images=")
    if groups is not None:
        g = np.asarray(groups)
        if len(g) != len(y):
            raise InputError(f"got {len(g)} groups for {len(y)} images", fix="pass one group per image")
        fit, ev = next(GroupShuffleSplit(n_splits=1, train_size=fraction, random_state=seed).split(y, y, g))
    else:
        fit, ev = next(StratifiedShuffleSplit(n_splits=1, train_size=fraction, random_state=seed).split(y, y))
    return np.sort(fit), np.sort(ev)


def check_overlap(fitted: Iterable[str] | None, evaluated: list[str], allow_overlap: bool = False) -> int | None:
    """How many evaluation images (by content hash) the direction was fitted on.

    None when the direction does not record its fitting images. An overlap raises
    :class:`~probekit.errors.InputError` unless ``allow_overlap``, which warns
    (:class:`OverlapWarning`) instead.

    Example:
        >>> check_overlap({"a", "b"}, ["c", "d"])
        0
    """
    if fitted is None:
        return None
    fit = set(fitted)
    k = sum(h in fit for h in evaluated)
    if k == 0:
        return 0
    what = (f"the intervention was fitted on {k} of the {len(evaluated)} evaluation images: its probes would grade "
            "it on the data it was fitted to (an eraser fitted on them drives a retrained probe below chance, "
            "which still carries the label)")
    if not allow_overlap:
        raise InputError(what, fix=FIX)
    warnings.warn(f"{what}; the report marks fit_overlap={k}", OverlapWarning, stacklevel=3)
    return k


def distance_from_chance(acc: Any, lo: Any, hi: Any, chance: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``|accuracy - chance|`` and its 95% interval, mapped from the accuracy interval.

    The interval is the image of ``[lo, hi]`` under ``|x - chance|``: it starts at 0 when
    ``[lo, hi]`` holds chance. An accuracy 0.2 below chance counts as much as one 0.2 above
    (a probe that is reliably wrong reads the label too). ``chance`` is the readout's
    majority-class rate; with unbalanced classes a probe without information can fall
    somewhat below it, so read a small excess below chance with its interval.

    Example:
        >>> e, elo, ehi = distance_from_chance([0.9, 0.1, 0.52], [0.85, 0.05, 0.45], [0.95, 0.15, 0.6], 0.5)
        >>> e.round(2).tolist(), elo.round(2).tolist(), ehi.round(2).tolist()
        ([0.4, 0.4, 0.02], [0.35, 0.35, 0.0], [0.45, 0.45, 0.1])
    """
    acc, lo, hi, c = (np.asarray(v, dtype=np.float64) for v in (acc, lo, hi, chance))
    a, b = np.abs(lo - c), np.abs(hi - c)
    holds = (lo <= c) & (c <= hi)
    return np.abs(acc - c), np.where(holds, 0.0, np.minimum(a, b)), np.maximum(a, b)


def _label_array(labels: Any, n: int, what: str) -> np.ndarray:
    import torch

    if labels is None:
        raise LabelError(f"no {what} labels given", fix=f"pass one {what} label per image")
    check_label_types(labels, f"{what} labels")
    lab = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if lab.ndim != 1 or len(lab) != n:
        raise LabelError(f"got {len(lab) if lab.ndim == 1 else lab.shape} {what} labels for {n} images",
                         fix="pass one label per image")
    return lab


def plan(intervention: Any, images: Any, labels: Any, *, fit: Any, fit_images: Any, fit_labels: Any,
         eval_images: Any, eval_labels: Any, split: float, direction: Any, allow_overlap: bool, prompts: Any,
         groups: Any, seed: int, setting: dict) -> tuple[list, np.ndarray, Any, Any, Any, dict]:
    """Which images fit and which evaluate; checked before any forward pass.

    Returns ``(eval_items, eval_labels, eval_prompts, eval_groups, make, info)`` where
    ``make(**setting)`` builds the intervention's context manager and ``info`` records the
    split (``split``: ``"seeded"``, ``"given"`` or ``"unknown"``, ``n_fit``, ``n_eval``,
    ``fit_overlap``: evaluation images the direction was fitted on, None when not recorded).
    """
    from ..data.images import check_images, image_hashes
    from .directions import Direction

    if eval_images is not None or eval_labels is not None:
        if images is not None or labels is not None:
            raise InputError("evaluation images given twice (images/labels and eval_images/eval_labels)",
                             fix="pass them once, as eval_images=..., eval_labels=...")
        images, labels = eval_images, eval_labels
    if images is None:
        raise InputError("no evaluation images given", fix="pass images, labels (or eval_images=, eval_labels=)")
    if not callable(intervention):
        raise InputError("intervention must be a callable returning a context manager",
                         fix="e.g. intervention=lambda: probekit.ablate(model, direction)")
    items = check_images(images)
    lab = _label_array(labels, len(items), "evaluation")
    if fit_labels is not None and fit_images is None:
        raise InputError("fit_labels given without fit_images", fix="pass fit_images= with them")
    info: dict = {"split": "unknown", "split_fraction": None, "seed": seed, "n_fit": None, "n_eval": len(items),
                  "fit_overlap": None, "fit_index": None, "eval_index": None}
    declared: list[str] | None = None
    if fit_images is not None:
        fit_items = check_images(fit_images)
        declared = image_hashes(fit_items)
        info.update(split="given", n_fit=len(fit_items))
    if fit is not None:
        if not callable(fit):
            raise InputError(f"fit is a {type(fit).__name__}",
                             fix="pass fit=lambda images, labels: probekit.steering.leace_sequential(model, images, labels, prompt)")
        if fit_images is None:  # one set: split it, deterministically by seed
            if prompts is not None and not isinstance(prompts, str):
                raise InputError("evaluate cannot split images that have one prompt each",
                                 fix="split them yourself and pass fit_images=, fit_labels=, eval_images=, eval_labels=")
            fi, ei = split_indices(lab, split, seed, groups)
            fit_items, fit_lab = [items[i] for i in fi], lab[fi]
            items, lab = [items[i] for i in ei], lab[ei]
            groups = None if groups is None else np.asarray(groups)[ei]
            declared = image_hashes(fit_items)
            info.update(split="seeded", split_fraction=float(split), n_fit=len(fi), n_eval=len(ei),
                        fit_index=fi.tolist(), eval_index=ei.tolist())
        else:
            fit_lab = _label_array(fit_labels, len(fit_items), "fitting")
    evaluated = image_hashes(items)
    # the check runs on what the caller declared first (cheap), then on what the direction recorded
    info["fit_overlap"] = check_overlap(declared, evaluated, allow_overlap)
    if direction is not None and not isinstance(direction, Direction):
        raise InputError(f"direction is a {type(direction).__name__}", fix="pass the probekit Direction the intervention uses")
    if fit is not None:
        fitted = fit(fit_items, fit_lab)
        if isinstance(fitted, Direction):
            direction = fitted

        def make(**s: Any) -> Any:
            return intervention(fitted, **s)
    else:
        make = intervention
    # build one context now (hooks are registered only on entry, so nothing runs): it must be a
    # context manager, and ablate / steer contexts name the direction they use
    ctx = make(**setting)
    if not (hasattr(ctx, "__enter__") and hasattr(ctx, "__exit__")):
        raise InputError(f"the intervention returned a {type(ctx).__name__}, not a context manager",
                         fix="return e.g. probekit.ablate(model, direction) (without entering it)")
    if direction is None:
        found = getattr(ctx, "direction", None)
        direction = found if isinstance(found, Direction) else None
    if hasattr(ctx, "undo"):  # an orthogonalize handle edits weights when built: put them back
        ctx.undo()
    recorded = direction.fit_images if direction is not None else None
    if recorded is not None and info["split"] == "unknown":
        info.update(split="given", n_fit=len(recorded))
    k = check_overlap(recorded, evaluated, allow_overlap)
    if k is not None:
        info["fit_overlap"] = max(k, info["fit_overlap"] or 0)
    return items, lab, prompts, groups, make, info
