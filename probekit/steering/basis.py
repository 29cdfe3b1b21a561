"""The two things a Direction holds per point: an orthonormal basis and, for LEACE, an affine eraser."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["Eraser", "orthonormal"]


@dataclass
class Eraser:
    """LEACE's affine eraser at one point: ``x - (x - mean) @ right.T @ left.T``.

    ``left`` is ``[d, r]``, ``right`` ``[r, d]``, ``mean`` ``[d]``; ``left @ right`` is an
    oblique projection of rank r (r <= number of classes - 1, times groups when fitted per
    position). All float64 on the CPU; interventions cast them where they are used.
    """

    mean: Tensor
    left: Tensor
    right: Tensor

    def __call__(self, x: Tensor) -> Tensor:
        """Erase from ``x [..., d]`` (computed in float32 at least, returned in x's dtype)."""
        dt = torch.promote_types(x.dtype, torch.float32)
        m, left, right = (t.to(x.device, dt) for t in (self.mean, self.left, self.right))
        xx = x.to(dt)
        return (xx - ((xx - m) @ right.T) @ left.T).to(x.dtype)


def orthonormal(vectors: Tensor, tol: float = 1e-6) -> Tensor:
    """Orthonormal basis ``[k, d]`` of the span of the rows, in the rows' order (Gram-Schmidt by QR)."""
    if vectors.shape[0] == 1:
        norm = float(vectors.norm())
        if norm == 0.0 or not math.isfinite(norm):
            raise InputError("the direction is zero (the classes have identical means)",
                             fix="check the labels and that the activations differ between classes")
        return vectors / norm
    q, r = torch.linalg.qr(vectors.T)
    keep = r.diagonal().abs() > tol * r.diagonal().abs().max()
    # QR keeps the first vector's sign only up to r's diagonal sign; fix it so rows point the same way
    q = q * torch.sign(r.diagonal())
    return q.T[keep].contiguous()
