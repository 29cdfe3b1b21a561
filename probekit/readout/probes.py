"""Linear probes: a scikit-learn compatible estimator and a batched solver of many at once.

``LinearProbe`` is L2-regularised logistic regression with scikit-learn's objective, so its
accuracies match ``LogisticRegression(C=C)``. ``fit_batched`` fits many such problems at
once in torch. ``probe_layers`` (defined in :mod:`probekit.readout.layers`, importable from
here) probes every layer, fold and control task of an activation store with the same solver
(:class:`~probekit.readout.scorers.BatchedProbeScorer`) and returns a per-layer table.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data
from torch import Tensor

from ..errors import InputError, LabelError, plain
from ._solver import solve
from .layers import probe_layers
from .options import check_device, check_dtype
from .scorers import heldout_logits

__all__ = ["LinearProbe", "BatchedLogistic", "fit_batched", "heldout_logits", "probe_layers"]


_dtype, _device = check_dtype, check_device  # old private names


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
            raise InputError(f"C must be positive, got {plain(self.C)!r}", fix="use C=1.0")
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise LabelError(
                f"only one class ({plain(self.classes_[0])!r}) is present in y; a classifier needs two",
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
