"""Per-sample membership scores from per-token log-probabilities: at the output, or at any layer through a lens.

A model that memorised a sample is more confident about that sample's true next tokens than about
an unseen one's. The output attacks read that off the final logits; the same scores read off a
layer's lens distribution (logit lens, or tuned lens) say at which depth it becomes readable.

For the answer tokens ``y_t`` of one sample, with ``log p_t`` a (lens) next-token distribution:

- ``loss``: mean ``log p_t(y_t)`` (minus the loss; Yeom et al. 2018);
- ``min_k``: mean of the lowest ``ceil(k * T)`` of them, at least one (Min-K% Prob, Shi et al. 2023;
  the reference code takes ``floor(k * T)`` and so none for ``T < 1 / k``: probekit takes ceil);
- ``min_k_pp``: the same on ``(log p_t(y_t) - mu_t) / sigma_t``, ``mu_t`` and ``sigma_t`` the mean and
  standard deviation of ``log p_t`` under ``p_t`` itself (Min-K%++, Zhang et al. 2024);

and, as features a membership probe can compare across samples: the entropy of ``p_t``, the margin
``max log p_t - log p_t(y_t)``, the residual norm ``||h_t||`` and the raw logit of the true token
``h_t . W_U[y_t]`` (each the mean over the answer tokens), and ``log p_t(y_t)`` of the last token.
Higher means "member" for every score.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["SCORES", "FEATURES", "token_scores"]

SCORES = ("loss", "min_k", "min_k_pp")
FEATURES = ("loss", "min_logprob", "last_logprob", "neg_entropy", "neg_margin", "norm", "true_logit")


def token_scores(logp: Tensor, targets: Tensor, lengths: Sequence[int], k: float = 0.2,
                 hidden: Tensor | None = None, raw_logits: Tensor | None = None) -> dict[str, np.ndarray]:
    """Scores and features per sample from the answer tokens of a batch laid end to end.

    ``logp``: ``[N, V]`` log-probabilities at the N answer-predicting positions of all samples (sample i
    owns ``lengths[i]`` consecutive rows); ``targets``: ``[N]`` the true next tokens; ``hidden``: ``[N, d]``
    the residual read there (for ``norm``) and ``raw_logits`` ``[N, V]`` before the softmax (for
    ``true_logit``), when given. Returns ``{name: [n_samples]}`` for :data:`SCORES` and :data:`FEATURES`.
    """
    logp = logp.double()
    tgt = logp.gather(-1, targets.view(-1, 1)).squeeze(-1)  # [N]
    probs = logp.exp()
    mu = (probs * logp).sum(-1)
    sd = ((probs * logp.pow(2)).sum(-1) - mu.pow(2)).clamp_min(1e-12).sqrt()
    z = (tgt - mu) / sd
    margin = logp.max(-1).values - tgt
    norm = hidden.double().norm(dim=-1) if hidden is not None else torch.full_like(tgt, math.nan)
    true_logit = raw_logits.double().gather(-1, targets.view(-1, 1)).squeeze(-1) if raw_logits is not None \
        else torch.full_like(tgt, math.nan)
    out: dict[str, list[float]] = {name: [] for name in (*SCORES, *FEATURES)}
    start = 0
    for n in lengths:
        sl = slice(start, start + int(n))
        start += int(n)
        t, m = tgt[sl], max(1, int(math.ceil(k * int(n))))
        out["loss"].append(float(t.mean()))
        out["min_k"].append(float(t.sort().values[:m].mean()))
        out["min_k_pp"].append(float(z[sl].sort().values[:m].mean()))
        out["min_logprob"].append(float(t.min()))
        out["last_logprob"].append(float(t[-1]))
        out["neg_entropy"].append(float(mu[sl].mean()))  # sum p log p = minus the entropy
        out["neg_margin"].append(float(-margin[sl].mean()))
        out["norm"].append(float(norm[sl].mean()))
        out["true_logit"].append(float(true_logit[sl].mean()))
    return {name: np.asarray(v) for name, v in out.items()}
