"""Held-out scorers: the one seam of the readout (X, tasks, folds -> held-out log-probabilities).

A scorer is given the activations of P points and every label set to score (real labels,
control task, permuted labels) with the cross-validation folds, and returns, for each sample,
class scores from a model that did not see that sample. Everything else in a readout table
(accuracy and its CI, the MI bound and its bootstrap, calibration, the permutation floor,
selectivity, p-values) is built from those scores by :mod:`probekit.readout.table`, the same
way for every scorer.

Adding a readout (an MLP probe, an SAE-feature probe, ...) is one class::

    @register_scorer("mlp")
    class MLPScorer(Scorer):
        def heldout(self, X, tasks, folds, n_classes, options, callback=None):
            ...  # fit on folds != f, score folds == f, for every point and task
            return HeldoutScores(logits)

after which ``probe_layers(acts, y, estimator="mlp")`` (and ``mutual_information``, ``leakage``,
``scan``'s probes) use it. A scorer instance works too: ``estimator=MLPScorer(hidden=64)``.

Registered here: ``"probe"`` (the batched L-BFGS solver of :mod:`probekit.readout._solver`,
one solve for every point, fold and task), ``"knn"`` (the probe's held-out scores, MI by Ross's
k-NN estimate instead of the cross-entropy bound) and ``"sklearn"`` (any scikit-learn
classifier, refitted per point, task and fold; logistic regression by default).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from ._solver import solve
from .information import ksg_mi, pca_scores
from .options import ReadoutOptions

__all__ = [
    "HeldoutScores", "Scorer", "BatchedProbeScorer", "KnnScorer", "SklearnScorer",
    "SCORERS", "register_scorer", "get_scorer", "heldout_logits",
]

Callback = Callable[[int, int], None]  # (iteration, problems still running): progress


@dataclass
class HeldoutScores:
    """What a scorer returns for P points, T label sets, n samples and cv folds.

    ``logits`` [P, T, n, K']: each sample's class scores from the model of the fold that left it
    out, natural-log scale, up to a constant per row: log-probabilities (K' = K), logits, or for
    two classes one column of log-odds of class 1 (K' = 1). ``n_iter`` / ``converged``
    [P, T, cv]: optimiser iterations and whether each fit met its tolerance (0 / True for
    closed-form scorers; None means that). ``features``: anything the scorer keeps for its own
    :meth:`Scorer.mutual_information` (k-NN's principal components).
    """

    logits: np.ndarray
    n_iter: np.ndarray | None = None
    converged: np.ndarray | None = None
    features: Any = None

    def __post_init__(self) -> None:
        self.logits = np.asarray(self.logits, dtype=np.float64)
        if self.logits.ndim != 4:
            raise InputError(f"held-out logits must be [P, T, n, K'], got shape {self.logits.shape}",
                             fix="return one score row per point, task and sample")


class Scorer:
    """Base class of held-out scorers; subclasses implement :meth:`heldout`.

    ``name`` is the registry key and the table's ``mi_estimator`` column.
    """

    name = "scorer"

    def heldout(self, X: Tensor, tasks: np.ndarray, folds: np.ndarray, n_classes: int,
                options: ReadoutOptions, callback: Callback | None = None) -> HeldoutScores:
        """Held-out scores of ``X`` [P, n, d] for ``tasks`` [T, n] (codes 0..n_classes-1) under
        ``folds`` [n] (test-fold id 0..cv-1 of each sample). ``X`` is the scorer's to overwrite.
        A scorer may also take ``first`` (the index of ``X``'s first point in the whole table, passed
        when the table is scored chunk by chunk) to seed per-point randomness by the point's place in
        the table, so that the table does not depend on the memory limit."""
        raise NotImplementedError

    def mutual_information(self, scores: HeldoutScores, heldout: np.ndarray, tasks: np.ndarray,
                           options: ReadoutOptions) -> np.ndarray | None:
        """MI in bits [P, T] by another estimator than ``H(Y) - CE``, or None (the default: the
        cross-entropy bound with its bootstrap CI). ``heldout`` are the (calibrated) logits the
        bound would use."""
        return None

    def label(self, options: ReadoutOptions) -> str:
        """The ``mi_estimator`` value of this scorer's rows."""
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


SCORERS: dict[str, type[Scorer]] = {}


def register_scorer(name: str, cls: type[Scorer] | None = None):
    """Make ``estimator=name`` use ``cls`` (usable as a class decorator); returns ``cls``."""
    def add(c: type[Scorer]) -> type[Scorer]:
        if not (isinstance(c, type) and issubclass(c, Scorer)):
            raise InputError(f"{c!r} is not a Scorer subclass", fix="subclass probekit.readout.scorers.Scorer")
        SCORERS[name] = c
        c.name = name
        return c

    return add if cls is None else add(cls)


def get_scorer(estimator: str | Scorer) -> Scorer:
    """A scorer instance from a registry name or an instance."""
    if isinstance(estimator, Scorer):
        return estimator
    if isinstance(estimator, str) and estimator in SCORERS:
        return SCORERS[estimator]()
    raise InputError(
        f"estimator must be one of {sorted(SCORERS)} or a Scorer instance, got {estimator!r}",
        fix="use estimator='probe', or register your scorer with register_scorer(name, cls)",
    )


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
    first: int = 0,
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
    res = solve(X, labels, weights, n_classes, C, max_iter=max_iter, tol=tol, callback=callback, first=first)
    P, Kp = X.shape[0], res.logits.shape[-1]
    Z = res.logits.view(P, T, cv, n, Kp)
    pick = folds.view(1, 1, 1, n, 1).expand(P, T, 1, n, Kp)
    return Z.gather(2, pick)[:, :, 0], res.n_iter.view(P, T, cv), res.converged.view(P, T, cv)


@register_scorer("probe")
class BatchedProbeScorer(Scorer):
    """L2 logistic probes (scikit-learn's objective), every point, fold and task in one
    batched L-BFGS solve (:func:`heldout_logits`); ``options.C``, ``max_iter``, ``tol``."""

    def heldout(self, X, tasks, folds, n_classes, options, callback=None, first=0):
        dev = X.device
        Z, n_iter, conv = heldout_logits(
            X, torch.as_tensor(tasks, device=dev), torch.as_tensor(folds, device=dev), n_classes, options.C,
            max_iter=options.max_iter, tol=options.tol, callback=callback, first=first,
        )
        return HeldoutScores(Z.double().cpu().numpy(), n_iter.cpu().numpy(), conv.cpu().numpy())


@register_scorer("knn")
class KnnScorer(BatchedProbeScorer):
    """Ross's k-NN MI estimate (:func:`~probekit.readout.information.ksg_mi`, ``options.k``) on
    the probe's held-out logits, or with ``options.n_components`` on the top principal
    components of the activations (labels unused, so nothing leaks across folds). Accuracy
    is still the probe's; no bootstrap CI of the MI (resampling duplicates points)."""

    def heldout(self, X, tasks, folds, n_classes, options, callback=None, first=0):
        # the principal components come first: the probe solve overwrites X
        feats = [pca_scores(X[p], options.n_components) for p in range(X.shape[0])] if options.n_components else None
        scores = super().heldout(X, tasks, folds, n_classes, options, callback, first)
        scores.features = feats
        return scores

    def mutual_information(self, scores, heldout, tasks, options):
        P, T = heldout.shape[:2]
        mi = np.full((P, T), np.nan)
        for p in range(P):
            for t in range(T):
                x = scores.features[p] if scores.features is not None else heldout[p, t]
                mi[p, t] = ksg_mi(x, tasks[t], k=options.k, seed=options.seed)
        return mi

    def label(self, options):
        return f"knn-pca{options.n_components}" if options.n_components else "knn"


@register_scorer("sklearn")
class SklearnScorer(Scorer):
    """Any scikit-learn classifier, cloned and refitted for every point, task and fold.

    ``estimator``: an unfitted classifier with ``decision_function`` or ``predict_log_proba``;
    default ``make_pipeline(StandardScaler(), LogisticRegression(C, max_iter, tol))`` from the
    options, the objective the batched ``"probe"`` solves (so it is the slow reference).
    """

    def __init__(self, estimator: Any = None):
        self.estimator = estimator

    def __repr__(self) -> str:
        return f"SklearnScorer({self.estimator!r})"

    def _make(self, options: ReadoutOptions) -> Any:
        from sklearn.base import clone

        if self.estimator is not None:
            return clone(self.estimator)
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(C=options.C, max_iter=options.max_iter, tol=options.tol))

    def heldout(self, X, tasks, folds, n_classes, options, callback=None):
        from sklearn.exceptions import ConvergenceWarning

        P, n, _ = X.shape
        T, cv = len(tasks), int(folds.max()) + 1
        Kp = 1 if n_classes == 2 else n_classes
        Z = np.zeros((P, T, n, Kp))
        n_iter, conv = np.zeros((P, T, cv), dtype=np.int64), np.ones((P, T, cv), dtype=bool)
        done = 0
        for p in range(P):
            x = X[p].double().cpu().numpy()
            for t in range(T):
                for f in range(cv):
                    tr, te = folds != f, folds == f
                    est = self._make(options)
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always", ConvergenceWarning)
                        est.fit(x[tr], tasks[t][tr])
                    conv[p, t, f] = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
                    last = est[-1] if hasattr(est, "steps") else est
                    n_iter[p, t, f] = int(np.max(getattr(last, "n_iter_", 0)))
                    Z[p, t, te] = _class_scores(est, x[te], n_classes)
                    done += 1
                    if callback is not None:
                        callback(done, P * T * cv - done)
        return HeldoutScores(Z, n_iter, conv)


def _class_scores(est: Any, x: np.ndarray, K: int) -> np.ndarray:
    """[m, 1] log-odds (two classes seen) or [m, K] log-probabilities in code order; a class
    the fold never trained on gets log-probability -50 (never predicted, no infinities)."""
    classes = np.asarray(est.classes_).astype(np.int64)
    if K == 2 and len(classes) == 2 and hasattr(est, "decision_function"):
        return np.asarray(est.decision_function(x), dtype=np.float64).reshape(-1, 1)
    if not hasattr(est, "predict_log_proba"):
        raise InputError(f"{type(est).__name__} has neither decision_function nor predict_log_proba",
                         fix="use a probabilistic classifier, e.g. LogisticRegression")
    out = np.full((len(x), K), -50.0)
    out[:, classes] = np.maximum(est.predict_log_proba(x), -50.0)
    if K == 2:  # one column of log-odds, as the other scorers give for two classes
        return (out[:, 1] - out[:, 0])[:, None]
    return out
