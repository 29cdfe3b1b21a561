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
from typing import Iterator

import torch
from torch import Tensor

from ._objective import _dot, _init_theta, _points, _prepare, _Problem

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


# Below this many data elements a CPU solve runs on one thread: every op is then too small
# for threads to pay, and on a busy machine each parallel region can stall for milliseconds
# (spin-waiting OpenMP threads): check_estimator went from 0.5 s to 10 s that way.
_PARALLEL_MIN = 1 << 22


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then give the caller back its own count.

    torch's thread count is process-wide, so the solver changes it only for the duration of
    one solve and restores it in ``finally`` (an error or a KeyboardInterrupt included): no
    caller finds its setting changed afterwards.
    """
    old = torch.get_num_threads()
    if n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def solve(X: Tensor, labels: Tensor, weights: Tensor, *args, callback=None, first: int = 0, **kwargs) -> SolverResult:
    """Fit ``P x M`` logistic regressions; see :func:`_solve` (X is modified in place).

    On a CPU with several threads and at least as many points, the points are split into
    chunks solved concurrently, one single-threaded chunk per thread. The solver's elementwise
    ops are small; run with two intra-op threads, each one pays a thread wake-up, and
    chunks in parallel threads avoid that (1.46 s -> 0.95 s on the benchmark store).
    Each point's preconditioner is seeded by its index in the whole solve, so a problem
    takes the same path whichever chunk it lands in (values equal up to float rounding),
    and the chunks depend only on P and the thread count: runs are reproducible. ``first``: the
    index of ``X``'s first point in the whole table, when the caller solves a table chunk by chunk
    (under a memory limit), so a point's seed does not depend on the chunking either.
    The thread count is changed only inside this call (:func:`_torch_threads`).
    """
    P = X.shape[0]
    workers = torch.get_num_threads()
    if X.device.type != "cpu":
        return _solve(X, labels, weights, *args, callback=callback, first=first, **kwargs)
    small = X.numel() < _PARALLEL_MIN
    # With fewer points than threads, chunks would leave cores idle: one batch then.
    if workers == 1 or P < workers or small:
        with _torch_threads(1 if small else workers):
            return _solve(X, labels, weights, *args, callback=callback, first=first, **kwargs)
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
            callback=report if callback is not None else None, first=first + a, **kwargs,
        )

    with _torch_threads(1), ThreadPoolExecutor(workers, thread_name_prefix="probekit-solve") as pool:
        parts = list(pool.map(part, starts))
    return SolverResult(**{f.name: torch.cat([getattr(r, f.name) for r in parts]) for f in fields(SolverResult)})


def _rank(n: int, d: int) -> int:
    """Default preconditioner rank: 128 from 1,000 rows at d >= 1,024, else 64.

    The control task and permuted labels fit noise, which lives in the middle of the
    spectrum, not in the top directions the real labels mostly need; whitening 128 directions
    instead of 64 cut their iterations by 25-45% at n = 2,000 (30.6 -> 22.8 on the benchmark
    store, 39 -> 21 on one with a power-law spectrum) for one more pass of setup. Below 1,000
    rows the setup costs more than it saves (n = 500: 12 iterations either way).
    """
    return 128 if n >= 1000 and d >= 1024 else 64


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
    precondition: int | None = None,
    callback=None,
    first: int = 0,
) -> SolverResult:
    """Fit ``P x M`` logistic regressions; X: (P, n, d) is modified in place.

    labels: (P or 1, M, n) long in [0, n_classes); weights: (P or 1, M, n), 0 = unused row.
    Stops a problem when max |gradient| of the mean objective <= tol (scikit-learn's
    ``gtol``) or when its line search can no longer decrease the objective (rounding).
    ``precondition``: rank of the low-rank preconditioner (0: none; None: :func:`_rank`).
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
    if precondition is None:
        precondition = _rank(n, d)
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
