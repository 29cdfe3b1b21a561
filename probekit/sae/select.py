"""Which latents carry a label: univariate scores on latent activations (values only, no model).

- ``"anova"``: the between-class F statistic of each latent's activation (any number of classes);
- ``"diff"``: the standardised mean difference, positive class minus the rest (two classes,
  signed: latents that fire *more* on the positive rows rank first; Suri et al.'s latents that fire
  on memorised content).

:func:`select_latents` returns the ``m`` best latents with their scores and ``alpha``: each one's
mean activation where it fires on the positive rows (the scale of Suri et al.'s ``alpha * beta * v``
and of SAUCE-style clamping values), all computed from the rows given (fit them on held-out data).

Example:
    >>> import torch
    >>> z = torch.zeros(8, 5); z[:4, 2] = 3.0; z[4:, 0] = 1.0
    >>> s = select_latents(z, [1, 1, 1, 1, 0, 0, 0, 0], m=1, method="diff", positive=1)
    >>> s.latents, s.alpha
    ([2], [3.0])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError, check_int, plain

__all__ = ["Selection", "latent_scores", "select_latents"]


@dataclass(frozen=True)
class Selection:
    """``m`` latents of one SAE, best first: their indices, scores, ``alpha`` and how they were chosen."""

    latents: list[int]
    scores: list[float]
    alpha: list[float]
    method: str
    n: int = 0
    extra: dict = field(default_factory=dict)


def latent_scores(z: Tensor, labels: Any, method: str = "anova", positive: Any = None) -> np.ndarray:
    """One score per latent ``[d_sae]`` (larger = carries the label more); see the module docstring."""
    from ..data.labels import encode_labels

    z = torch.as_tensor(z).double()
    if z.ndim != 2:
        raise InputError(f"latents must be [n, d_sae], got {tuple(z.shape)}", fix="encode one row per sample")
    codes, classes = encode_labels(labels, z.shape[0])
    if method == "diff":
        if positive is None:
            if len(classes) != 2:
                raise InputError("method='diff' needs two classes or positive=", fix="pass positive=<the class>")
            positive = classes[1]
        if positive not in set(classes.tolist()):
            raise InputError(f"positive={plain(positive)!r} is not a label", fix=f"use one of {classes.tolist()}")
        pos = torch.as_tensor(codes == int(np.flatnonzero(classes == positive)[0]))
        a, b = z[pos], z[~pos]
        sd = torch.sqrt((a.var(0, unbiased=False) * len(a) + b.var(0, unbiased=False) * len(b)) / len(z)).clamp_min(1e-9)
        return ((a.mean(0) - b.mean(0)) / sd).numpy()
    if method != "anova":
        raise InputError(f"unknown method {plain(method)!r}", fix="use 'anova' or 'diff'")
    K, n = len(classes), z.shape[0]
    onehot = torch.nn.functional.one_hot(torch.as_tensor(codes), K).double()
    counts = onehot.sum(0)
    means = (onehot.T @ z) / counts[:, None]
    grand = z.mean(0)
    between = (counts[:, None] * (means - grand) ** 2).sum(0) / max(K - 1, 1)
    within = ((z - means[torch.as_tensor(codes)]) ** 2).sum(0) / max(n - K, 1)
    f = between / within.clamp_min(1e-12)
    return torch.where(between > 0, f, torch.zeros_like(f)).numpy()


def select_latents(z: Tensor, labels: Any, m: int = 4, method: str = "anova", positive: Any = None,
                   min_fires: int = 2) -> Selection:
    """The ``m`` latents with the largest :func:`latent_scores` among those firing on at least ``min_fires`` rows."""
    m = check_int(m, "m", low=1, example=4)
    z = torch.as_tensor(z).float()
    s = latent_scores(z, labels, method, positive)
    alive = ((z > 0).sum(0) >= min_fires).numpy()
    order = [int(j) for j in np.argsort(-np.where(alive, s, -np.inf), kind="stable") if alive[j]][:m]
    if not order:
        raise InputError("no latent fires on these rows", fix="check the SAE reads this point and position")
    if method == "diff":
        from ..data.labels import encode_labels

        codes, classes = encode_labels(labels, z.shape[0])
        pos_class = positive if positive is not None else classes[1]
        rows = torch.as_tensor(codes == int(np.flatnonzero(classes == pos_class)[0]))
    else:
        rows = torch.ones(z.shape[0], dtype=torch.bool)
    zz = z[rows][:, order]
    fired = (zz > 0).sum(0).clamp_min(1)
    alpha = (zz.clamp_min(0).sum(0) / fired).tolist()
    return Selection(order, [float(s[j]) for j in order], [float(a) for a in alpha], method, int(z.shape[0]))
