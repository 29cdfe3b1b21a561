"""The readout table: held-out scores of any scorer -> one row of columns per point and position.

:func:`readout_table` reads the activations chunk by chunk, makes the folds and label sets
(:mod:`probekit.readout.controls`), asks the scorer (:mod:`probekit.readout.scorers`) for held-out
scores and turns them into the same columns for every scorer: accuracy with a Wilson (or group
bootstrap) CI, the MI bound ``H(Y) - CE`` after calibration with its bootstrap CI, the
permuted-label floor, the control task and selectivity, the solver's iterations, and the
permutation test of :mod:`probekit.readout.permutation` with the verdicts of
:mod:`probekit.readout.significance`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch

from .._stats import cluster_bootstrap, permutation_p, wilson
from ..errors import InputError
from ._data import Unit, encode_groups, encode_labels, iter_units, load_unit, make_folds, parse_kind, parse_layer
from .controls import label_tasks
from .information import LN2, calibrate_heldout, entropy_bits, log_probs
from .options import ReadoutOptions
from .scorers import HeldoutScores, Scorer, get_scorer
from .permutation import PermutationDesign, permutation_statistic
from .significance import add_verdicts

__all__ = ["readout_table", "COLUMNS"]

COLUMNS = [
    "point", "layer", "kind", "position", "n", "n_classes",
    "accuracy", "accuracy_lo", "accuracy_hi", "chance", "log_loss", "entropy_bits",
    "mi_bits", "mi_lo", "mi_hi", "mi_perm_bits",
    "control_accuracy", "control_mi_bits", "selectivity",
    "mi_estimator", "temperature", "n_iter", "converged",
    "n_units", "p_value", "p_adjusted", "leaks", "mde_accuracy", "test", "perm_null",
]


class _Labels:
    """Everything about the labels a chunk's columns need: codes, groups, folds, tasks, H(Y)."""

    def __init__(self, labels: Any, groups: Any, n: int, opts: ReadoutOptions):
        self.codes, classes = encode_labels(labels, n)
        self.groups = encode_groups(groups, n)
        self.folds = make_folds(self.codes, self.groups, opts.cv, opts.seed)
        self.K, self.n = len(classes), n
        self.tasks, self.names = label_tasks(self.codes, self.groups, opts.control, opts.permutation, opts.seed)
        self.units = self.groups if self.groups is not None else np.arange(n)  # what the bootstrap resamples
        self.H = float(entropy_bits(np.bincount(self.codes, minlength=self.K)))
        self.chance = float(np.bincount(self.codes).max() / n)
        # the verdict's permutation test: the same permutations for every point of the table
        self.design = PermutationDesign.make(self.codes, self.groups, self.K, opts.cv, opts.n_perm, opts.seed,
                                             dtype=opts.torch_dtype)
        # independent units a test can count on: samples, or groups (the samples of a group share their label)
        self.n_units = n if self.groups is None else int(len(np.unique(self.groups)))

    def task(self, name: str) -> int | None:
        return self.names.index(name) if name in self.names else None


def readout_table(acts: Any, labels: Any, groups: Any = None, options: ReadoutOptions | None = None,
                  **values: Any) -> pd.DataFrame:
    """Shared engine of :func:`~probekit.readout.probes.probe_layers` and
    :func:`~probekit.readout.layers.mutual_information`: the columns :data:`COLUMNS` per point
    and position. ``options`` and/or keyword settings as in :class:`ReadoutOptions`."""
    opts = ReadoutOptions.of(options, **values)
    scorer = get_scorer(opts.estimator)
    dt, dev = opts.torch_dtype, opts.torch_device

    # In-memory inputs are validated in full before any fitting; a store (possibly on disk)
    # is read lazily, chunk by chunk, and each chunk is validated before it is fitted.
    in_memory = isinstance(acts, (Mapping, torch.Tensor, np.ndarray))
    units = list(iter_units(acts, opts.positions)) if in_memory else iter_units(acts, opts.positions)
    n = None
    if in_memory:
        for u in units:
            n = load_unit(u, n).shape[0]
        total = len(units)
    else:
        first = next(units, None)
        n = None if first is None else load_unit(first, None).shape[0]
        units = itertools.chain([first], units) if first is not None else iter(())
        total = None
    if n is None:
        raise InputError("no activations to probe", fix="pass at least one point")
    lab = _Labels(labels, groups, n, opts)

    from .._progress import progress_bar

    bar = progress_bar(total=total, desc="probing", disable=not opts.progress, unit="point", leave=True)
    rows = []
    try:
        for chunk in _chunks(units, n, opts.memory_limit, check=not in_memory):
            X = torch.stack([x.to(device=dev, dtype=dt) for _, x in chunk])
            null = permutation_statistic(X, lab.design, opts.test_components, opts.seed, opts.C)  # before the solver edits X

            def cb(it: int, left: int) -> None:
                bar.set_postfix(iter=it, unconverged=left, refresh=False)

            scores = scorer.heldout(X, lab.tasks, lab.folds, lab.K, opts, callback=None if bar.disable else cb)
            del X
            rows += _rows([u for u, _ in chunk], scores, scorer, lab, opts, null)
            bar.update(len(chunk))
    finally:
        bar.close()
    return add_verdicts(pd.DataFrame(rows, columns=COLUMNS))


def _chunks(units: Iterator[Unit], n: int | None, memory_limit: int, check: bool):
    """Group consecutive units with the same width into chunks under memory_limit bytes."""
    buf, width, size = [], None, 0
    for u in units:
        x = load_unit(u, n, check)
        n = x.shape[0]
        nbytes = x.shape[0] * x.shape[1] * 4
        if buf and (x.shape[1] != width or size + nbytes > memory_limit):
            yield buf
            buf, size = [], 0
        buf.append((u, x))
        width, size = x.shape[1], size + nbytes
    if buf:
        yield buf


def _mi_bootstrap(ce_bits: np.ndarray, correct: np.ndarray, lab: _Labels, n_boot: int, seed: int):
    """Percentile 95% CIs of MI and accuracy for P points at once: (mi_lo, mi_hi, acc_lo, acc_hi).

    Resamples units (samples, or whole groups when given) with replacement. The MI bound is
    resampled as the mean of the per-sample gain ``-log2 p(y_i) - ce_i`` over the class
    frequencies p of the WHOLE sample, whose mean is exactly ``H(Y) - CE``. (Recomputing the
    plug-in H(Y) on each resample instead puts every resample's classes off the prior the
    probes were fitted with, a KL penalty that shifts the whole bootstrap distribution below
    the estimate: at n=300 with independent labels its interval lay entirely below 0 in a
    quarter of draws.) ``ce_bits``/``correct``: [P, n]. Every point sees the same resamples
    (same seed), so differences between layers are not blurred by resampling noise.
    """
    P, n = ce_bits.shape
    units = lab.units
    U = int(units.max()) + 1
    base = -np.log2(np.bincount(lab.codes, minlength=lab.K) / n)[lab.codes]  # [n] bits of the class-prior guess
    per_gain = np.zeros((U, P)); np.add.at(per_gain, units, base[:, None] - ce_bits.T)
    per_ok = np.zeros((U, P)); np.add.at(per_ok, units, correct.T.astype(np.float64))
    lo, hi = cluster_bootstrap(np.concatenate([per_gain, per_ok], 1), np.bincount(units, minlength=U), n_boot, seed)
    return lo[:P], hi[:P], lo[P:], hi[P:]


def _rows(chunk: list[Unit], scores: HeldoutScores, scorer: Scorer, lab: _Labels, opts: ReadoutOptions,
          null: np.ndarray) -> list[dict]:
    """The table rows of one chunk of points from their held-out scores and their permutation statistics."""
    Z, tasks, n = scores.logits, lab.tasks, lab.n
    P, T = Z.shape[:2]
    # Accuracy is the scorer's own (calibration can move a prediction across the boundary).
    raw_pred = (Z[..., 0] > 0).astype(np.int64) if Z.shape[-1] == 1 else Z.argmax(-1)
    correct = raw_pred == tasks[None]  # [P, T, n]
    if opts.calibrate:
        Z, beta = calibrate_heldout(Z, tasks, lab.folds)
        with np.errstate(divide="ignore"):
            temperature = 1.0 / beta[:, 0].mean(-1)
    else:
        temperature = np.ones(P)
    lp = log_probs(Z)  # [P, T, n, K]
    idx = np.arange(n)
    ce_bits = np.stack([-lp[:, t][:, idx, tasks[t]] for t in range(T)], 1) / LN2  # [P, T, n]
    acc = correct.mean(-1)
    mi = lab.H - ce_bits.mean(-1)
    if opts.n_boot > 0:
        mi_lo, mi_hi, acc_lo_b, acc_hi_b = _mi_bootstrap(ce_bits[:, 0], correct[:, 0], lab, opts.n_boot, opts.seed)
    else:
        mi_lo = mi_hi = acc_lo_b = acc_hi_b = np.full(P, np.nan)
    if lab.groups is not None and opts.n_boot > 0:
        acc_lo, acc_hi = acc_lo_b, acc_hi_b  # answers within a group are not independent
    else:
        acc_lo, acc_hi = wilson(correct[:, 0].sum(-1), n)
    p_value = permutation_p(null)[0]
    other = scorer.mutual_information(scores, Z, tasks, opts)
    if other is not None:
        mi, mi_lo, mi_hi = np.asarray(other, dtype=np.float64), np.full(P, np.nan), np.full(P, np.nan)
    n_iter = scores.n_iter if scores.n_iter is not None else np.zeros((P, T, 1), dtype=np.int64)
    conv = scores.converged if scores.converged is not None else np.ones((P, T, 1), dtype=bool)
    t_ctl, t_perm = lab.task("control"), lab.task("perm")
    label = scorer.label(opts)
    nan = np.nan
    return [{
        "point": u.point,
        "layer": parse_layer(u.point),
        "kind": parse_kind(u.point),
        "position": u.position,
        "n": n,
        "n_classes": lab.K,
        "accuracy": acc[p, 0],
        "accuracy_lo": acc_lo[p],
        "accuracy_hi": acc_hi[p],
        "chance": lab.chance,
        "log_loss": ce_bits[p, 0].mean() * LN2,
        "entropy_bits": lab.H,
        "mi_bits": mi[p, 0],
        "mi_lo": mi_lo[p],
        "mi_hi": mi_hi[p],
        "mi_perm_bits": mi[p, t_perm] if t_perm is not None else nan,
        "control_accuracy": acc[p, t_ctl] if t_ctl is not None else nan,
        "control_mi_bits": mi[p, t_ctl] if t_ctl is not None else nan,
        "selectivity": acc[p, 0] - acc[p, t_ctl] if t_ctl is not None else nan,
        "mi_estimator": label,
        "temperature": temperature[p],
        "n_iter": int(n_iter[p].max()),
        "converged": bool(conv[p].all()),
        "n_units": lab.n_units,
        "p_value": p_value[p],
        "perm_null": null[p].astype(np.float32),
    } for p, u in enumerate(chunk)]
