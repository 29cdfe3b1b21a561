"""Batched L2-regularised logistic regression in torch (the engine behind the probes).

Problems are laid out as ``P`` data matrices ("points": one activation matrix per layer)
times ``M`` label/weight columns per matrix (cross-validation folds x tasks). All ``M``
columns of a point share its data, so each optimiser step costs two thin matrix products
per point (``X @ V`` and ``X.T @ R``) whatever ``M`` is: folds and control tasks ride
along almost for free, where a loop of scikit-learn fits would re-read the data for each.

Objective per problem, identical to ``sklearn.linear_model.LogisticRegression(C=C)``::

    sum_i w_i * logloss(y_i, x_i @ W.T + b) + 0.5 / C * ||W||^2      (b not penalised)

with the binary case using one weight vector (sigmoid) as scikit-learn does and the
multiclass case the full multinomial (softmax) model. It is minimised, divided by
``sum_i w_i`` (scikit-learn's scaling, so ``tol`` means the same thing), with a batched
L-BFGS: every problem has its own curvature history, step length and stopping test. Two
things make it take ~6x fewer steps than scikit-learn's L-BFGS on correlated features: a
low-rank preconditioner from the top principal directions of each point's data, and an
exact line search (logits are affine in the step, so the line costs one product with X).
A point whose problems have all finished leaves the working set (its rows of X are
compacted away in place), so late iterations cost only what the slow points need.

Standardisation uses each problem's own training rows (weights > 0) only. It is folded
into the weights (``x_std @ w == x @ (w / sigma) - mu @ (w / sigma)``) so the data matrix
is never copied per fold.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch
from torch import Tensor

__all__ = ["SolverResult", "solve"]


@dataclass
class SolverResult:
    """Fitted problems. Shapes: P points, M columns, K' = 1 (binary) or K classes."""

    coef: Tensor  # (P, M, K', d) in standardised feature space
    intercept: Tensor  # (P, M, K') in standardised feature space
    mean: Tensor  # (P, M, d) raw-space centre used for standardising
    scale: Tensor  # (P, M, d) raw-space scale used for standardising
    logits: Tensor  # (P, M, n, K') decision values for every row, train and held out
    n_iter: Tensor  # (P, M) iterations used
    converged: Tensor  # (P, M) gradient test met
    loss: Tensor  # (P, M) final objective (divided by the weight sum)

    def raw_coef(self) -> tuple[Tensor, Tensor]:
        """Coefficients and intercepts that apply to the raw (unstandardised) data."""
        v = self.coef / self.scale[:, :, None, :]
        return v, self.intercept - (v * self.mean[:, :, None, :]).sum(-1)


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


# Below this many data elements a CPU solve runs on one thread: every op is then too small
# for threads to pay, and on a busy machine each parallel region can stall for milliseconds
# (spin-waiting OpenMP threads): check_estimator went from 0.5 s to 10 s that way.
_PARALLEL_MIN = 1 << 22


@contextmanager
def _threads_for(X: Tensor):
    if X.device.type != "cpu" or X.numel() >= _PARALLEL_MIN or torch.get_num_threads() == 1:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def solve(X: Tensor, labels: Tensor, weights: Tensor, *args, callback=None, **kwargs) -> "SolverResult":
    """Fit ``P x M`` logistic regressions; see :func:`_solve` (X is modified in place).

    On a CPU with several threads and at least as many points, the points are split into
    chunks solved concurrently, one single-threaded chunk per thread. The solver's elementwise
    ops are small; run with two intra-op threads, each one pays a thread wake-up, and
    chunks in parallel threads avoid that (1.46 s -> 0.95 s on the benchmark store).
    Each point's preconditioner is seeded by its index in the whole solve, so a problem
    takes the same path whichever chunk it lands in (values equal up to float rounding),
    and the chunks depend only on P and the thread count: runs are reproducible.
    """
    P = X.shape[0]
    workers = torch.get_num_threads()
    # With fewer points than threads, chunks would leave cores idle: one batch then.
    if X.device.type != "cpu" or workers == 1 or P < workers or X.numel() < _PARALLEL_MIN:
        with _threads_for(X):
            return _solve(X, labels, weights, *args, callback=callback, **kwargs)
    size = -(-P // (2 * workers))  # two chunks per thread even out points that finish late
    starts = range(0, P, size)
    progress: dict[int, tuple[int, int]] = {}
    lock = threading.Lock()

    def part(a: int) -> SolverResult:
        def report(it: int, left: int) -> None:
            with lock:
                progress[a] = (it, left)
                callback(max(v[0] for v in progress.values()), sum(v[1] for v in progress.values()))

        b = a + size
        return _solve(
            X[a:b], _points(labels, slice(a, b)), _points(weights, slice(a, b)), *args,
            callback=report if callback is not None else None, first=a, **kwargs,
        )

    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="probekit-solve") as pool:
            parts = list(pool.map(part, starts))
    finally:
        torch.set_num_threads(workers)
    return SolverResult(**{f.name: torch.cat([getattr(r, f.name) for r in parts]) for f in fields(SolverResult)})


@torch.no_grad()
def _solve(
    X: Tensor,
    labels: Tensor,
    weights: Tensor,
    n_classes: int,
    C: float = 1.0,
    *,
    fit_intercept: bool = True,
    standardize: bool = True,
    max_iter: int = 1000,
    tol: float = 1e-4,
    history: int = 10,
    max_ls: int = 30,
    precondition: int = 64,
    callback=None,
    first: int = 0,
) -> SolverResult:
    """Fit ``P x M`` logistic regressions; X: (P, n, d) is modified in place.

    labels: (P or 1, M, n) long in [0, n_classes); weights: (P or 1, M, n), 0 = unused row.
    Stops a problem when max |gradient| of the mean objective <= tol (scikit-learn's
    ``gtol``) or when its line search can no longer decrease the objective (rounding).
    """
    dt, dev = X.dtype, X.device
    P, n, d = X.shape
    weights = weights.to(dt)
    if standardize:
        wbar = weights.double().mean(1)
        wbar = wbar / wbar.sum(-1, keepdim=True)  # (Pw, n) mean row weight over the columns
        wn = weights / weights.sum(-1, keepdim=True)
        c0, s0, mu, sig = _prepare(X, wbar, wn)
    else:
        mu = sig = None
    prob = _Problem(X, labels, weights, n_classes, C, fit_intercept, mu, sig)
    if standardize and precondition > 0:  # X is centred only when standardising
        prob.set_preconditioner(precondition, C, wbar, first=first)
    M, Kp = prob.M, prob.Kp
    ftol = 64 * torch.finfo(torch.float64).eps  # scikit-learn's; f is summed in float64
    # Rounding in float32 logits makes f noisy at ~eps32 * |f|. Near the optimum the Armijo
    # decrease is smaller than that, so steps within the noise are accepted (L-BFGS steps
    # are good there) and the gradient test decides; in float64 this allowance is nil.
    noise = torch.finfo(dt).eps if dt != torch.float64 else 0.0

    theta = _init_theta(prob, dt)
    w = theta[..., :d]  # zero
    Z = theta[..., d][:, :, None, :].expand(P, M, n, Kp).clone()  # w = 0: no product needed
    f = prob.loss(Z, w)
    g, gmax = prob.grad(Z, w)
    done = gmax <= tol
    conv = done.clone()
    n_iter = torch.zeros(P, M, dtype=torch.long, device=dev)
    S = torch.zeros(history, P, M, Kp, d + 1, dtype=dt, device=dev)
    Y = torch.zeros_like(S)
    rho = torch.zeros(history, P, M, dtype=dt, device=dev)
    gamma = torch.ones(P, M, dtype=dt, device=dev)
    flat = torch.zeros(P, M, dtype=torch.long, device=dev)
    head = 0

    # A point leaves the working set once all its problems are done: its results go to
    # the outputs and every tensor of the loop shrinks, so late iterations (the few
    # ill-conditioned layers) cost in proportion to the points still being fitted.
    out_theta = torch.empty_like(theta)
    out_w = torch.empty(P, M, Kp, d, dtype=dt, device=dev)
    out_Z = torch.empty(P, M, n, Kp, dtype=dt, device=dev)
    out_f = torch.empty(P, M, dtype=f.dtype, device=dev)
    out_iter, out_conv = torch.empty_like(n_iter), torch.empty_like(conv)
    ids = torch.arange(P, device=dev)  # original index of each working point

    def retire(rows: Tensor) -> None:
        dst = ids[rows]
        out_theta[dst], out_w[dst], out_f[dst] = theta[rows], w[rows], f[rows]
        out_iter[dst], out_conv[dst] = n_iter[rows], conv[rows]
        # exact logits, free of the rounding that the updates Z += t dZ gather
        out_Z[dst] = prob.logits(theta[rows], w[rows], rows=rows)

    for it in range(max_iter):
        active = ~done
        live = active.any(1)
        if not bool(live.all()):
            retire((~live).nonzero().squeeze(1))
            keep = live.nonzero().squeeze(1)
            if len(keep) == 0:
                ids = ids[keep]
                break
            prob.keep(keep)
            theta, w, g, Z, f, done, conv, n_iter, gamma, flat, active = (
                t[keep] for t in (theta, w, g, Z, f, done, conv, n_iter, gamma, flat, active))
            S, Y, rho, ids = S[:, keep], Y[:, keep], rho[:, keep], ids[keep]
        n_iter += active.long()

        # Two-loop recursion, all problems at once; rho = 0 marks empty/skipped pairs.
        q = g.clone()
        alpha = []
        for j in range(history):
            k = (head - 1 - j) % history
            a = rho[k] * _dot(S[k], q)
            q -= a[..., None, None] * Y[k]
            alpha.append((k, a))
        r = q * gamma[..., None, None]
        for k, a in reversed(alpha):
            beta = rho[k] * _dot(Y[k], r)
            r += S[k] * (a - beta)[..., None, None]
        direction = -r
        gd = _dot(g, direction)
        bad = gd >= 0  # not a descent direction (rounding): fall back to steepest descent
        if bool(bad.any()):
            direction = torch.where(bad[..., None, None], -g, direction)
            gd = torch.where(bad, -_dot(g, g), gd)
        # Exact line search: logits are affine in the step, so one product dZ = X @ dir
        # gives the objective on the whole line; a few Newton steps in t (the objective is
        # convex in t) find its minimum with no further pass over X, and the step is better
        # than Armijo backtracking's (fewer iterations).
        dw = prob.to_w(direction[..., :d])
        dZ = prob.logits(direction, dw)
        Pk = theta.shape[0]
        t = torch.ones(Pk, M, dtype=torch.float64, device=dev)
        if it == 0:  # no curvature yet: start from a step of unit length
            t = 1.0 / _dot(g, g).double().sqrt().clamp_min(1.0)
        for _newton in range(5):  # from t = 1, L-BFGS's natural step, 1-2 steps usually do
            d1, d2 = prob.line_slope(Z, dZ, w, dw, t)
            t_new = (t - d1 / d2.clamp_min(1e-300)).clamp(min=0.0, max=1e6)
            settled = bool((((t_new - t).abs() <= 1e-2 * t_new) | done).all())
            t = t_new
            if settled:
                break
        t = torch.where(active, t, torch.zeros_like(t))
        slack = noise * f.abs().clamp_min(1.0)
        for _ls in range(max_ls):  # safeguard: Armijo on the same line, still no products
            Z_new = Z + t[..., None, None].to(dt) * dZ
            w_new = w + t[..., None, None].to(dt) * dw
            f_new = prob.loss(Z_new, w_new)
            ok = (f_new <= f + 1e-4 * t * gd.double() + slack) | (t == 0)
            if bool(ok.all()):
                break
            t = torch.where(ok, t, 0.5 * t)
        stalled = ~ok
        if bool(stalled.any()):  # no decrease possible any more: keep the old point
            t = torch.where(stalled, torch.zeros_like(t), t)
            Z_new = Z + t[..., None, None].to(dt) * dZ
            w_new = w + t[..., None, None].to(dt) * dw
            f_new = prob.loss(Z_new, w_new)
        theta_new = theta + t[..., None, None].to(dt) * direction
        g_new, gmax = prob.grad(Z_new, w_new)

        s_vec, y_vec = theta_new - theta, g_new - g
        sy, yy = _dot(s_vec, y_vec), _dot(y_vec, y_vec)
        valid = active & (sy > 1e-10 * _dot(s_vec, s_vec).sqrt() * yy.sqrt())
        S[head] = torch.where(valid[..., None, None], s_vec, S[head])
        Y[head] = torch.where(valid[..., None, None], y_vec, Y[head])
        # rho = 0 where no pair was stored, so a stale pair in this slot is ignored.
        rho[head] = torch.where(valid, 1.0 / sy.where(valid, torch.ones_like(sy)), torch.zeros_like(sy))
        gamma = torch.where(valid, sy / yy.clamp_min(1e-30), gamma)
        head = (head + 1) % history

        small_g = active & (gmax <= tol)
        if noise:  # float32: stop after 10 steps in a row that change f only by rounding
            flat = torch.where((f - f_new).abs() <= slack, flat + 1, torch.zeros_like(flat))
            small_f = flat >= 10
        else:
            small_f = (f - f_new) <= ftol * torch.maximum(f.abs(), f_new.abs()).clamp_min(1.0)
        conv |= small_g
        done = done | small_g | (active & (stalled | (small_f & (t > 0))))
        if bool(active.all()):
            theta, w, g, Z, f = theta_new, w_new, g_new, Z_new, f_new
        else:  # finished problems keep their last values
            keep = active[..., None, None]
            theta = torch.where(keep, theta_new, theta)
            w = torch.where(keep, w_new, w)
            g = torch.where(keep, g_new, g)
            Z = torch.where(keep, Z_new, Z)
            f = torch.where(active, f_new, f)
        if callback is not None:
            callback(it, int((~done).sum()))
    if len(ids):  # max_iter reached
        retire(torch.arange(len(ids), device=dev))

    if standardize:
        mean = c0[:, None, :] + s0[:, None, :] * mu.double()
        scale = s0[:, None, :] * sig.double()
    else:
        mean = torch.zeros(P, M, d, dtype=torch.float64, device=dev)
        scale = torch.ones(P, M, d, dtype=torch.float64, device=dev)
    return SolverResult(
        coef=out_w,
        intercept=out_theta[..., d],
        mean=mean.to(dt),
        scale=scale.to(dt),
        logits=out_Z,
        n_iter=out_iter,
        converged=out_conv,
        loss=out_f,
    )
