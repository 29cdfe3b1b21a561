"""Probes from sufficient statistics: shrinkage LDA per fold from sums read shard by shard and
added across ranks.

For the scale where one point's activations do not fit in memory (about 10^6 images at
d = 4,096: 16 GB per point in float32), the logistic probe cannot hold its ``[n, d]`` matrix.
Linear discriminant analysis needs only sums: per cross-validation fold, the row count, the sum
of the rows, the sum of their outer products and, per task (real labels, control task, permuted
labels) and class, the count and sum of its rows. A fold's training statistics are the totals
minus that fold's own, so one pass over the data gives every fold's model in closed form; a
second pass scores each row with the model of the fold that left it out. Sums add, so ranks
that each read their own shards ``all_reduce`` them (``torch.distributed``, gloo on CPU) and
every rank then holds the same statistics and models. Memory per point is
``cv x d x d`` float64 (670 MB at d = 4,096, cv = 5) whatever n is.

The model, per fold and task, on features standardised with the fold's training mean and
standard deviation (as the logistic probe's): class means ``mu_k``, priors ``pi_k``, the
within-class covariance ``S_w`` shrunk towards the identity,
``S = (1 - g) S_w + g I`` (``g``: ``shrinkage``, default ``d / (d + n_train)``), and the
log-probabilities ``x @ S^-1 mu_k - mu_k @ S^-1 mu_k / 2 + log pi_k`` up to a constant per
row (for two classes one column of log-odds). One Cholesky factor per fold serves every task:
``S_w`` differs between tasks only by the rank-K between-class term, which the Woodbury
identity takes care of.

Two ways to use it:

- ``estimator="lda"`` (:class:`StatsScorer`) in :func:`~probekit.readout.probes.probe_layers` or
  :func:`~probekit.readout.layers.mutual_information`: the same statistics from the
  in-memory chunk of points the readout table hands every scorer;
- :func:`stats_table`: a store read shard by shard, point by point (one shard in memory at a
  time), under ``torchrun`` each rank reading its own shards; the table has the readout
  table's columns, with no permutation test (``p_value`` NaN: it needs the points in memory).

Example:
    >>> import torch
    >>> from probekit.readout.sufficient import FoldStats
    >>> g = torch.Generator().manual_seed(0)
    >>> y = torch.arange(400) % 2
    >>> x = torch.randn(400, 5, generator=g) + y[:, None].float()
    >>> folds = (torch.arange(400) // 7) % 4
    >>> st = FoldStats(5, y[None].numpy(), folds.numpy(), 2)
    >>> _ = st.update(x[:250], 0).update(x[250:], 250)  # shard by shard
    >>> fit = st.fit()
    >>> z = fit.score(x, 0)  # [n, T, 1] held-out log-odds
    >>> round(float(((z[:, 0, 0] > 0).long() == y).float().mean()), 2)
    0.85
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..errors import InputError
from .options import ReadoutOptions
from .scorers import HeldoutScores, Scorer, register_scorer

__all__ = ["FoldStats", "LdaFit", "StatsScorer", "stats_heldout", "stats_table"]

_STATS = ("count", "s1", "G", "cls_n", "cls_s")


class FoldStats:
    """Per-fold sufficient statistics of one point (a streaming fitter: :meth:`update` per shard).

    ``tasks`` [T, n] label codes 0..n_classes-1 (real, control, permuted, ...), ``folds`` [n]
    test-fold ids 0..cv-1, both for all n rows of the store. Sums are float64; each shard's
    scatter is computed in float32 (or the shard's dtype if wider) about that shard's fold means,
    so large offsets in the features cost no precision.
    """

    def __init__(self, d: int, tasks: np.ndarray, folds: np.ndarray, n_classes: int,
                 device: str | torch.device = "cpu"):
        self.tasks = torch.as_tensor(np.asarray(tasks), dtype=torch.long, device=device)
        self.folds = torch.as_tensor(np.asarray(folds), dtype=torch.long, device=device)
        if self.tasks.ndim != 2 or self.folds.ndim != 1 or self.tasks.shape[1] != len(self.folds):
            raise InputError(f"tasks must be [T, n] and folds [n], got {tuple(self.tasks.shape)} and "
                             f"{tuple(self.folds.shape)}", fix="pass one label set per row and one fold id per sample")
        self.d, self.K = d, n_classes
        self.cv, self.T = int(self.folds.max()) + 1, self.tasks.shape[0]
        f64 = {"dtype": torch.float64, "device": device}
        self.count = torch.zeros(self.cv, **f64)
        self.s1 = torch.zeros(self.cv, d, **f64)
        self.G = torch.zeros(self.cv, d, d, **f64)
        self.cls_n = torch.zeros(self.cv, self.T, self.K, **f64)
        self.cls_s = torch.zeros(self.cv, self.T, self.K, d, **f64)

    def update(self, x: Tensor, start: int) -> "FoldStats":
        """Add rows ``start .. start + len(x)`` of the store (``x``: [m, d])."""
        m = x.shape[0]
        if x.ndim != 2 or x.shape[1] != self.d or start < 0 or start + m > len(self.folds):
            raise InputError(f"rows {start}..{start + m} of width {tuple(x.shape[1:])} do not fit a store of "
                             f"{len(self.folds)} rows x d={self.d}", fix="pass [m, d] shards with their first row")
        dt = x.dtype if x.dtype == torch.float64 else torch.float32
        x = x.to(device=self.count.device, dtype=dt)
        f = self.folds[start:start + m]
        # everything about this shard's rows of fold k is computed about their mean (float64), so
        # float32 products lose nothing to large offsets or to class means close to the overall one
        means = torch.zeros(self.cv, self.d, dtype=torch.float64, device=x.device)
        present = torch.unique(f).tolist()
        for k in present:
            sel = f == k
            means[k] = x[sel].sum(0, dtype=torch.float64) / int(sel.sum())
        xc = x - means.to(dt)[f]
        for k in present:
            xk = xc[f == k]
            self.count[k] += len(xk)
            self.s1[k] += len(xk) * means[k]
            # raw second moment = centred scatter + n mean mean^T, summed in float64
            self.G[k] += (xk.T @ xk).double() + len(xk) * torch.outer(means[k], means[k])
        # per (fold, task, class): counts and sums, by one index_add over the flattened cells
        idx = (f[:, None] * self.T + torch.arange(self.T, device=f.device)[None]) * self.K + self.tasks[:, start:start + m].T
        cnt = torch.zeros(self.cv * self.T * self.K, dtype=torch.float64, device=idx.device)
        cnt.index_add_(0, idx.reshape(-1), torch.ones(idx.numel(), dtype=torch.float64, device=idx.device))
        sums = torch.zeros(self.cv * self.T * self.K, self.d, dtype=dt, device=x.device)
        for t in range(self.T):  # task by task: no [m * T, d] copy of the shard
            sums.index_add_(0, idx[:, t], xc)
        self.cls_n.view(-1).add_(cnt)
        self.cls_s.view(-1, self.d).add_(sums.double() + cnt[:, None] * means.repeat_interleave(self.T * self.K, 0))
        return self

    def merge(self, other: "FoldStats") -> "FoldStats":
        """Add another fitter's sums (same tasks and folds), e.g. one per thread or file."""
        for name in _STATS:
            getattr(self, name).add_(getattr(other, name))
        return self

    def all_reduce(self, group: Any = None) -> "FoldStats":
        """Sum the statistics of every rank in place (``torch.distributed``, any backend)."""
        import torch.distributed as dist

        for name in _STATS:
            dist.all_reduce(getattr(self, name), op=dist.ReduceOp.SUM, group=group)
        return self

    def fit(self, shrinkage: float | None = None) -> "LdaFit":
        """Every fold's and task's shrinkage-LDA model, in raw feature space."""
        d, K = self.d, self.K
        Kp = 1 if K == 2 else K
        dev = self.count.device
        coef = torch.zeros(self.cv, self.T, Kp, d, dtype=torch.float64, device=dev)
        intercept = torch.zeros(self.cv, self.T, Kp, dtype=torch.float64, device=dev)
        tot = {name: getattr(self, name).sum(0) for name in _STATS}
        eye = torch.eye(d, dtype=torch.float64, device=dev)
        for f in range(self.cv):
            n = float(tot["count"] - self.count[f])
            if n < 2:
                raise InputError(f"fold {f} leaves {n:.0f} training rows", fix="use fewer folds or more samples")
            m = (tot["s1"] - self.s1[f]) / n
            cov = (tot["G"] - self.G[f]) / n - torch.outer(m, m)
            var = cov.diagonal().clamp_min(0)
            tiny = 1e-10 * (cov.diagonal().abs() + m.square()).clamp_min(1e-30)
            sd = torch.where(var > tiny, var.sqrt(), torch.ones_like(var))  # constant features: scale 1
            R = cov / sd[:, None] / sd[None, :]
            Nk = tot["cls_n"] - self.cls_n[f]  # (T, K)
            pi = Nk / n
            mu = ((tot["cls_s"] - self.cls_s[f]) / Nk.clamp_min(1)[..., None] - m) / sd  # (T, K, d)
            mu = torch.where(Nk[..., None] > 0, mu, torch.zeros_like(mu))
            g = d / (d + n) if shrinkage is None else float(shrinkage)
            if not 0.0 < g <= 1.0:
                raise InputError(f"shrinkage must be in (0, 1], got {shrinkage!r}", fix="e.g. shrinkage=0.1, or None")
            # S = (1-g)(R - sum_k pi_k mu_k mu_k^T) + g I = A - U U^T, A = (1-g) R + g I, U = sqrt((1-g) pi) mu
            L = torch.linalg.cholesky((1 - g) * R + g * eye)
            U = (mu * ((1 - g) * pi).sqrt()[..., None]).transpose(1, 2)  # (T, d, K)
            rhs = torch.cat([mu.transpose(1, 2), U], 2)  # (T, d, 2K)
            sol = torch.cholesky_solve(rhs.permute(1, 0, 2).reshape(d, -1), L).view(d, self.T, 2 * K).permute(1, 0, 2)
            AiM, AiU = sol[..., :K], sol[..., K:]
            inner = torch.eye(K, dtype=torch.float64, device=dev) - U.transpose(1, 2) @ AiU  # (T, K, K), definite
            W = AiM + AiU @ torch.linalg.solve(inner, U.transpose(1, 2) @ AiM)  # S^-1 mu_k, (T, d, K)
            W = W.transpose(1, 2)  # (T, K, d)
            b = -0.5 * (mu * W).sum(-1) + torch.where(pi > 0, pi, torch.ones_like(pi)).log()
            b = torch.where(pi > 0, b, torch.full_like(b, -50.0))  # a class absent from training: never predicted
            v = W / sd  # raw space
            b = b - v @ m
            if Kp == 1:
                coef[f], intercept[f] = (v[:, 1] - v[:, 0])[:, None], (b[:, 1] - b[:, 0])[:, None]
            else:
                coef[f], intercept[f] = v, b
        return LdaFit(coef, intercept, self.folds)


@dataclass
class LdaFit:
    """Per-fold models: ``coef`` [cv, T, K', d] and ``intercept`` [cv, T, K'] apply to raw rows."""

    coef: Tensor
    intercept: Tensor
    folds: Tensor

    def score(self, x: Tensor, start: int) -> Tensor:
        """[m, T, K'] held-out scores of rows ``start .. start + m``, each from its fold's model."""
        cv, T, Kp, d = self.coef.shape
        m = x.shape[0]
        xd = x.to(device=self.coef.device, dtype=torch.float64)
        z = (xd @ self.coef.reshape(-1, d).T).view(m, cv, T, Kp) + self.intercept
        f = self.folds[start:start + m].view(m, 1, 1, 1).expand(m, 1, T, Kp)
        return z.gather(1, f)[:, 0]


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    return ((a, min(a + size, n)) for a in range(0, n, size))


@register_scorer("lda")
class StatsScorer(Scorer):
    """Shrinkage LDA per fold from sufficient statistics (:class:`FoldStats`), closed form.

    The scorer of the scale-out path (see :func:`stats_table`); here it reads the chunk of
    points the readout table hands it, ``rows`` rows at a time. ``shrinkage``: see
    :meth:`FoldStats.fit` (None: ``d / (d + n_train)``).
    """

    def __init__(self, shrinkage: float | None = None, rows: int = 4096):
        self.shrinkage, self.rows = shrinkage, rows

    def __repr__(self) -> str:
        return f"StatsScorer(shrinkage={self.shrinkage!r})"

    def heldout(self, X, tasks, folds, n_classes, options, callback=None):
        P, n, d = X.shape
        Kp = 1 if n_classes == 2 else n_classes
        Z = np.zeros((P, len(tasks), n, Kp))
        for p in range(P):
            st = FoldStats(d, tasks, folds, n_classes, device=X.device)
            for a, b in _chunks(n, self.rows):
                st.update(X[p, a:b], a)
            fit = st.fit(self.shrinkage)
            for a, b in _chunks(n, self.rows):
                Z[p, :, a:b] = fit.score(X[p, a:b], a).transpose(0, 1).cpu().numpy()
            if callback is not None:
                callback(p, P - p - 1)
        cv = int(np.max(folds)) + 1
        return HeldoutScores(Z, np.zeros((P, len(tasks), cv), dtype=np.int64), np.ones((P, len(tasks), cv), dtype=bool))


def _shards(store: Any, point: str, position: str | int | None, rank: int, world: int,
            rows: int = 4096) -> Iterator[tuple[int, Tensor]]:
    """``(first row, [m, d] rows)`` of the shards of ``point`` this rank owns: shard k belongs to rank
    ``k % world`` (the split of data-parallel collect). A store on disk is read one shard at a time;
    an in-memory one is cut into blocks of ``rows``."""
    from ..hooks.store_index import read_shard

    info = store.info(point)
    names = list(info.get("positions") or [])
    j = None
    if len(info["shape"]) >= 2:
        if position is None:
            raise InputError(f"{point} has positions {names}", fix="pass position=... (one of them or an index)")
        j = names.index(position) if position in names else position
    index = getattr(store, "_index", None)  # the on-disk index; None for a store in memory
    if index is None:
        x = store[point]
        n = x.shape[0]
        for k, (a, b) in enumerate(_chunks(n, rows)):
            if k % world == rank:
                yield a, (x[a:b] if j is None else x[a:b, j])
        return
    for k, entry in enumerate(sorted(index["shards"], key=lambda e: e["start"])):
        if k % world == rank:
            x = read_shard(store.directory, index, entry, [point], store.check_reads)[point]
            yield entry["start"], (x if j is None else x[:, j])


def stats_heldout(store: Any, point: str, tasks: np.ndarray, folds: np.ndarray, n_classes: int, *,
                  position: str | int | None = None, shrinkage: float | None = None,
                  distributed: bool | None = None, device: str | torch.device = "cpu") -> Tensor:
    """Held-out scores [T, n, K'] of one point of ``store`` (an :class:`~probekit.hooks.store.ActivationStore`
    or anything ``as_store`` reads), fitted from sufficient statistics read shard by shard.

    ``distributed``: None = when launched with more than one rank (``WORLD_SIZE > 1``). Then each
    rank reads the shards it owns, the statistics and the held-out scores are summed across ranks,
    and every rank returns the same result (equal to one process's up to float rounding).
    """
    from ..hooks.coerce import as_store
    from ..hooks.distributed import world

    store = as_store(store)
    rank, size = world()
    if distributed is None:
        distributed = size > 1
    if not distributed:
        rank, size = 0, 1
    group = None
    if distributed:
        from ..hooks.distributed import _group

        _group()
    st = None
    for a, x in _shards(store, point, position, rank, size):
        if st is None:
            st = FoldStats(x.shape[-1], tasks, folds, n_classes, device=device)
        st.update(x, a)
    if st is None:  # this rank owns no shard: its sums are zero (width from the store's info)
        st = FoldStats(int(store.info(point)["shape"][-1]), tasks, folds, n_classes, device=device)
    if distributed:
        st.all_reduce(group)
    fit = st.fit(shrinkage)
    T, n = np.asarray(tasks).shape
    Kp = 1 if n_classes == 2 else n_classes
    Z = torch.zeros(n, T, Kp, dtype=torch.float64, device=device)
    for a, x in _shards(store, point, position, rank, size):
        Z[a:a + x.shape[0]] = fit.score(x, a)
    if distributed:
        import torch.distributed as dist

        dist.all_reduce(Z, op=dist.ReduceOp.SUM, group=group)  # every row is scored by one rank
    return Z.transpose(0, 1)


def stats_table(store: Any, labels: Any, groups: Any = None, *, points: Sequence[str] | None = None,
                positions: Sequence[str | int] | None = None, shrinkage: float | None = None,
                distributed: bool | None = None, device: str | torch.device = "cpu",
                options: ReadoutOptions | None = None, **values: Any) -> pd.DataFrame:
    """The readout table of ``store`` from sufficient-statistics probes, point by point, shard by shard.

    Memory: one shard plus ``cv x d x d`` float64 statistics, whatever n is. Under ``torchrun``
    every rank reads its own shards and returns the same table. Columns as
    :func:`~probekit.readout.probes.probe_layers` (``mi_estimator`` ``"lda"``), with ``p_value``
    NaN (the permutation test needs the points in memory) and ``n_iter`` 0. ``options`` /
    keyword settings as in :class:`ReadoutOptions` (``cv``, ``seed``, ``control``,
    ``permutation``, ``n_boot``, ``calibrate``). ``device``: where the sums are taken (each shard
    is moved there); across ranks the process group already initialised is used, else gloo,
    which reduces CPU tensors: for ``device="cuda"`` initialise an NCCL group first.
    """
    from ..hooks.coerce import as_store
    from ._data import Unit
    from .significance import add_verdicts
    from .table import COLUMNS, _rows

    opts = ReadoutOptions.of(options, **values)
    store = as_store(store)
    names = list(points) if points is not None else list(store.points)
    if not names:
        raise InputError("no points to probe", fix="pass a store with at least one point")
    n = len(store)
    from .table import _Labels

    lab = _Labels(labels, groups, n, opts, design=False)  # the permutation test needs the points in memory
    scorer = StatsScorer(shrinkage)
    rows = []
    for point in names:
        info = store.info(point)
        flat = len(info["shape"]) < 2
        pos = [None] if flat else list(positions if positions is not None else info["positions"])
        for position in pos:
            Z = stats_heldout(store, point, lab.tasks, lab.folds, lab.K, position=position, shrinkage=shrinkage,
                              distributed=distributed, device=device)
            scores = HeldoutScores(Z[None].cpu().numpy())
            label = (info["positions"][0] if len(info["positions"]) == 1 else None) if flat else str(position)
            unit = Unit(point, label, lambda: None)
            rows += _rows([unit], scores, scorer, lab, opts, np.full((1, 2), np.nan))
    # no permutation statistics here (the test needs the points in memory): the placeholder nulls are NaN and
    # would read as "never detected"; without them add_verdicts reads each p off the row's CI, Holm over rows
    return add_verdicts(pd.DataFrame(rows, columns=COLUMNS).drop(columns="perm_null"))
