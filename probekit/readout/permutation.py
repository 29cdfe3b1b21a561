"""The permutation test behind every verdict: a cross-validated ridge score, all permutations in one product.

Cross-validated predictions are not independent draws, so a binomial test on them (or a t-test
over ~24 groups) does not hold its level at small n or with grouped samples (measured in
``docs/concepts.md``). The reference method is to permute the labels (across groups when samples
come in groups) and re-run the whole cross-validation (Ojala & Garriga 2010). Re-fitting the
logistic probe for every permutation would cost hundreds of fits per point; instead the test
statistic is one whose held-out predictions are linear in the labels, so that every permutation
is a column of one matrix product:

- each point's activations are standardised (over all rows: no label enters) and, above
  ``components`` features, projected on their top principal directions (found label-free on a
  row subsample);
- folds are fixed and chosen without the labels (whole groups together), so that the real and
  the permuted labels meet the same folds: the test is exact (a stratified split, made from the
  real labels, would favour them);
- on each fold a ridge regression of the one-hot labels on the training rows (intercept
  included) predicts the held-out rows. Its penalty mirrors the logistic probe's: a logistic
  loss curves at most by 1/4 per unit of ``x x^T``, so ``C``'s penalty ``||w||^2 / (2C)`` on the
  summed loss is a ridge penalty ``lambda = 4 / C`` on squared error (on the ladder organism a
  penalty as large as the mean eigenvalue left a 0.68-accurate layer at p 0.58; 4/C finds it at
  p 0.002). The statistic is ``sum_f sum_{i in f} (yhat_i - mean_f yhat) . y_i``, the held-out
  covariance between prediction and label (centred within the fold, so a fold's class balance
  does not tilt it).

For ``B`` permutations the cost per point is ``n * k * B`` (the per-fold sums ``Z_f^T Y_f``) plus
``cv * k^2 * B``, with ``k = min(d, components)``; ``docs/benchmarks.md`` has the measured share of
the probing step. :func:`probekit._stats.maxt_adjust` turns the statistics of a whole table, all
computed on the same permutations, into family-wise adjusted p-values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._stats import permutations
from ._objective import _orth
from ._solver import _torch_threads

__all__ = ["PermutationDesign", "permutation_statistic", "test_folds"]


def test_folds(n: int, groups: np.ndarray | None, cv: int, seed: int) -> np.ndarray:
    """Fold of every sample, chosen without the labels: shuffled units (samples or whole groups) dealt
    round-robin into ``cv`` folds of near-equal size."""
    units = np.arange(n) if groups is None else np.asarray(groups)
    ids = np.unique(units)
    order = np.random.default_rng([seed, 11]).permutation(len(ids))
    fold_of = np.empty(len(ids), dtype=np.int64)
    fold_of[order] = np.arange(len(ids)) % max(1, min(cv, len(ids)))
    return fold_of[np.searchsorted(ids, units)]


@dataclass
class PermutationDesign:
    """The labels of a table, observed and permuted, as columns of one matrix, with the test's folds.

    ``Y``: ``[n, (B + 1) * K']`` indicator columns (K' = 1 for two classes, else K), permutation b
    in columns ``b * K' : (b + 1) * K'``, b = 0 the observed labels.
    """

    Y: Tensor
    folds: np.ndarray
    n_perm: int
    width: int

    @classmethod
    def make(cls, codes: np.ndarray, groups: np.ndarray | None, n_classes: int, cv: int, n_perm: int,
             seed: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> "PermutationDesign":
        idx = permutations(codes, groups, n_perm, seed)  # [B + 1, n]
        perm_codes = codes[idx]  # [B + 1, n]
        width = 1 if n_classes == 2 else n_classes
        if width == 1:
            Y = (perm_codes == 1).T.astype(np.float32)  # [n, B + 1]
        else:
            Y = (perm_codes.T[:, :, None] == np.arange(n_classes)).reshape(len(codes), -1).astype(np.float32)
        return cls(torch.from_numpy(Y).to(device=device, dtype=dtype), test_folds(len(codes), groups, cv, seed),
                   n_perm, width)


def _basis(X: Tensor, components: int, seed: int) -> Tensor:
    """``[P, n, k]``: each point standardised over all rows and, when wider than ``components``,
    projected on its top principal directions (one subspace iteration on a row subsample)."""
    P, n, d = X.shape
    std, mean = torch.std_mean(X, 1, keepdim=True)
    std = std.clamp_min(1e-12)
    if d <= components:
        return (X - mean) / std
    rows = torch.from_numpy(np.linspace(0, n - 1, min(n, max(768, 6 * components))).round().astype(np.int64))
    S = (X[:, rows.to(X.device)] - mean) / std  # [P, m, d]
    gen = torch.Generator().manual_seed(seed)
    Q = torch.randn(d, components + 8, generator=gen, dtype=X.dtype).to(X.device).expand(P, -1, -1)
    M = torch.bmm(S.transpose(1, 2), torch.bmm(S, Q))
    with _torch_threads(1):  # batched small LAPACK calls stall on two contended threads (10-100x)
        Q = _orth(M)  # Cholesky QR: batched CPU QR is slow
    Y = torch.bmm(S, Q).double()
    with _torch_threads(1):
        _, V = torch.linalg.eigh(torch.bmm(Y.transpose(1, 2), Y))
    W = torch.bmm(Q.double(), V[:, :, -components:]).to(X.dtype) / std.transpose(1, 2)  # [P, d, k] on raw X
    return torch.bmm(X, W) - torch.bmm(mean, W)


def permutation_statistic(X: Tensor, design: PermutationDesign, components: int = 128, seed: int = 0,
                          C: float = 1.0) -> np.ndarray:
    """The held-out ridge covariance of every point with the observed and each permuted labelling.

    ``X``: ``[P, n, d]`` (not modified). Returns ``[P, B + 1]`` float64, column 0 the observed.
    """
    # small problems on one thread: every op is too small for threads to pay, and on a busy
    # machine each parallel region can stall (as in the solver: 10x slower at n = 40 on two threads)
    threads = 1 if X.numel() * (design.n_perm + 1) < (1 << 28) else torch.get_num_threads()
    with _torch_threads(threads):
        return _statistic(X, design, components, seed, 4.0 / C)


def _statistic(X: Tensor, design: PermutationDesign, components: int, seed: int, lam: float) -> np.ndarray:
    P, n, _ = X.shape
    Z = _basis(X, components, seed)
    k = Z.shape[-1]
    Y = design.Y.to(device=Z.device, dtype=Z.dtype)
    folds = torch.from_numpy(design.folds).to(Z.device)
    # per fold: its rows' sums Z_f^T Y_f, Y_f's column sums and Z_f's Gram matrix and sum; all rows = their sum
    parts = []
    for f in torch.unique(folds).tolist():
        te = (folds == f).nonzero().squeeze(1)
        Zf, Yf = Z[:, te], Y[te]
        parts.append((len(te), torch.einsum("pnk,nc->pkc", Zf, Yf), Yf.sum(0),
                      torch.bmm(Zf.transpose(1, 2), Zf).double(), Zf.sum(1)))
    S, s = sum(p[1] for p in parts), sum(p[2] for p in parts)
    G, zsum = sum(p[3] for p in parts), sum(p[4] for p in parts)
    T = torch.zeros(P, Y.shape[1], dtype=torch.float64, device=Z.device)
    eye = torch.eye(k, dtype=torch.float64, device=Z.device)
    for n_te, S_te, s_te, G_te, z_te in parts:
        n_tr = n - n_te
        if n_te == 0 or n_tr < 2:
            continue
        m_te = z_te / n_te  # [P, k]
        mu_tr = (zsum - z_te) / n_tr
        v = (S - S_te) - mu_tr[:, :, None] * (s - s_te)[None, None, :]  # Z_tr centred ^T Y_tr
        G_tr = G - G_te - n_tr * mu_tr.double()[:, :, None] * mu_tr.double()[:, None, :]
        # the inverse once (k x k, float64), then one matrix product for all columns, observed and permuted
        # alike: a GEMM, several times faster than triangular solves with a thousand right-hand sides
        with _torch_threads(1):  # a batch of small inverses: one thread (see _basis)
            A = torch.linalg.inv(G_tr + lam * eye).to(Z.dtype)
        beta = torch.bmm(A, v)  # [P, k, C]
        u = S_te - m_te[:, :, None] * s_te[None, None, :]  # Z_te centred in its fold ^T Y_te
        T += (u * beta).sum(1, dtype=torch.float64)
    return T.view(P, design.n_perm + 1, design.width).sum(-1).cpu().numpy()
