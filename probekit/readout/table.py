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

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from .._stats import cluster_bootstrap, permutation_p, wilson
from ..errors import InputError
from ..hooks.coerce import as_store
from ._data import Unit, encode_groups, encode_labels, iter_units, load_unit, make_folds, parse_kind, parse_layer, plan_chunks
from .controls import label_tasks
from .information import LN2, calibrate_heldout, entropy_bits, log_probs
from .options import ReadoutOptions
from .scorers import HeldoutScores, Scorer, get_scorer
from .permutation import PermutationDesign, permutation_statistic
from .significance import add_verdicts

__all__ = ["readout_table", "probing_peak_bytes", "COLUMNS"]

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

    def __init__(self, labels: Any, groups: Any, n: int, opts: ReadoutOptions, design: bool = True):
        self.codes, classes = encode_labels(labels, n)
        self.groups = encode_groups(groups, n)
        self.folds = make_folds(self.codes, self.groups, opts.cv, opts.seed)
        self.K, self.n = len(classes), n
        self.tasks, self.names = label_tasks(self.codes, self.groups, opts.control, opts.permutation, opts.seed)
        self.units = self.groups if self.groups is not None else np.arange(n)  # what the bootstrap resamples
        self.H = float(entropy_bits(np.bincount(self.codes, minlength=self.K)))
        self.chance = float(np.bincount(self.codes).max() / n)
        # the verdict's permutation test: the same permutations for every point of the table
        # (``design=False``: a table whose points are not all in memory, e.g. from sufficient statistics)
        self.design = PermutationDesign.make(self.codes, self.groups, self.K, opts.cv, opts.n_perm, opts.seed,
                                             dtype=opts.torch_dtype) if design else None
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

    # In-memory inputs are validated in full before any fitting. A store (possibly on disk) is read
    # lazily: the chunks are planned from its index (widths, n) before anything is read, and each
    # chunk's [P, n, d] matrix is filled unit by unit, each unit validated, copied in and dropped, so
    # the probing step holds one chunk (at most memory_limit bytes, or one unit) plus the unit being read.
    in_memory = isinstance(acts, (Mapping, torch.Tensor, np.ndarray))
    units = list(iter_units(acts, opts.positions))
    n = None
    if in_memory:
        widths = []
        for u in units:
            x = load_unit(u, n)
            n, _ = x.shape
            widths.append(int(x.shape[1]))
    else:
        n = len(as_store(acts)) if units else None
        widths = [u.width for u in units]
    if n is None:
        raise InputError("no activations to probe", fix="pass at least one point")
    lab = _Labels(labels, groups, n, opts)

    from .._progress import progress_bar

    bar = progress_bar(total=len(units), desc="probing", disable=not opts.progress, unit="point", leave=True)
    rows = []
    try:
        for idx in plan_chunks(widths, n, opts.memory_limit):
            chunk = [units[i] for i in idx]
            X = _fill(chunk, n, widths[idx[0]], dt, dev, check=not in_memory)
            null = permutation_statistic(X, lab.design, opts.test_components, opts.seed, opts.C)  # before the solver edits X

            def cb(it: int, left: int) -> None:
                bar.set_postfix(iter=it, unconverged=left, refresh=False)

            scores = scorer.heldout(X, lab.tasks, lab.folds, lab.K, opts, callback=None if bar.disable else cb,
                                    **({"first": idx[0]} if _takes_first(scorer) else {}))
            del X
            rows += _rows(chunk, scores, scorer, lab, opts, null)
            bar.update(len(chunk))
    finally:
        bar.close()
    return add_verdicts(pd.DataFrame(rows, columns=COLUMNS))


def _takes_first(scorer: Scorer) -> bool:
    """Whether ``scorer.heldout`` takes ``first`` (the built-ins do; a user's scorer need not)."""
    import inspect

    params = inspect.signature(scorer.heldout).parameters
    return "first" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


READS = {"units": 0, "bytes": 0, "peak_chunk_bytes": 0}
"""What the probing step has read (units and their bytes) and the largest chunk matrix it has held
since the counters were last reset: a test reads them to check that a store is read unit by unit."""


def _fill(chunk: list[Unit], n: int, width: int, dt: torch.dtype, dev: torch.device, check: bool) -> torch.Tensor:
    """The chunk's ``[P, n, d]`` matrix, filled unit by unit: each one read (validated unless ``check`` is
    False), copied into its slot and dropped before the next is read."""
    X = torch.empty((len(chunk), n, width), dtype=dt, device=dev)
    for i, u in enumerate(chunk):
        x = load_unit(u, n, check)
        if x.shape[1] != width:
            raise InputError(f"point {u.point!r} has {x.shape[1]} features, its store says {width}",
                             fix="the store's index and its shards disagree: collect it again")
        X[i].copy_(x)
        READS["units"] += 1
        READS["bytes"] += x.numel() * x.element_size()
        del x
    READS["peak_chunk_bytes"] = max(READS["peak_chunk_bytes"], X.numel() * X.element_size())
    return X


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


def probing_peak_bytes(layout: Any, memory_limit: int = 2**30, *, n_perm: int = 1000, control: bool = True,
                       permutation: bool = True, cv: int = 5, n_classes: int = 2, points: Any = None,
                       test_components: int = 128) -> dict[str, int]:
    """The largest allocations of :func:`readout_table` on a store of this layout, planned as it plans them.

    ``layout``: a :class:`~probekit.hooks.plan.StoreLayout` (:func:`probekit.store_layout`, which works on a
    model built on the meta device). The chunks come from :func:`~probekit.readout._data.plan_chunks` on the
    layout's widths, as :func:`readout_table` plans a store's; each term is what the code holds at its peak:

    - ``chunk``: the float32 ``[P, n, d]`` matrix of the largest chunk;
    - ``read``: the unit being read into it (``[n, d]`` in the stored dtype) plus one shard of its point;
    - ``solver``: the solver's n-sized buffers (six ``[P, tasks * cv, n, K']`` float32) and its L-BFGS
      history (two ``[10, P, tasks * cv, K', d + 1]``);
    - ``permutation``: the label permutations ``[n, (n_perm + 1) K']`` and the projected chunk ``[P, n, 128]``
      twice (the basis and its fold slices).

    Returns those terms and ``total`` (bytes). Outputs (``logits*`` points) are left out by default, as
    :func:`~probekit.readout.leakage.leakage` probes them through their small top-k features.
    """
    table = layout.table
    n = int(layout.n)
    keep = [p for p in table.point if (points is None and not str(p).startswith("logits")) or (points is not None and p in points)]
    widths, item = [], {}
    for _, row in table[table.point.isin(keep)].iterrows():
        shape = list(row["shape"])
        size = torch.empty(0, dtype=getattr(torch, row["dtype"])).element_size()
        units = shape[0] if len(shape) >= 2 else 1
        widths += [int(shape[-1])] * units
        item[row["point"]] = (int(shape[-1]), size, int(row["bytes_per_sample"]))
    if not widths:
        raise InputError("the layout has no point to probe", fix="plan a store with lm.*.resid points")
    chunks = plan_chunks(widths, n, memory_limit)
    P = max(len(c) for c in chunks)
    d = max(widths)
    Kp = 1 if n_classes == 2 else n_classes
    M = (1 + int(control) + int(permutation)) * cv
    shard = min(n, int(layout.shard_rows))
    read = max(n * w * s + shard * b for w, s, b in item.values())
    out = {
        "chunk": P * n * d * 4,
        "read": read,
        "solver": 6 * P * M * n * Kp * 4 + 2 * 10 * P * M * Kp * (d + 1) * 4,
        "permutation": n * (n_perm + 1) * Kp * 4 + 2 * P * n * min(d, test_components) * 4,
    }
    out["total"] = sum(out.values())
    out["chunks"] = len(chunks)
    out["units_per_chunk"] = P
    return out
