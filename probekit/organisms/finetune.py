"""Fine-tune a (tiny) VLM on question/answer samples and measure its task accuracy.

Used by the demo, the steering acceptance test and the memorisation study. Full fine-tuning
or LoRA (``peft``; merged back into the weights at the end so that hook points keep their
module paths). The loss is the cross-entropy of the answer tokens only.
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Sequence

import torch

from .._progress import progress_bar
from .._stats import wilson
from ..data.images import to_pil
from ..errors import InputError
from ..params import Int, checked
from ..models.adapter import Model

__all__ = ["answer_batch", "finetune", "task_accuracy"]


def answer_batch(model: Model, images: Sequence[Any], questions: Sequence[str], answers: Sequence[str],
                 chat: bool | None = None) -> tuple[dict[str, torch.Tensor], list[list[int]]]:
    """Inputs for prompt + answer, with ``labels`` on the answer tokens only (-100 elsewhere).

    The teacher-forced inputs of :meth:`probekit.Model.prepare` (``answers=``), right padded.
    Returns the inputs and, per row, the absolute positions of its answer tokens.
    """
    inputs = model.prepare([to_pil(im) for im in images], list(questions), chat=chat, padding_side="right",
                           answers=list(answers))
    lengths = model.answer_lengths(inputs, answers).tolist()
    ids, am = inputs["input_ids"], inputs["attention_mask"]
    labels = torch.full_like(ids, -100)
    positions = []
    for r, n_ans in enumerate(lengths):
        end = int(am[r].nonzero().max()) + 1  # right padded: the answer ends the row's real tokens
        pos = list(range(end - n_ans, end))
        labels[r, pos] = ids[r, pos]
        positions.append(pos)
    inputs["labels"] = labels
    return inputs, positions


@checked(steps=Int(low=1, example=200), batch_size=Int(low=1, example=8))
def finetune(
    model: Model,
    samples: Sequence[Any],
    *,
    steps: int = 200,
    batch_size: int = 8,
    lr: float = 2e-3,
    weight_decay: float = 0.0,
    lora: dict | None = None,
    seed: int = 0,
    progress: bool = True,
    on_step: Callable[[int, dict, torch.Tensor], None] | None = None,
) -> list[float]:
    """Train on ``samples`` (objects with ``image``, ``question``, ``answer``) for ``steps`` steps.

    Args:
        lora: None for full fine-tuning, or LoRA settings (``{"r": 8, "alpha": 16}``, optionally
            ``target_modules``); the adapters are merged into the weights at the end.
        on_step: called as ``on_step(step, batch_inputs, loss)`` after each backward (e.g. to
            read gradients) and before the optimiser step.

    Returns the loss per step. Mini-batches are drawn without replacement, epoch by epoch,
    from a ``random.Random(seed)`` shuffle.
    """
    if not samples:
        raise InputError("no training samples", fix="pass a non-empty list of samples")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    hf = model.hf
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        targets = lora.get("target_modules") or ["q_proj", "k_proj", "v_proj", "o_proj"]
        cfg = LoraConfig(r=lora.get("r", 8), lora_alpha=lora.get("alpha", 16), lora_dropout=0.0,
                         target_modules=targets, bias="none")
        hf = get_peft_model(hf, cfg)
    params = [p for p in hf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    hf.train()
    order: list[int] = []
    losses = []
    try:
        for step in progress_bar(range(steps), desc="fine-tune", disable=not progress, leave=False):
            if len(order) < batch_size:
                fresh = list(range(len(samples)))
                rng.shuffle(fresh)
                order += fresh
            idx, order = order[:batch_size], order[batch_size:]
            batch = [samples[i] for i in idx]
            inputs, _ = answer_batch(model, [s.image for s in batch], [s.question for s in batch], [s.answer for s in batch])
            out = hf(**inputs, use_cache=False)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            if on_step is not None:
                on_step(step, inputs, out.loss.detach())
            opt.step()
            sched.step()
            losses.append(float(out.loss.detach()))
    finally:
        hf.eval()
        if lora is not None:
            model.hf = hf.merge_and_unload()
            model.hf.eval()
    return losses


@torch.no_grad()
def task_accuracy(model: Model, samples: Sequence[Any], batch_size: int = 32) -> dict:
    """Exact-match accuracy of the answer tokens (teacher-forced argmax), with a Wilson 95% CI."""
    correct = 0
    for b in range(0, len(samples), batch_size):
        batch = samples[b:b + batch_size]
        inputs, positions = answer_batch(model, [s.image for s in batch], [s.question for s in batch], [s.answer for s in batch])
        labels = inputs.pop("labels")
        logits = model.hf(**inputs, use_cache=False).logits
        for r, pos in enumerate(positions):
            pred = logits[r, [p - 1 for p in pos]].argmax(-1)
            correct += int(torch.equal(pred, labels[r, pos]))
    lo, hi = wilson(correct, len(samples))
    return {"accuracy": correct / len(samples), "accuracy_lo": lo, "accuracy_hi": hi, "n": len(samples)}
