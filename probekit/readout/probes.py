"""Linear probes: a scikit-learn compatible estimator and a batched cross-validated solver.

``LinearProbe`` is L2-regularised logistic regression with scikit-learn's objective, so its
accuracies match ``LogisticRegression(C=C)``. ``fit_batched`` fits many such problems at
once in torch; ``probe_layers`` uses it to probe every layer, fold and control task of an
activation store in one batched solve and returns a per-layer table.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data
from torch import Tensor

from ..errors import InputError, LabelError
from ._solver import solve

__all__ = ["LinearProbe", "BatchedLogistic", "fit_batched", "heldout_logits", "probe_layers"]


def _dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    if dtype not in (torch.float32, torch.float64):
        raise InputError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}", fix="use torch.float32")
    return dtype


def _device(device: Any) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"device {device!r} is not a torch device", fix="use e.g. 'cpu' or 'cuda'") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise InputError(f"device {device!r} is not available on this machine", fix="use device='cpu'")
    return dev


class LinearProbe(ClassifierMixin, BaseEstimator):
    """L2-regularised (multinomial) logistic regression fitted in torch.

    Minimises ``sum_i logloss_i + 0.5 / C * ||W||^2`` (intercept not penalised) on the
    features standardised with the training data's mean and standard deviation, the same
    objective as ``make_pipeline(StandardScaler(), LogisticRegression(C=C))``. Two classes
    use one sigmoid weight vector, more classes a softmax, as scikit-learn does.
    ``coef_``/``intercept_`` apply to the raw (unstandardised) input.

    Parameters: ``C`` inverse penalty; ``max_iter`` and ``tol`` (max |gradient| of the
    objective divided by the number of samples, scikit-learn's convention) stop L-BFGS;
    ``standardize`` scales features inside the fit; ``device``/``dtype`` where and in which
    precision to fit (``"float32"`` is fast, ``"float64"`` reproduces scikit-learn to many
    digits; a ``torch.dtype`` works too, the default is a string as scikit-learn requires);
    ``random_state`` is accepted for API symmetry, the solver is deterministic.

    Example:
        >>> import numpy as np
        >>> from probekit.readout.probes import LinearProbe
        >>> X = np.r_[np.random.default_rng(0).normal(size=(50, 3)) + 2, np.random.default_rng(1).normal(size=(50, 3)) - 2]
        >>> y = np.r_[np.ones(50), np.zeros(50)]
        >>> LinearProbe(C=1.0).fit(X, y).score(X, y)
        1.0
    """

    def __init__(
        self,
        C: float = 1.0,
        max_iter: int = 1000,
        tol: float = 1e-4,
        fit_intercept: bool = True,
        standardize: bool = True,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str = "float32",
        random_state: int | None = 0,
    ):
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.fit_intercept = fit_intercept
        self.standardize = standardize
        self.device = device
        self.dtype = dtype
        self.random_state = random_state

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> "LinearProbe":
        """Fit on ``X`` [n, d] and labels ``y`` [n]; returns self."""
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        if not self.C > 0:
            raise InputError(f"C must be positive, got {self.C!r}", fix="use C=1.0")
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise LabelError(
                f"only one class ({self.classes_[0]!r}) is present in y; a classifier needs two",
                fix="include samples of at least two classes",
            )
        sw = _check_sample_weight(sample_weight, X, dtype=np.float64)
        dt, dev = _dtype(self.dtype), _device(self.device)
        res = solve(
            torch.tensor(X, dtype=dt, device=dev)[None],  # a copy: solve() works in place
            torch.as_tensor(codes, device=dev)[None, None],
            torch.as_tensor(sw, dtype=dt, device=dev)[None, None],
            len(self.classes_),
            float(self.C),
            fit_intercept=self.fit_intercept,
            standardize=self.standardize,
            max_iter=int(self.max_iter),
            tol=float(self.tol),
        )
        coef, intercept = res.raw_coef()
        self.coef_ = coef[0, 0].double().cpu().numpy()
        self.intercept_ = intercept[0, 0].double().cpu().numpy()
        self.mean_ = res.mean[0, 0].double().cpu().numpy()
        self.scale_ = res.scale[0, 0].double().cpu().numpy()
        self.n_iter_ = np.array([int(res.n_iter[0, 0])], dtype=np.int32)
        if not bool(res.converged[0, 0]) and int(res.n_iter[0, 0]) >= self.max_iter:
            warnings.warn(
                f"LinearProbe did not converge in max_iter={self.max_iter} iterations; "
                "increase max_iter or tol",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Logits: [n] for two classes (positive = ``classes_[1]``), else [n, K]."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        scores = np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities [n, K], columns in ``classes_`` order."""
        s = self.decision_function(X)
        if s.ndim == 1:
            p1 = 1.0 / (1.0 + np.exp(-s))
            return np.c_[1 - p1, p1]
        s = s - s.max(1, keepdims=True)
        e = np.exp(s)
        return e / e.sum(1, keepdims=True)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log class probabilities [n, K]."""
        s = self.decision_function(X)
        if s.ndim == 1:
            return np.c_[-np.logaddexp(0, s), -np.logaddexp(0, -s)]
        return s - np.logaddexp.reduce(s, axis=1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        """Most probable class per row."""
        s = self.decision_function(X)
        idx = (s > 0).astype(int) if s.ndim == 1 else s.argmax(1)
        return self.classes_[idx]


@dataclass
class BatchedLogistic:
    """B fitted problems from :func:`fit_batched`; coefficients apply to the raw data.

    ``coef_`` [B, K', d] and ``intercept_`` [B, K'] with K' = 1 for two classes (sigmoid on
    class 1) and K' = K otherwise; ``n_iter_``/``converged_`` [B]; ``loss_`` [B] the final
    objective divided by the weight sum.
    """

    coef_: Tensor
    intercept_: Tensor
    n_iter_: Tensor
    converged_: Tensor
    loss_: Tensor

    def decision_function(self, X: Tensor) -> Tensor:
        """Logits [B, m, K'] for X [B, m, d] (or [m, d], shared)."""
        X = X.to(self.coef_.dtype)
        return torch.matmul(X, self.coef_.transpose(1, 2)) + self.intercept_[:, None, :]

    def predict_proba(self, X: Tensor) -> Tensor:
        """Probabilities [B, m, K]."""
        z = self.decision_function(X)
        if z.shape[-1] == 1:
            p1 = torch.sigmoid(z)
            return torch.cat([1 - p1, p1], -1)
        return torch.softmax(z, -1)


def _batch(t: Tensor, B: int, n: int, what: str) -> Tensor:
    """[n] -> [1, 1, n] (shared); [B, n] -> [B, 1, n]."""
    if t.ndim == 1 and t.shape[0] == n:
        return t[None, None]
    if t.ndim == 2 and t.shape == (B, n):
        return t[:, None]
    raise InputError(f"{what} has shape {tuple(t.shape)}, expected [{n}] or [{B}, {n}]", fix=f"reshape {what}")


def fit_batched(
    X: Tensor,
    y: Tensor,
    sample_weight: Tensor | None = None,
    *,
    C: float = 1.0,
    n_classes: int | None = None,
    fit_intercept: bool = True,
    standardize: bool = True,
    max_iter: int = 1000,
    tol: float = 1e-4,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> BatchedLogistic:
    """Fit B independent L2 logistic regressions at once (batched L-BFGS in torch).

    ``X`` [B, n, d]; ``y`` [B, n] or [n] integer codes 0..K-1; ``sample_weight`` [B, n]
    or [n], 0 drops a row from a problem (use it as a train mask: standardisation then
    uses only that problem's weighted rows). Same objective as :class:`LinearProbe`.

    Example:
        >>> import torch
        >>> X = torch.randn(3, 200, 5); y = (X[..., 0] > 0).long()
        >>> fit = fit_batched(X, y, C=1.0)
        >>> fit.coef_.shape, bool(fit.converged_.all())
        (torch.Size([3, 1, 5]), True)
    """
    dt, dev = _dtype(dtype), _device(device)
    if X.ndim != 3:
        raise InputError(f"X must be [B, n, d], got {tuple(X.shape)}", fix="stack the problems on dim 0")
    B, n, _ = X.shape
    y = torch.as_tensor(y, device=dev).long()
    K = int(n_classes if n_classes is not None else int(y.max()) + 1)
    if K < 2:
        raise LabelError("y has a single class", fix="pass labels of at least two classes")
    w = torch.ones(n, dtype=dt, device=dev) if sample_weight is None else torch.as_tensor(sample_weight)
    res = solve(
        X.to(device=dev, dtype=dt).clone(),
        _batch(y, B, n, "y"),
        _batch(w.to(device=dev, dtype=dt), B, n, "sample_weight"),
        K,
        C,
        fit_intercept=fit_intercept,
        standardize=standardize,
        max_iter=max_iter,
        tol=tol,
    )
    coef, intercept = res.raw_coef()
    return BatchedLogistic(coef[:, 0], intercept[:, 0], res.n_iter[:, 0], res.converged[:, 0], res.loss[:, 0])


def heldout_logits(
    X: Tensor,
    tasks: Tensor,
    folds: Tensor,
    n_classes: int,
    C: float = 1.0,
    *,
    max_iter: int = 1000,
    tol: float = 1e-4,
    callback=None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Cross-validated logits for every point, task and sample in one batched solve.

    ``X`` [P, n, d] (modified in place), ``tasks`` [T, n] label codes (real, control,
    permuted, ...), ``folds`` [n] test-fold ids 0..cv-1. Returns held-out logits
    [P, T, n, K'] (each sample scored by the probe of the fold that left it out),
    iterations [P, T, cv] and convergence flags [P, T, cv].
    """
    T, n = tasks.shape
    cv = int(folds.max()) + 1
    train = (folds[None, :] != torch.arange(cv, device=folds.device)[:, None]).to(X.dtype)  # (cv, n)
    labels = tasks[:, None, :].expand(T, cv, n).reshape(1, T * cv, n)
    weights = train[None].expand(T, cv, n).reshape(1, T * cv, n)
    res = solve(X, labels, weights, n_classes, C, max_iter=max_iter, tol=tol, callback=callback)
    P, Kp = X.shape[0], res.logits.shape[-1]
    Z = res.logits.view(P, T, cv, n, Kp)
    pick = folds.view(1, 1, 1, n, 1).expand(P, T, 1, n, Kp)
    return Z.gather(2, pick)[:, :, 0], res.n_iter.view(P, T, cv), res.converged.view(P, T, cv)


def probe_layers(
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
    **kwargs: Any,
):
    """Probe every hook point (and position) with cross-validated linear probes.

    All points, folds and tasks (real labels, control task, permuted labels) are fitted in
    one batched L-BFGS solve per memory chunk (see :func:`fit_batched`); features are
    standardised per fold on the training rows only. Folds are ``StratifiedKFold`` (shuffled
    with ``seed``), or ``StratifiedGroupKFold`` when ``groups`` is given so no group is in
    both train and test. Every sample gets exactly one held-out prediction.

    ``acts``: ``{point: Tensor[n, d] | Tensor[n, p, d]}`` (each position its own row,
    named from ``positions`` or by index), an ActivationStore (``.points`` and
    ``store[point]``), or a Tensor ``[n, d]`` / ``[layers, n, d]``. ``labels``: n strings,
    ints or bools.

    Returns one row per point and position with the columns of
    :func:`probekit.readout.information.mutual_information`: ``point, layer, kind, position,
    n, n_classes, accuracy, accuracy_lo, accuracy_hi, chance, log_loss, entropy_bits, mi_bits,
    mi_lo, mi_hi, mi_perm_bits, control_accuracy, control_mi_bits, selectivity, mi_estimator,
    temperature, n_iter, converged, p_value, p_adjusted, leaks``. ``accuracy_lo/hi`` is a 95% Wilson interval on the
    held-out correct count (a percentile group bootstrap when ``groups`` is given, as answers
    within a group are not independent); ``mi_*`` are in bits (see ``mutual_information``);
    ``log_loss`` is the held-out cross-entropy in nats of the calibrated probe that
    ``mi_bits`` uses (``temperature`` = 1/beta of that calibration, ``calibrate=False`` for
    the raw probe); ``chance`` is the majority-class rate; ``selectivity`` = accuracy -
    control accuracy (Hewitt & Liang 2019 control task: each group, or each sample without
    groups, gets a random label with the class proportions kept); ``n_iter``/``converged``:
    the solver's most iterations over folds and tasks, and whether all met ``tol``;
    ``p_value`` one-sided test of accuracy vs chance (exact binomial, or a cluster t-test
    over groups), ``p_adjusted`` Holm over all rows returned, ``leaks`` = ``p_adjusted <
    0.05`` and ``mi_bits > mi_perm_bits`` (:mod:`probekit.readout.significance`). Extra
    keyword arguments (``calibrate``, ``max_iter``, ``tol``, ``dtype``, ``memory_limit``
    in bytes per chunk of points) go to the engine.

    Example:
        >>> import torch
        >>> y = torch.arange(200) % 2
        >>> acts = {f"lm.{i}.resid": torch.randn(200, 16) + i * y[:, None] for i in range(3)}
        >>> df = probe_layers(acts, y, n_boot=200, progress=False)
        >>> df[["point", "layer", "kind"]].values.tolist()[0]
        ['lm.0.resid', 0.0, 'resid']
        >>> bool(df.accuracy.iloc[2] > 0.95), df.leaks.tolist()
        (True, [False, True, True])
    """
    # information.py imports this module for the fits; import back lazily to avoid a cycle.
    from .information import readout_table

    return readout_table(
        acts, labels, groups=groups, cv=cv, seed=seed, C=C, positions=positions, control=control,
        permutation=permutation, n_boot=n_boot, device=device, progress=progress, **kwargs,
    )
