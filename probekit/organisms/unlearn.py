"""Unlearning baselines as the field defines them (open-unlearning, TOFU's successor), and MLLMU-Bench's schedule.

Losses on one batch, with ``NLL`` the cross-entropy of the labelled (answer) tokens averaged over
every labelled token of the batch (a Hugging Face model's ``outputs.loss``) and ``seqNLL`` the
same summed per sequence (open-unlearning ``compute_batch_nll``):

- ``"ga"`` GradAscent: ``-NLL(forget)``.
- ``"gd"`` GradDiff: ``-gamma * NLL(forget) + alpha * NLL(retain)`` in one step (gamma = alpha = 1).
- ``"kl"`` GradDiff with ``retain_loss_type="KL"`` (open-unlearning's KL method):
  ``-gamma * NLL(forget) + alpha * KL(reference || current)`` on the retain batch, the KL summed over
  the vocabulary and averaged over every position of the batch (``kl_div(..., reduction="batchmean")``
  on ``[batch * length, vocab]``: prompt and padding positions included, as there).
- ``"npo"`` NPO (Zhang et al. 2024; open-unlearning ``compute_dpo_loss`` with only the losing side):
  ``-(2/beta) * mean logsigmoid(beta * (seqNLL_current - seqNLL_reference))`` on the forget batch,
  beta = 0.4 here (MLLMU-Bench's value; open-unlearning's default is 0.1). open-unlearning's NPO
  trainer adds ``alpha * NLL(retain)`` (NPO+RT in the paper); this is NPO alone.

MLLMU-Bench's ``baselines/`` schedule, kept as named variants: a forget epoch of ascent steps, then
a retain epoch of separate descent steps (``GA_Difference.py``, ``KL_Min.py``):

- ``"gd_mllmu"``: forget steps ``-NLL(forget)``, retain steps ``NLL(retain)``.
- ``"kl_mllmu"``: forget steps ``-NLL(forget)``, retain steps ``NLL(retain) + KL`` with MLLMU-Bench's
  reduction (``kl_div`` of ``[batch, length, vocab]`` with ``"batchmean"``: summed over positions,
  averaged over sequences).

The reference is a frozen copy of the model before unlearning. Full fine-tuning, AdamW, gradients
clipped at norm 1. Labels cover the answer tokens only (MLLMU-Bench labels every non-pad token).
"""

from __future__ import annotations

import copy
import math
import random
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..models.adapter import Model
from .finetune import answer_batch

__all__ = ["METHODS", "VARIANTS", "ALL_METHODS", "unlearn", "relearn", "token_nll", "sequence_nll", "sample_nll",
           "kl_all_positions", "kl_per_sequence", "objective", "schedule"]

METHODS = ("ga", "gd", "kl", "npo")  # open-unlearning's definitions: the defaults
VARIANTS = ("gd_mllmu", "kl_mllmu")  # MLLMU-Bench's forget-epoch-then-retain-epoch schedule
ALL_METHODS = METHODS + VARIANTS
_RETAIN = ("gd", "kl") + VARIANTS
_REFERENCE = ("kl", "npo", "kl_mllmu")


def _shifted(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy ``[batch, length - 1]`` of next-token predictions (0 where labels are -100)."""
    lg, lb = logits[:, :-1].float(), labels[:, 1:]
    return F.cross_entropy(lg.reshape(-1, lg.shape[-1]), lb.reshape(-1), ignore_index=-100,
                           reduction="none").view(lb.shape)


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every labelled token of the batch: what ``model(**inputs, labels=...).loss`` returns."""
    n = (labels[:, 1:] != -100).sum()
    return _shifted(logits, labels).sum() / n.clamp_min(1)


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed answer-token cross-entropy per row ``[batch]`` (open-unlearning ``compute_batch_nll``)."""
    return _shifted(logits, labels).sum(1)


sample_nll = sequence_nll  # the old name


def kl_all_positions(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """KL(reference || current) summed over the vocabulary, averaged over every position of the batch
    (open-unlearning ``compute_kl_divergence``)."""
    v = logits.shape[-1]
    cur = torch.log_softmax(logits.float(), -1).reshape(-1, v)
    ref = torch.log_softmax(ref_logits.float(), -1).reshape(-1, v)
    return F.kl_div(cur, ref, reduction="batchmean", log_target=True)


def kl_per_sequence(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """KL(reference || current) summed over vocabulary and positions, averaged over sequences (MLLMU-Bench ``KL_Min.py``)."""
    return F.kl_div(torch.log_softmax(logits.float(), -1), torch.softmax(ref_logits.float(), -1), reduction="batchmean")


def objective(method: str, part: str, out: torch.Tensor, labels: torch.Tensor, ref: torch.Tensor | None = None,
              retain: tuple | None = None, beta: float = 0.4, gamma: float = 1.0, alpha: float = 1.0) -> torch.Tensor:
    """The loss of one step from logits.

    ``part`` is ``"forget"`` (``out``/``labels``/``ref``: the forget batch; ``retain``: ``(logits, labels,
    ref_logits)`` of the retain batch for the joint methods) or ``"retain"`` (a retain step of the
    MLLMU-Bench variants). ``ref``: the reference model's logits where the method needs them.
    """
    if part == "retain":
        if method == "kl_mllmu":
            return token_nll(out, labels) + kl_per_sequence(out, ref)
        return token_nll(out, labels)
    if method == "npo":
        return -(2.0 / beta) * F.logsigmoid(beta * (sequence_nll(out, labels) - sequence_nll(ref, labels))).mean()
    loss = -token_nll(out, labels)
    if method in ("gd", "kl"):
        r_out, r_labels, r_ref = retain
        loss = gamma * loss + alpha * (token_nll(r_out, r_labels) if method == "gd" else kl_all_positions(r_out, r_ref))
    return loss


def schedule(method: str, n_forget: int, n_retain: int, batch_size: int, steps: int) -> list[str]:
    """Which batch each step draws: ``"forget"`` (joint methods: a forget batch and, for gd/kl, a
    retain batch) or, for the MLLMU-Bench variants, epochs of ``ceil(n_forget / b)`` forget steps
    followed by ``ceil(n_retain / b)`` retain steps, cut at ``steps``."""
    if method not in VARIANTS:
        return ["forget"] * steps
    epoch = ["forget"] * math.ceil(n_forget / batch_size) + ["retain"] * math.ceil(n_retain / batch_size)
    return (epoch * (steps // len(epoch) + 1))[:steps]


def _inputs(model: Model, batch: Sequence[Any]) -> dict:
    return answer_batch(model, [s.image for s in batch], [s.question for s in batch], [s.answer for s in batch])[0]


class _Epochs:
    """Batches drawn without replacement, epoch by epoch, from a seeded shuffle."""

    def __init__(self, items: Sequence[Any], batch_size: int, rng: random.Random):
        self.items, self.b, self.rng, self.order = list(items), min(batch_size, len(items)), rng, []

    def next(self) -> list:
        if len(self.order) < self.b:
            fresh = list(range(len(self.items)))
            self.rng.shuffle(fresh)
            self.order += fresh
        idx, self.order = self.order[:self.b], self.order[self.b:]
        return [self.items[i] for i in idx]


def unlearn(model: Model, forget: Sequence[Any], retain: Sequence[Any], method: str = "npo", *, steps: int = 20,
            batch_size: int = 8, lr: float = 1e-4, beta: float = 0.4, gamma: float = 1.0, alpha: float = 1.0,
            seed: int = 0) -> list[float]:
    """Run ``method`` for ``steps`` optimiser steps in place on ``model``; returns the loss per step.

    For the MLLMU-Bench variants pass ``steps = epochs * (ceil(|forget| / b) + ceil(|retain| / b))``
    to run whole epochs (:func:`schedule`).
    """
    if method not in ALL_METHODS:
        raise InputError(f"unknown unlearning method {method!r}", fix=f"choose from {ALL_METHODS}")
    if not forget or (method in _RETAIN and not retain):
        raise InputError("empty forget or retain set", fix="pass samples with image, question, answer")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    hf = model.hf
    ref = copy.deepcopy(hf).eval() if method in _REFERENCE else None
    params = [p for p in hf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    fb, rb = _Epochs(forget, batch_size, rng), (_Epochs(retain, batch_size, rng) if retain else None)
    plain = lambda b: {k: v for k, v in b.items() if k != "labels"}  # noqa: E731

    def run(net, batch):
        return net(**plain(batch), use_cache=False).logits

    hf.train()
    losses = []
    try:
        for part in schedule(method, len(forget), len(retain or ()), batch_size, steps):
            batch = _inputs(model, fb.next() if part == "forget" else rb.next())
            out = run(hf, batch)
            needs_ref = method == "npo" or (part == "retain" and method == "kl_mllmu")
            with torch.no_grad():
                r = run(ref, batch) if needs_ref else None
            retain_part = None
            if part == "forget" and method in ("gd", "kl"):
                rbatch = _inputs(model, rb.next())
                r_out = run(hf, rbatch)
                with torch.no_grad():
                    r_ref = run(ref, rbatch) if method == "kl" else None
                retain_part = (r_out, rbatch["labels"], r_ref)
            loss = objective(method, part, out, batch["labels"], r, retain_part, beta=beta, gamma=gamma, alpha=alpha)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        hf.eval()
    return losses


def relearn(model: Model, samples: Sequence[Any], *, steps: int = 10, batch_size: int = 16, lr: float = 1e-3,
            seed: int = 0) -> list[float]:
    """The relearning attack: a few plain fine-tuning steps (``NLL``, AdamW, constant lr) in place."""
    if not samples:
        raise InputError("no relearning samples", fix="pass samples with image, question, answer")
    torch.manual_seed(seed)
    hf = model.hf
    params = [p for p in hf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    draw = _Epochs(samples, batch_size, random.Random(seed))
    hf.train()
    losses = []
    try:
        for _ in range(steps):
            batch = _inputs(model, draw.next())
            loss = token_nll(hf(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits,
                             batch["labels"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        hf.eval()
    return losses
