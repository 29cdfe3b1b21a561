"""Gradient cosine similarity between a training batch and the same batch without watermarks.

Definition (probekit's own; Ju et al. do not publish theirs): at every optimiser step t,

    cos_t = <g(B_t), g(B_t^clean)> / (||g(B_t)|| * ||g(B_t^clean)||)

where ``g(B)`` is the gradient of the mean answer-token cross-entropy of mini-batch ``B``
with respect to *all trainable parameters* (flattened and concatenated; the LoRA parameters
under LoRA), evaluated at the current weights; ``B_t`` is the batch as trained (some images
carry watermarks) and ``B_t^clean`` the same samples, questions and answers with the original,
unwatermarked images. cos_t = 1 exactly when no image of the batch carries a watermark (the
two batches are identical); the further below 1, the more the watermark pixels redirect the
update. Per run we report the mean and variance of cos_t over steps.

:class:`GradientCosine` is an ``on_step`` callback for :func:`probekit.organisms.finetune.finetune`:
it recomputes the clean gradient with ``torch.autograd.grad`` (so ``.grad`` of the parameters,
which the optimiser is about to use, is never touched) and restores the torch RNG state, so the
training trajectory is the same with and without it (``tests/test_memorization.py`` checks this).
"""

from __future__ import annotations

import random
from typing import Any, Sequence

import numpy as np
import torch

from .._stats import bootstrap_indices, percentile_interval
from ..errors import InputError
from ..models.adapter import Model
from .finetune import answer_batch

__all__ = ["batch_order", "GradientCosine", "flat_cosine"]


def batch_order(n: int, steps: int, batch_size: int, seed: int) -> list[list[int]]:
    """The sample indices of every step of ``finetune(..., steps, batch_size, seed)``.

    Mirrors finetune's sampler: without replacement, epoch by epoch, from a
    ``random.Random(seed)`` shuffle (the callback also checks each batch against the inputs).
    """
    rng = random.Random(seed)
    order: list[int] = []
    out = []
    for _ in range(steps):
        if len(order) < batch_size:
            fresh = list(range(n))
            rng.shuffle(fresh)
            order += fresh
        out.append(order[:batch_size])
        order = order[batch_size:]
    return out


def flat_cosine(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """Cosine of two lists of tensors viewed as one flat vector each (float64)."""
    dot = sum(float((x.double() * y.double()).sum()) for x, y in zip(a, b))
    na = sum(float((x.double() ** 2).sum()) for x in a) ** 0.5
    nb = sum(float((y.double() ** 2).sum()) for y in b) ** 0.5
    if na == 0 or nb == 0:
        return float("nan")
    return max(-1.0, min(1.0, dot / (na * nb)))


class GradientCosine:
    """``on_step`` callback recording cos(g(batch as trained), g(same batch, clean images)).

    Args:
        model: the :class:`probekit.Model` being fine-tuned.
        samples: the training samples exactly as passed to ``finetune``.
        clean_images: per sample, the image without its watermark (same order).
        steps, batch_size, seed: the ``finetune`` arguments (to know each step's batch).
        every: measure on steps 0, every, 2*every, ... only (the clean gradient costs a forward
            and a backward pass).

    Attributes after training: ``values`` (cos per step), ``n_marked`` (watermarked images per
    step), ``summary()`` -> mean / variance / step-bootstrap CI.
    """

    def __init__(self, model: Model, samples: Sequence[Any], clean_images: Sequence[Any], *, steps: int,
                 batch_size: int, seed: int, check: bool = True, every: int = 1):
        if len(clean_images) != len(samples):
            raise InputError(f"{len(clean_images)} clean images for {len(samples)} samples", fix="pass one per sample")
        self.model, self.samples, self.clean = model, list(samples), list(clean_images)
        self.order = batch_order(len(samples), steps, batch_size, seed)
        self.check, self.every = check, max(1, int(every))
        self.values: list[float] = []
        self.n_marked: list[int] = []

    def __call__(self, step: int, inputs: dict, loss: torch.Tensor) -> None:
        if step % self.every:
            return
        idx = self.order[step]
        batch = [self.samples[i] for i in idx]
        qs, ans = [s.question for s in batch], [s.answer for s in batch]
        if self.check and not torch.equal(inputs["labels"], answer_batch(self.model, [s.image for s in batch], qs, ans)[0]["labels"]):
            raise RuntimeError("GradientCosine lost track of finetune's batch order")
        clean_inputs, _ = answer_batch(self.model, [self.clean[i] for i in idx], qs, ans)
        marked = int(sum(not np.array_equal(np.asarray(s.image), np.asarray(self.clean[i])) for s, i in zip(batch, idx)))
        params = [p for p in self.model.hf.parameters() if p.requires_grad]
        g_train = [p.grad.detach() if p.grad is not None else torch.zeros_like(p) for p in params]
        rng = torch.get_rng_state()
        try:
            with torch.enable_grad():
                out = self.model.hf(**clean_inputs, use_cache=False)
                g_clean = torch.autograd.grad(out.loss, params, allow_unused=True)
        finally:
            torch.set_rng_state(rng)
        g_clean = [g if g is not None else torch.zeros_like(p) for g, p in zip(g_clean, params)]
        self.values.append(flat_cosine(g_train, g_clean))
        self.n_marked.append(marked)

    def summary(self, n_boot: int = 1000, seed: int = 0) -> dict:
        v = np.asarray(self.values, dtype=np.float64)
        rng = np.random.default_rng(seed)
        boots = v[bootstrap_indices(len(v), n_boot, rng)].mean(1) if len(v) else np.array([np.nan])
        lo, hi = percentile_interval(boots)
        return {"cos_mean": float(v.mean()), "cos_var": float(v.var(ddof=1)) if len(v) > 1 else 0.0,
                "cos_min": float(v.min()), "cos_step_lo": lo,
                "cos_step_hi": hi, "marked_frac": float(np.mean(self.n_marked) / max(1, len(self.order[0]))),
                "steps": len(v)}
