"""Unlearning baselines (as in MLLMU-Bench) on a forget set of watermarked images.

Losses, with CE the summed answer-token cross-entropy of one sample:

- ``"ga"`` gradient ascent: minimise -CE(forget).
- ``"gd"`` gradient difference: -CE(forget) + CE(retain).
- ``"kl"`` KL minimisation: -CE(forget) + CE(retain) + KL(reference || current) on the retain
  answer positions.
- ``"npo"`` NPO: -(2/beta) * logsigmoid(beta * (CE_current(forget) - CE_reference(forget))), beta = 0.4.

The reference is a frozen copy of the model before unlearning. Full fine-tuning, AdamW.
"""

from __future__ import annotations

import copy
import random
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..models.adapter import Model
from .finetune import answer_batch

__all__ = ["METHODS", "unlearn", "sample_nll"]

METHODS = ("ga", "gd", "kl", "npo")


def sample_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed answer-token cross-entropy per row (labels -100 outside the answer)."""
    lg, lb = logits[:, :-1].float(), labels[:, 1:]
    ce = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), lb.reshape(-1), ignore_index=-100, reduction="none")
    return ce.view(lb.shape).sum(1)


def _inputs(model: Model, batch: Sequence[Any]) -> dict:
    return answer_batch(model, [s.image for s in batch], [s.question for s in batch], [s.answer for s in batch])[0]


def unlearn(model: Model, forget: Sequence[Any], retain: Sequence[Any], method: str = "npo", *, steps: int = 20,
            batch_size: int = 8, lr: float = 1e-4, beta: float = 0.4, seed: int = 0) -> list[float]:
    """Run ``method`` for ``steps`` steps in place on ``model``; returns the loss per step."""
    if method not in METHODS:
        raise InputError(f"unknown unlearning method {method!r}", fix=f"choose from {METHODS}")
    if not forget or (method != "ga" and method != "npo" and not retain):
        raise InputError("empty forget or retain set", fix="pass samples with image, question, answer")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    hf = model.hf
    ref = copy.deepcopy(hf).eval() if method in ("kl", "npo") else None
    params = [p for p in hf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    hf.train()
    losses = []
    try:
        for _ in range(steps):
            fb = _inputs(model, rng.sample(list(forget), min(batch_size, len(forget))))
            out_f = hf(**{k: v for k, v in fb.items() if k != "labels"}, use_cache=False)
            ce_f = sample_nll(out_f.logits, fb["labels"])
            if method == "npo":
                with torch.no_grad():
                    ce_ref = sample_nll(ref(**{k: v for k, v in fb.items() if k != "labels"}, use_cache=False).logits, fb["labels"])
                loss = -(2.0 / beta) * F.logsigmoid(beta * (ce_f - ce_ref)).mean()
            else:
                loss = -ce_f.mean()
            if method in ("gd", "kl"):
                rb = _inputs(model, rng.sample(list(retain), min(batch_size, len(retain))))
                plain = {k: v for k, v in rb.items() if k != "labels"}
                out_r = hf(**plain, use_cache=False)
                loss = loss + sample_nll(out_r.logits, rb["labels"]).mean()
                if method == "kl":
                    with torch.no_grad():
                        ref_logits = ref(**plain, use_cache=False).logits
                    mask = rb["labels"][:, 1:] != -100
                    lp = torch.log_softmax(out_r.logits[:, :-1].float(), -1)[mask]
                    lq = torch.log_softmax(ref_logits[:, :-1].float(), -1)[mask]
                    loss = loss + (lq.exp() * (lq - lp)).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        hf.eval()
    return losses
