"""The objective of the batched probe solver: P data matrices x M label/weight columns.

Objective per problem, identical to ``sklearn.linear_model.LogisticRegression(C=C)``::

    sum_i w_i * logloss(y_i, x_i @ W.T + b) + 0.5 / C * ||W||^2      (b not penalised)

with the binary case using one weight vector (sigmoid) as scikit-learn does and the
multiclass case the full multinomial (softmax) model, divided by ``sum_i w_i``. Here: its loss,
gradient and logits for all problems at once (:class:`_Problem`), the low-rank preconditioner,
the starting point and the standardisation folded into the weights. The optimiser that walks
it is :mod:`probekit.readout._solver`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-problem inner product over the parameter dims (last two)."""
    return (a * b).sum((-2, -1))


def _points(t: Tensor, sel: Tensor | slice) -> Tensor:
    """The selected points of a per-point tensor; one shared by all points (leading dim
    1) as it is."""
    return t[sel] if t.shape[0] > 1 else t


def _orth(Y: Tensor) -> Tensor:
    """Orthonormal basis of the columns of Y (P, d, k) by Cholesky QR in float64, twice.

    Not torch.linalg.qr: batched CPU QR of a (256, 74) block took 6 s on two threads
    (7 ms on one); Cholesky of the small Gram matrix has no such trap.
    """
    Q = Y.double()
    for _ in range(2):  # the second pass restores orthogonality lost to conditioning
        G = Q.transpose(1, 2) @ Q
        G = G + 1e-12 * G.diagonal(dim1=1, dim2=2).sum(-1)[:, None, None] * torch.eye(
            G.shape[-1], dtype=G.dtype, device=G.device)  # rank-deficient X: keep G definite
        L = torch.linalg.cholesky(G)
        Q = torch.linalg.solve_triangular(L, Q.transpose(1, 2), upper=False).transpose(1, 2)
    return Q.to(Y.dtype)


class _Problem:
    """Loss, gradient and logits of all problems; matrix products only for chosen points."""

    def __init__(self, X, labels, weights, n_classes, C, fit_intercept, mu, sig):
        P, n, d = X.shape
        self.X, self.n, self.d, self.K = X, n, d, n_classes
        self.Kp = 1 if n_classes == 2 else n_classes
        self.fit_intercept = fit_intercept
        dt = X.dtype
        wsum = weights.sum(-1, dtype=torch.float64)  # (Pw, M)
        if bool((wsum <= 0).any()):
            raise ValueError("a problem has no rows with positive weight")
        self.wn = (weights / wsum[..., None]).to(dt)  # (Pw, M, n) weights summing to 1
        self.lam = (1.0 / (C * wsum)).to(dt)  # (Pw, M) penalty on the mean-loss scale
        self.wsum = wsum
        self.labels = labels
        if self.Kp == 1:
            self.target = (labels == 1).to(dt)
        else:
            self.target = torch.nn.functional.one_hot(labels, n_classes).to(dt)
        self.M = labels.shape[1]
        self.mu, self.sig = mu, sig  # (P, M, d) fold statistics, or None
        self.U = self.sm1 = None  # low-rank preconditioner, see set_preconditioner

    def set_preconditioner(self, rank: int, C: float, wbar: Tensor, curvature: float = 0.25, first: int = 0) -> None:
        """Optimise over u with w = A u, A = I + U diag(s - 1) U^T (symmetric).

        Correlated features give the Hessian ``X^T D X + lambda I`` a few huge eigenvalues
        (the top principal directions) and L-BFGS then needs hundreds of steps. A rescales
        those directions by s = sqrt(bulk / (c * eig + lambda)), taken from the top ``rank``
        eigenpairs of the all-rows covariance with D ~ c = 1/4 (randomised subspace
        iteration on a row subsample; exact when d is small). It is shared by every fold and
        task of a point: fold statistics differ little and a preconditioner need not be
        exact. The optimum is unchanged, only the path to it (6x fewer steps on correlated
        features).
        """
        X = self.X
        P, n, d = X.shape
        lam0 = 1.0 / (C * float(self.wsum.mean()))
        rows = (wbar > 0).any(0).nonzero().squeeze(1)
        m = max(768, 12 * rank)
        if d > 2 * rank and len(rows) > m:
            # The top directions of a covariance are found from several hundred rows; the
            # subsample cuts this setup from ~3 passes over the data to about one.
            rows = rows[torch.linspace(0, len(rows) - 1, m, device=rows.device).long()]
            X, wbar = X[:, rows], wbar[:, rows]
            wbar = wbar / wbar.sum(-1, keepdim=True)
        w = wbar.to(X.dtype)[:, :, None]  # (Pw, n, 1): covariance = X^T diag(w) X
        if d <= 2 * rank:
            evals, U = torch.linalg.eigh(torch.bmm(X.transpose(1, 2), w * X).double())
            ref = curvature * evals.median(-1, keepdim=True).values + lam0
        else:
            # Each point's random start is seeded by its index in the whole solve (``first``
            # + position), so results do not depend on how points are split across threads.
            Q = torch.stack([
                torch.randn(d, rank + 8, generator=torch.Generator().manual_seed(first + p), dtype=X.dtype)
                for p in range(P)
            ]).to(X.device)
            for _ in range(1):  # subspace iteration: Q <- orth(X^T diag(w) X Q); one is enough
                Q = _orth(torch.bmm((w * torch.bmm(X, Q)).transpose(1, 2), X).transpose(1, 2))
            Y = torch.bmm(X, Q).double()
            evals, V = torch.linalg.eigh(torch.bmm(Y.transpose(1, 2), w.double() * Y))
            evals, U = evals[:, -rank:], torch.bmm(Q.double(), V[:, :, -rank:])
            ref = curvature * evals[:, :1].clamp_min(0) + lam0  # the bulk: leave it alone
        s = torch.sqrt(ref / (curvature * evals.clamp_min(0) + lam0))
        self.U, self.sm1 = U.to(X.dtype), (s - 1).to(X.dtype)

    def keep(self, idx: Tensor) -> None:
        """Drop every point not in ``idx`` (ascending): their rows of X are overwritten.

        Moving X[idx[i]] to X[i] in increasing i never reads a row already overwritten
        (idx[i] >= i), so the data are compacted in place, with no copy of X.
        """
        for i, j in enumerate(idx.tolist()):
            if i != j:
                self.X[i] = self.X[j]
        k = len(idx)
        self.X = self.X[:k]
        for name in ("wn", "lam", "wsum", "labels", "target"):
            setattr(self, name, _points(getattr(self, name), idx))
        for name in ("mu", "sig", "U", "sm1"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t[idx])

    def to_w(self, u: Tensor) -> Tensor:
        """w = A u (also maps a w-gradient to the u-gradient, A being symmetric)."""
        if self.U is None:
            return u
        # (P, M*K', d) @ (P, d, r) as one bmm: a broadcasting matmul would copy U M times.
        flat = u.reshape(u.shape[0], -1, u.shape[-1])
        coords = torch.bmm(flat, self.U) * self.sm1[:, None, :]
        return u + torch.bmm(coords, self.U.transpose(1, 2)).view(u.shape)

    def _raw(self, theta: Tensor, w: Tensor, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Raw-space weights v (P, M*K', d) and raw intercept (P, M, K') (of points ``rows``)."""
        P, d = theta.shape[0], self.d
        b = theta[..., d]
        if self.sig is not None:
            mu, sig = (self.mu, self.sig) if rows is None else (self.mu[rows], self.sig[rows])
            v = w / sig[:, :, None, :]
            b = b - (v * mu[:, :, None, :]).sum(-1)
        else:
            v = w
        return v.reshape(P, -1, d), b

    def logits(self, theta: Tensor, w: Tensor, rows: Tensor | None = None) -> Tensor:
        """(P, M, n, K') decision values for ``theta`` (``w = to_w(u)`` passed in, it is
        reused by loss and grad), linear in ``theta``; ``rows``: ``theta`` holds only those
        points."""
        P, M, Kp, n = theta.shape[0], self.M, self.Kp, self.n
        v, b = self._raw(theta, w, rows)
        # X @ V^T then one small transpose: V @ X^T (a transposed X) is ~40% slower on CPU,
        # and a permuted view would make every later elementwise op strided.
        if rows is None:
            XV = torch.bmm(self.X, v.transpose(1, 2))
        else:
            XV = torch.stack([self.X[r] @ v[i].T for i, r in enumerate(rows.tolist())])
        XV = XV.view(P, n, M, Kp).permute(0, 2, 1, 3)
        return (XV + b[:, :, None, :]).contiguous()

    def loss(self, Z: Tensor, w: Tensor) -> Tensor:
        if self.Kp == 1:
            z = Z[..., 0]
            pointwise = torch.nn.functional.softplus(z) - self.target * z
        else:
            picked = Z.gather(-1, self.labels.expand(Z.shape[:-1]).unsqueeze(-1))[..., 0]
            pointwise = torch.logsumexp(Z, -1) - picked
        data = (self.wn * pointwise).sum(-1, dtype=torch.float64)
        pen = 0.5 * self.lam.double() * w.square().sum((-2, -1), dtype=torch.float64)
        return data + pen

    def line_slope(self, Z: Tensor, dZ: Tensor, w: Tensor, dw: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """First and second derivative in t of the objective at Z + t dZ, w + t dw.

        Logits are affine in the parameters, so once ``dZ = X @ direction`` is known the
        whole line can be searched without touching X again.
        """
        zt = Z + t[..., None, None].to(Z.dtype) * dZ
        if self.Kp == 1:
            s = torch.sigmoid(zt[..., 0])
            dz = dZ[..., 0]
            d1 = (self.wn * (s - self.target) * dz).sum(-1, dtype=torch.float64)
            d2 = (self.wn * s * (1 - s) * dz.square()).sum(-1, dtype=torch.float64)
        else:
            pr = torch.softmax(zt, -1)
            a = (pr * dZ).sum(-1)
            d1 = (self.wn * (a - (self.target * dZ).sum(-1))).sum(-1, dtype=torch.float64)
            d2 = (self.wn * ((pr * dZ.square()).sum(-1) - a.square())).sum(-1, dtype=torch.float64)
        lam = self.lam.double()
        wdw, dwdw = _dot(w, dw).double(), _dot(dw, dw).double()
        return d1 + lam * (wdw + t * dwdw), d2 + lam * dwdw

    def grad(self, Z: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
        """Gradient in u and max |gradient in w|."""
        P, M, Kp, d, n = w.shape[0], self.M, self.Kp, self.d, self.n
        if Kp == 1:
            R = (torch.sigmoid(Z[..., 0]) - self.target).mul_(self.wn).unsqueeze(-1)
        else:
            R = (torch.softmax(Z, -1) - self.target).mul_(self.wn.unsqueeze(-1))
        Rt = R.permute(0, 1, 3, 2).reshape(P, M * Kp, n)
        # R^T @ X, not X^T @ R: a product with a transposed X is ~10x slower on CPU.
        G = torch.bmm(Rt, self.X).view(P, M, Kp, d)
        rs = R.sum(2)  # (P, M, K'): gradient of the raw intercept
        if self.sig is not None:
            gw = (G - rs[..., None] * self.mu[:, :, None, :]) / self.sig[:, :, None, :]
        else:
            gw = G
        gw = gw + self.lam[..., None, None] * w
        gb = rs if self.fit_intercept else torch.zeros_like(rs)
        # The stopping test uses the gradient in w (scikit-learn's); L-BFGS gets the one in u.
        gmax = torch.maximum(gw.abs().amax((-2, -1)), gb.abs().amax(-1))
        return torch.cat([self.to_w(gw), gb.unsqueeze(-1)], -1), gmax  # chain rule: A^T = A


def _init_theta(prob: _Problem, dtype) -> Tensor:
    """Zero weights; intercept at the weighted training-class log-odds (saves iterations)."""
    P, M, Kp, d = prob.X.shape[0], prob.M, prob.Kp, prob.d
    theta = torch.zeros(P, M, Kp, d + 1, dtype=dtype, device=prob.X.device)
    if not prob.fit_intercept:
        return theta
    if Kp == 1:
        q = (prob.wn * prob.target).sum(-1).clamp(1e-4, 1 - 1e-4)
        theta[..., 0, d] = torch.log(q / (1 - q))
    else:
        q = (prob.wn.unsqueeze(-1) * prob.target).sum(-2).clamp_min(1e-4).log()
        theta[..., d] = q - q.mean(-1, keepdim=True)  # sum-zero gauge, as from a zero start
    return theta


def _prepare(X: Tensor, wbar: Tensor, wn: Tensor):
    """Centre and scale X in place (row weights wbar (Pw, n), summing to 1) and return the
    map applied (centre, scale: (P, d) float64) and the fold statistics (mu, sigma:
    (P, M, d)) of the result under the column weights wn (Pw, M, n).

    Any affine map per feature leaves the fold-standardised problem unchanged; this one
    keeps float32 fold statistics accurate (no large offsets left to cancel), and weighting
    by the mean row weight makes a weighted fit follow the path of one on repeated rows.
    Two small products per point compute everything while its rows are in cache.
    """
    P, n, d = X.shape
    M = wn.shape[1]
    c = torch.zeros(P, d, dtype=torch.float64, device=X.device)
    s = torch.ones(P, d, dtype=torch.float64, device=X.device)
    mu = torch.zeros(P, M, d, dtype=X.dtype, device=X.device)
    ex2 = torch.zeros_like(mu)
    sq = torch.empty(n, d, dtype=X.dtype, device=X.device)
    weights = torch.cat([wbar.to(X.dtype)[:, None], wn], 1)  # (Pw, 1 + M, n)
    for p in range(P):
        xp, wp = X[p], weights[min(p, weights.shape[0] - 1)]
        # One product gives the centre and the fold means: the latter are only moved by
        # the centre (wn rows sum to 1), and an error there would shift just the intercept.
        first = wp @ xp  # float32 is enough: only the bulk of the offset must go
        cp = first[0]
        xp -= cp
        second = wp @ torch.square(xp, out=sq)  # second moments after centring: no cancellation
        sd = second[0].sqrt()
        sd = torch.where(sd > 0, sd, torch.ones_like(sd))
        mu[p], ex2[p] = (first[1:] - cp) / sd, second[1:] / sd.square()
        xp /= sd
        c[p], s[p] = cp.double(), sd.double()  # exactly the map applied, for raw coefficients
    var = (ex2 - mu.square()).clamp_min(0)
    # Constant features get scale 1 (as StandardScaler does): rounding noise in var.
    tiny = 100 * torch.finfo(X.dtype).eps * ex2.clamp_min(1)
    sig = torch.where(var > tiny, var.sqrt(), torch.ones_like(var))
    return c, s, mu, sig
