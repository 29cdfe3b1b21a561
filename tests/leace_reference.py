"""probekit's own LEACE closed form before it used concept-erasure's LeaceFitter (the previous
``steering/directions.py:leace_fit``): the reference that tests/test_steering_fit.py and
benchmarks/bench_leace.py compare LeaceFitter with."""

from __future__ import annotations

import torch


def closed_form(X: torch.Tensor, Z: torch.Tensor, tol: float = 1e-6):
    """LEACE eraser of ``X`` (float64) for the one-hot / indicator ``Z``, and its rank."""
    n = X.shape[0]
    mean = X.mean(0)
    Xc, Zc = X - mean, Z - Z.mean(0)
    sigma = Xc.T @ Xc / max(n - 1, 1)
    sxz = Xc.T @ Zc / max(n - 1, 1)
    L, V = torch.linalg.eigh(sigma)
    keep = L > L[-1].clamp_min(0) * sigma.shape[0] * torch.finfo(L.dtype).eps
    L = L.clamp_min(0)
    W = (V * torch.where(keep, L.rsqrt(), torch.zeros_like(L))) @ V.T
    W_inv = (V * torch.where(keep, L.sqrt(), torch.zeros_like(L))) @ V.T
    u, s, _ = torch.linalg.svd(W @ sxz, full_matrices=False)
    u = u[:, s > tol * max(float(s.max()), 1e-300)]
    left, right = W_inv @ u, u.T @ W
    return lambda x: x - ((x - mean) @ right.T) @ left.T, left.shape[1]
