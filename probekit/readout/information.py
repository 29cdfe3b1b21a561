"""Mutual information between activations and labels, in bits.

The main estimator is the held-out probe bound (Pimentel et al. 2020, "Information-
theoretic probing for linguistic structure"; Xu et al. 2020, "A theory of usable
information", V-information)::

    I(X; Y) >= H(Y) - CE(probe)

where CE is the probe's mean cross-entropy on samples it was not trained on. Any probe
gives a valid LOWER bound (a better probe gives a tighter one); a linear probe measures
the linearly decodable part. The held-out estimate is biased downward (the probe's own
estimation error); the same number on permuted labels (``mi_perm_bits``) shows that floor,
and ``control_mi_bits`` the Hewitt & Liang (2019) control task. No sample-based lower bound
can certify more than O(log n) bits (McAllester & Stratos 2020), so large values need many
samples; with labels of entropy H(Y) the bound is also capped at H(Y).

``ksg_mi`` is an independent k-nearest-neighbour estimate (Ross 2014, continuous X,
discrete Y) for low-dimensional cross-checks.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from scipy.spatial import cKDTree
from scipy.special import digamma

from ..errors import InputError
from ._data import encode_groups, encode_labels, iter_units, load_unit, make_folds, parse_kind, parse_layer
from .probes import _device, _dtype, heldout_logits
from .significance import accuracy_p_values, add_verdicts

__all__ = ["mutual_information", "ksg_mi", "readout_table", "COLUMNS"]

LN2 = math.log(2.0)
Z95 = 1.959963984540054

COLUMNS = [
    "point", "layer", "kind", "position", "n", "n_classes",
    "accuracy", "accuracy_lo", "accuracy_hi", "chance", "log_loss", "entropy_bits",
    "mi_bits", "mi_lo", "mi_hi", "mi_perm_bits",
    "control_accuracy", "control_mi_bits", "selectivity",
    "mi_estimator", "temperature", "n_iter", "converged",
    "p_value", "p_adjusted", "leaks",
]


# ---------------------------------------------------------------- small statistics


def entropy_bits(counts: np.ndarray) -> np.ndarray:
    """Plug-in entropy in bits of class counts [..., K]."""
    counts = np.asarray(counts, dtype=np.float64)
    p = counts / counts.sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
    return terms.sum(-1)


def wilson(k: np.ndarray, n: int, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for k successes out of n."""
    p = np.asarray(k, dtype=np.float64) / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def log_probs(logits: np.ndarray) -> np.ndarray:
    """Natural-log class probabilities [n, K] from logits [n, 1] (sigmoid) or [n, K]."""
    if logits.shape[-1] == 1:
        z = logits[..., 0]
        return np.stack([-np.logaddexp(0, z), -np.logaddexp(0, -z)], -1)
    return logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)


def _fold_priors(tasks: np.ndarray, folds: np.ndarray, Kp: int) -> np.ndarray:
    """Log-prior logits [T, n, K'] of the training rows of each sample's fold."""
    T, n = tasks.shape
    cv, K = int(folds.max()) + 1, int(tasks.max()) + 1
    out = np.zeros((T, n, Kp))
    for t in range(T):
        for f in range(cv):
            counts = np.bincount(tasks[t][folds != f], minlength=K) + 0.5  # +0.5: no log(0)
            logp = np.log(counts / counts.sum())
            out[t, folds == f] = logp[1] - logp[0] if Kp == 1 else logp
    return out


def calibrate_heldout(Z: np.ndarray, tasks: np.ndarray, folds: np.ndarray, iters: int = 50):
    """Shrink each fold's held-out logits towards its training prior; returns (Z', beta).

    An L2 probe with d close to n is overconfident off its training set, and the bound
    H(Y) - CE then drops far below what the probe knows (even below zero). The calibrated
    prediction of fold f's probe is ``prior_f + beta_f * (z - prior_f)``: beta = 1 is the
    probe, beta = 0 the class prior of its training rows (so the calibrated bound is never
    much below 0), other values temperature scaling (Guo et al. 2017) around the prior.
    ``beta_f`` is chosen on the held-out predictions of the OTHER folds (cross-fitting), so
    no sample's label sets the scaling of its own prediction: still a held-out bound.
    Cross-entropy is convex in beta: projected Newton on [0, 50], safeguarded (a step that
    leaves the bracket of the minimum bisects it instead), to 1e-8. Z: [P, T, n, K'], beta: [P, T, cv].
    """
    P, T, n, Kp = Z.shape
    cv = int(folds.max()) + 1
    prior = _fold_priors(tasks, folds, Kp)[None]  # [1, T, n, K']
    delta = Z - prior
    others = (folds[None, :] != np.arange(cv)[:, None]).astype(np.float64)  # [cv, n]
    if Kp > 1:
        onehot = np.eye(Kp)[tasks][None, :, None]  # [1, T, 1, n, K]

    def slopes(beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # d/dbeta, d2/dbeta2 of CE
        z = prior[:, :, None] + beta[..., None, None] * delta[:, :, None]  # [P, T, cv, n, K']
        dz = delta[:, :, None]
        if Kp == 1:
            p = 0.5 * (1.0 + np.tanh(0.5 * z[..., 0]))  # sigmoid without overflow warnings
            g = (p - (tasks[None, :, None] == 1)) * dz[..., 0]
            h = p * (1.0 - p) * dz[..., 0] ** 2
        else:
            e = np.exp(z - z.max(-1, keepdims=True))
            p = e / e.sum(-1, keepdims=True)
            mean = (p * dz).sum(-1)
            g = ((p - onehot) * dz).sum(-1)
            h = (p * dz**2).sum(-1) - mean**2
        return np.einsum("ptfn,fn->ptf", g, others), np.einsum("ptfn,fn->ptf", h, others)

    lo, hi = np.zeros((P, T, cv)), np.full((P, T, cv), 50.0)
    beta = np.ones((P, T, cv))
    for _ in range(iters):
        g, h = slopes(beta)
        lo, hi = np.where(g < 0, beta, lo), np.where(g > 0, beta, hi)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = np.clip(np.where(h > 0, beta - g / h, np.nan), 0.0, 50.0)  # projected on [0, 50]
        inside = (step >= lo) & (step <= hi)
        new = np.where(inside, step, 0.5 * (lo + hi))
        new = np.where(g == 0, beta, new)
        settled = np.abs(new - beta).max() <= 1e-8
        beta = new
        if settled:
            break
    per_sample = np.take_along_axis(beta, np.broadcast_to(folds, (P, T, n)), 2)[..., None]
    return prior + per_sample * delta, beta


def _bootstrap(
    ce_bits: np.ndarray, correct: np.ndarray, codes: np.ndarray, K: int,
    units: np.ndarray, n_boot: int, seed: int,
) -> tuple[np.ndarray, ...]:
    """Percentile 95% CIs of MI and accuracy for P points at once.

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
    U = int(units.max()) + 1
    base = -np.log2(np.bincount(codes, minlength=K) / n)[codes]  # [n] bits of the class-prior guess
    # Per-unit sums: [U, P] gain in bits, [U, P] correct, [U, 1] samples.
    per_gain = np.zeros((U, P)); np.add.at(per_gain, units, base[:, None] - ce_bits.T)
    per_ok = np.zeros((U, P)); np.add.at(per_ok, units, correct.T.astype(np.float64))
    per_n = np.bincount(units, minlength=U).astype(np.float64)[:, None]
    stats = np.concatenate([per_gain, per_ok, per_n], 1)
    rng = np.random.default_rng(seed)
    block = max(1, min(n_boot, 2_000_000 // U))
    mi_b, acc_b = [], []
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        idx = rng.integers(0, U, size=(b, U)) + (np.arange(b) * U)[:, None]
        weights = np.bincount(idx.ravel(), minlength=b * U).reshape(b, U).astype(np.float64)
        tot = weights @ stats  # [b, 2P + 1]
        N = tot[:, 2 * P:]
        mi_b.append(tot[:, :P] / N)
        acc_b.append(tot[:, P:2 * P] / N)
    mi_b, acc_b = np.concatenate(mi_b), np.concatenate(acc_b)
    mi_q, acc_q = np.percentile(mi_b, [2.5, 97.5], axis=0), np.percentile(acc_b, [2.5, 97.5], axis=0)
    return mi_q[0], mi_q[1], acc_q[0], acc_q[1]


# ---------------------------------------------------------------- k-NN estimator


def ksg_mi(x: Any, y: Any, k: int = 3, seed: int = 0) -> float:
    """Mutual information in bits between continuous ``x`` [n] or [n, m] and discrete ``y``.

    Ross (2014), "Mutual information between discrete and continuous data sets" (the
    KSG idea for a discrete label): for each sample, the distance to its k-th neighbour
    among samples of its own class sets a radius; counting all samples inside it gives
    ``I = psi(n) - <psi(n_y)> + psi(k) - <psi(m)>`` (nats, converted to bits). Max-norm,
    each dimension scaled to unit variance, tiny seeded jitter to break ties. Classes with a
    single sample are left out. Nearly unbiased in low dimension; in high dimension it
    underestimates, so use it on a few dimensions (a probe score, top PCA components).

    Example:
        >>> import numpy as np
        >>> y = np.arange(4000) % 2
        >>> x = np.random.default_rng(0).normal(size=4000) + 4 * y
        >>> round(ksg_mi(x, y), 1)
        0.9
    """
    x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    codes, _ = encode_labels(y, len(x))
    if not np.isfinite(x).all():
        raise InputError("x contains NaN or inf", fix="drop or fix those samples")
    sd = x.std(0)
    x = (x - x.mean(0)) / np.where(sd > 0, sd, 1.0)
    x = x + 1e-10 * np.random.default_rng(seed).standard_normal(x.shape)
    counts = np.bincount(codes)
    keep = counts[codes] > 1
    x, codes = x[keep], codes[keep]
    n = len(x)
    radius = np.empty(n)
    k_used = np.empty(n)
    for c in np.unique(codes):
        idx = np.flatnonzero(codes == c)
        kc = min(k, len(idx) - 1)
        dist, _ = cKDTree(x[idx]).query(x[idx], k=kc + 1, p=np.inf)
        radius[idx] = np.nextafter(dist[:, -1], 0)  # strictly inside: the k-th is counted below
        k_used[idx] = kc
    m = cKDTree(x).query_ball_point(x, radius, p=np.inf, return_length=True)  # self included
    mi = digamma(n) + digamma(k_used).mean() - digamma(counts[codes]).mean() - digamma(m).mean()
    return float(mi / LN2)


def _pca(x: torch.Tensor, n_components: int) -> np.ndarray:
    """Top principal-component scores [n, c] (labels unused, so no leakage across folds)."""
    xc = x.double() - x.double().mean(0)
    _, _, V = torch.linalg.svd(xc, full_matrices=False)
    return (xc @ V[:n_components].T).cpu().numpy()


# ---------------------------------------------------------------- the table


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


def _tasks(codes: np.ndarray, groups: np.ndarray | None, control: bool, permutation: bool, seed: int):
    """Label sets to fit: real, then control (Hewitt & Liang) and permuted if asked."""
    tasks, names = [codes], ["real"]
    if control:
        tasks.append(control_labels(codes, groups, seed))
        names.append("control")
    if permutation:
        tasks.append(np.random.default_rng([seed, 2]).permutation(codes))
        names.append("perm")
    return np.stack(tasks), names


def _chunks(units, n: int | None, memory_limit: int, check: bool):
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


def readout_table(
    acts: Any,
    labels: Any,
    groups: Any = None,
    cv: int = 5,
    seed: int = 0,
    C: float = 1.0,
    positions: Sequence[str] | None = None,
    control: bool = True,
    permutation: bool = True,
    n_boot: int = 1000,
    device: str | torch.device = "cpu",
    progress: bool = True,
    estimator: str = "probe",
    n_components: int | None = None,
    k: int = 3,
    calibrate: bool = True,
    max_iter: int = 1000,
    tol: float = 1e-4,
    dtype: torch.dtype = torch.float32,
    memory_limit: int = 2**30,
) -> pd.DataFrame:
    """Shared engine of :func:`probe_layers` and :func:`mutual_information`."""
    if estimator not in ("probe", "knn"):
        raise InputError(f"estimator must be 'probe' or 'knn', got {estimator!r}", fix="use estimator='probe'")
    if not (isinstance(n_boot, (int, np.integer)) and n_boot >= 0):
        raise InputError(f"n_boot must be a non-negative integer, got {n_boot!r}", fix="use n_boot=1000")
    if not C > 0:
        raise InputError(f"C must be positive, got {C!r}", fix="use C=1.0")
    dt, dev = _dtype(dtype), _device(device)

    # In-memory inputs are validated in full before any fitting; a store (possibly on disk)
    # is read lazily, chunk by chunk, and each chunk is validated before it is fitted.
    in_memory = isinstance(acts, (Mapping, torch.Tensor, np.ndarray))
    units = list(iter_units(acts, positions)) if in_memory else iter_units(acts, positions)
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
    codes, classes = encode_labels(labels, n)
    grp = encode_groups(groups, n)
    folds = make_folds(codes, grp, cv, seed)
    K = len(classes)
    tasks, names = _tasks(codes, grp, control, permutation, seed)
    units_for_boot = grp if grp is not None else np.arange(n)
    H = float(entropy_bits(np.bincount(codes, minlength=K)))
    chance = float(np.bincount(codes).max() / n)

    from .._progress import progress_bar

    bar = progress_bar(total=total, desc="probing", disable=not progress, unit="point", leave=True)
    rows = []
    try:
        for chunk in _chunks(units, n, memory_limit, check=not in_memory):
            X = torch.stack([x.to(device=dev, dtype=dt) for _, x in chunk])
            raw = X.clone() if (estimator == "knn" and n_components) else None

            def cb(it: int, left: int) -> None:
                bar.set_postfix(iter=it, unconverged=left, refresh=False)

            Z, n_iter, conv = heldout_logits(
                X, torch.as_tensor(tasks, device=dev), torch.as_tensor(folds, device=dev), K, C,
                max_iter=max_iter, tol=tol, callback=cb,
            )
            del X
            Z = Z.double().cpu().numpy()  # [P, T, n, K']
            rows += _summarise(chunk, Z, raw, n_iter, conv, names, codes, tasks, folds, K, H, chance,
                               grp, units_for_boot, n_boot, seed, estimator, n_components, k, calibrate)
            bar.update(len(chunk))
    finally:
        bar.close()
    return add_verdicts(pd.DataFrame(rows, columns=COLUMNS))


def _summarise(chunk, Z, raw, n_iter, conv, names, codes, tasks, folds, K, H, chance, grp,
               units_for_boot, n_boot, seed, estimator, n_components, k, calibrate) -> list[dict]:
    P, T, n, _ = Z.shape
    # Accuracy is the probe's own (calibration can move a prediction across the boundary).
    raw_pred = (Z[..., 0] > 0).astype(np.int64) if Z.shape[-1] == 1 else Z.argmax(-1)
    correct = raw_pred == tasks[None]  # [P, T, n]
    if calibrate:
        Z, beta = calibrate_heldout(Z, tasks, folds)
        with np.errstate(divide="ignore"):
            temperature = 1.0 / beta[:, 0].mean(-1)
    else:
        temperature = np.ones(P)
    lp = log_probs(Z)  # [P, T, n, K]
    idx = np.arange(n)
    ce_bits = np.stack([-lp[:, t][:, idx, tasks[t]] for t in range(T)], 1) / LN2  # [P, T, n]
    acc = correct.mean(-1)
    mi = H - ce_bits.mean(-1)
    if n_boot > 0:
        mi_lo, mi_hi, acc_lo_b, acc_hi_b = _bootstrap(
            ce_bits[:, 0], correct[:, 0], codes, K, units_for_boot, n_boot, seed)
    else:
        mi_lo = mi_hi = acc_lo_b = acc_hi_b = np.full(P, np.nan)
    if grp is not None and n_boot > 0:
        acc_lo, acc_hi = acc_lo_b, acc_hi_b
    else:
        acc_lo, acc_hi = wilson(correct[:, 0].sum(-1), n)
    p_value = accuracy_p_values(correct[:, 0], chance, grp)
    t_ctl = names.index("control") if "control" in names else None
    t_perm = names.index("perm") if "perm" in names else None
    if estimator == "knn":
        mi = np.full((P, T), np.nan)
        for p in range(P):
            feats = _pca(raw[p], n_components) if n_components else None
            for t in range(T):
                x = feats if feats is not None else Z[p, t]
                mi[p, t] = ksg_mi(x, tasks[t], k=k, seed=seed)
        mi_lo = mi_hi = np.full(P, np.nan)  # resampling duplicates points: no k-NN bootstrap
    out = []
    for p, (u, _) in enumerate(chunk):
        out.append({
            "point": u.point,
            "layer": parse_layer(u.point),
            "kind": parse_kind(u.point),
            "position": u.position,
            "n": n,
            "n_classes": K,
            "accuracy": acc[p, 0],
            "accuracy_lo": acc_lo[p],
            "accuracy_hi": acc_hi[p],
            "chance": chance,
            "log_loss": ce_bits[p, 0].mean() * LN2,
            "entropy_bits": H,
            "mi_bits": mi[p, 0],
            "mi_lo": mi_lo[p],
            "mi_hi": mi_hi[p],
            "mi_perm_bits": mi[p, t_perm] if t_perm is not None else np.nan,
            "control_accuracy": acc[p, t_ctl] if t_ctl is not None else np.nan,
            "control_mi_bits": mi[p, t_ctl] if t_ctl is not None else np.nan,
            "selectivity": acc[p, 0] - acc[p, t_ctl] if t_ctl is not None else np.nan,
            "mi_estimator": estimator if not (estimator == "knn" and n_components) else f"knn-pca{n_components}",
            "temperature": temperature[p],
            "n_iter": int(n_iter[p].max()),
            "converged": bool(conv[p].all()),
            "p_value": p_value[p],
        })
    return out


def mutual_information(
    acts: Any,
    labels: Any,
    groups: Any = None,
    cv: int = 5,
    seed: int = 0,
    n_boot: int = 1000,
    *,
    estimator: str = "probe",
    n_components: int | None = None,
    k: int = 3,
    C: float = 1.0,
    positions: Sequence[str] | None = None,
    control: bool = True,
    permutation: bool = True,
    device: str | torch.device = "cpu",
    progress: bool = True,
    **kwargs: Any,
) -> pd.DataFrame:
    """Mutual information I(activations; labels) per hook point, in bits: a LOWER bound.

    ``estimator="probe"`` (default): the cross-validated held-out probe bound
    ``H(Y) - CE`` (Pimentel et al. 2020; Xu et al. 2020), H(Y) the plug-in entropy of the
    labels, CE the mean held-out cross-entropy (bits) of L2 logistic probes fitted on the
    other folds. It is a lower bound on the true MI for any probe, and can be slightly
    negative when the probe finds nothing (its own estimation error). With
    ``calibrate=True`` (default) each fold's probabilities are shrunk towards its training
    prior by a factor chosen on the other folds (:func:`calibrate_heldout`): an L2 probe
    with d near n is overconfident and its raw bound can fall to -2 bits on a layer where
    it is 78% accurate; calibrated, the bound is never much below 0 and still held out.
    ``mi_lo``/``mi_hi``:
    95% percentile bootstrap of the per-sample gain ``-log2 p(y_i) - ce_i`` over the whole
    sample's class frequencies p (its mean is the bound), resampling whole groups when
    ``groups`` is given; with labels independent of X it contains 0 in 96% of draws (n=300). ``mi_perm_bits``: the same estimate with the labels
    permuted, the estimator's floor; ``control_mi_bits``/``selectivity``: the Hewitt & Liang
    control task. Sample-based bounds cannot certify more than O(log n) bits (McAllester &
    Stratos 2020), and never more than H(Y).

    ``estimator="knn"``: Ross's k-NN estimate (:func:`ksg_mi`) on the 1-D held-out probe
    logit (K logits for K > 2 classes), or, with ``n_components``, on the top principal
    components of the activations. Still a lower bound up to the k-NN estimator's own
    bias (data processing); no bootstrap CI (``mi_lo``/``mi_hi`` are NaN).

    Takes the same inputs as :func:`probekit.readout.probes.probe_layers` and returns the
    same columns (the two share one engine). Extra keyword arguments: ``calibrate``,
    ``max_iter``, ``tol``, ``dtype``, ``memory_limit``.

    Example:
        >>> import torch
        >>> y = torch.arange(400) % 2
        >>> x = torch.randn(400, 4); x[:, 0] += 3 * (2 * y - 1)
        >>> df = mutual_information({"lm.0.resid": x}, y, n_boot=200, progress=False)
        >>> bool(0.8 < df.mi_bits[0] <= 1.0), bool(abs(df.mi_perm_bits[0]) < 0.05)
        (True, True)
    """
    return readout_table(
        acts, labels, groups=groups, cv=cv, seed=seed, C=C, positions=positions, control=control,
        permutation=permutation, n_boot=n_boot, device=device, progress=progress,
        estimator=estimator, n_components=n_components, k=k, **kwargs,
    )
