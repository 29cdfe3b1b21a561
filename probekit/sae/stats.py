"""SAE quality on stored activations, as the field reports it (no model needed), and latents of a store.

:func:`sae_stats`, one streaming pass over the store (float64 sums, memory flat in n):

- ``fvu``: fraction of variance unexplained, ``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``
  (0 perfect; 1 no better than the mean), and ``explained_variance = 1 - fvu``;
- ``l0``: mean number of active latents per row (``l0_max`` the largest);
- ``dead``: latents that never fire on these rows (count and fraction of ``d_sae``), and
  ``dense``: latents active on more than 10% of rows;
- ``cosine``: mean cosine similarity of each row with its reconstruction;
- ``fire_rate`` / ``mean_act``: per latent, how often it fires and its mean activation where it does.

The loss / KL recovered when the reconstruction replaces the activation in the forward pass need
the model: :func:`probekit.steering.sae.splice_quality`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from .model import SAE
from .train import rows

__all__ = ["sae_stats", "encode_store"]


def _point(sae: SAE, point: str | None) -> str:
    p = point or sae.point
    if p is None:
        raise InputError("this SAE does not record the point it reads", fix='pass point="lm.3.resid"')
    return p


@torch.no_grad()
def sae_stats(sae: SAE, store: Any, point: str | None = None, position: Any = "sae", batch: int = 4096) -> dict:
    """Quality of ``sae`` on ``store[point]`` (default: the SAE's own point and position); see the module docstring.

    Example:
        >>> import torch
        >>> from probekit.hooks.store import ActivationStore
        >>> sae = SAE.random(4, 16, "topk", k=2)
        >>> st = sae_stats(sae, ActivationStore({"lm.0.resid": torch.randn(100, 4)}), "lm.0.resid")
        >>> sorted(k for k in st if not k.startswith(("fire", "mean_act")))[:4], st["l0"]
        (['cosine', 'd_sae', 'dead', 'dead_fraction'], 2.0)
    """
    point = _point(sae, point)
    position = sae.position if position == "sae" else position
    n, sse, s, ss, l0, l0_max, cos = 0, 0.0, None, 0.0, 0.0, 0, 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.float64)
    act = torch.zeros(sae.d_sae, dtype=torch.float64)
    for x in rows(store, point, position):
        for b in range(0, x.shape[0], batch):
            xb = x[b:b + batch].to(sae.W_enc.dtype)
            z = sae.encode(xb)
            x_hat = sae.decode(z)
            xd, rd = xb.double(), (xb - x_hat).double()
            sse += float((rd * rd).sum())
            s = xd.sum(0) if s is None else s + xd.sum(0)
            ss += float((xd * xd).sum())
            on = z > 0
            k = on.sum(-1)
            l0 += float(k.sum())
            l0_max = max(l0_max, int(k.max()))
            fired += on.sum(0).double()
            act += z.double().sum(0)
            cos += float(torch.nn.functional.cosine_similarity(xd, x_hat.double(), dim=-1).sum())
            n += xb.shape[0]
    if not n:
        raise InputError(f"the store holds no rows of {point}", fix="collect activations first")
    mean = s / n
    total = ss - n * float(mean @ mean)
    fvu = sse / total if total > 0 else float("nan")
    dead = int((fired == 0).sum())
    return {"point": point, "position": position, "n": n, "d_sae": sae.d_sae, "fvu": fvu, "explained_variance": 1 - fvu,
            "l0": l0 / n, "l0_max": l0_max, "dead": dead, "dead_fraction": dead / sae.d_sae,
            "dense": int((fired / n > 0.1).sum()), "cosine": cos / n,
            "fire_rate": (fired / n).numpy(), "mean_act": np.where(fired.numpy() > 0, (act / fired.clamp_min(1)).numpy(), 0.0)}


@torch.no_grad()
def encode_store(sae: SAE, store: Any, point: str | None = None, position: Any = "sae", batch: int = 4096) -> Tensor:
    """The latents ``[n, d_sae]`` of every row of ``store[point]`` (one row per sample: pass a ``position``
    of a multi-position point, default the SAE's own), read shard by shard."""
    point = _point(sae, point)
    position = sae.position if position == "sae" else position
    info = store.info(point)
    if len(info["shape"]) == 2 and position is None:
        raise InputError(f"{point} holds {info['shape'][0]} positions per sample; latents per sample need one",
                         fix=f"pass position= one of {info['positions']}")
    out = [sae.encode(x[b:b + batch].to(sae.W_enc.dtype)).float() for x in rows(store, point, position)
           for b in range(0, x.shape[0], batch)]
    return torch.cat(out) if out else torch.zeros(0, sae.d_sae)
