"""Scores of the fictitious-profile study (MLLMU-Bench's metrics, membership attacks, Holm decisions).

- :func:`mc_accuracy`: multiple choice, the answer against ``n_options - 1`` distractors of the same
  attribute, scored by the model's next-token log-probability (Wilson 95% CI).
- :func:`cloze_accuracy`: in the teacher-forced biography, is each fact word the argmax given the
  words before it.
- :func:`rouge_l`: greedy generation of the biography against the reference, ROUGE-L F1
  (``rouge-score``), mean with a bootstrap CI.
- :func:`mia_scores`: per sample, loss, Min-K% (Shi et al. 2023) and Min-K%++ (Zhang et al. 2024:
  each token's log-prob standardised by the mean and sd of the model's own next-token log-probs).
- :func:`holm_detect`: per-layer "detected" after Holm's correction across the rows tested.

Example:
    >>> holm_detect([0.001, 0.02, 0.4])
    [True, True, False]
"""

from __future__ import annotations

import math
import random
from typing import Any, Sequence

import numpy as np
import torch

from .._stats import bootstrap_mean, holm
from .._stats import p_from_ci as _p_from_ci
from ..models.adapter import Model
from .finetune import answer_batch, wilson

__all__ = ["mc_accuracy", "cloze_accuracy", "rouge_l", "mia_scores", "holm_detect", "p_from_ci", "boot_ci"]


def boot_ci(x: Sequence[float], seed: int = 0, n_boot: int = 1000) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap 95% CI (:func:`probekit._stats.bootstrap_mean`)."""
    return bootstrap_mean(x, seed, n_boot)


def _token_id(model: Model, word: str) -> int:
    tok = getattr(model.processor, "tokenizer", model.processor)
    return tok(" " + word, add_special_tokens=False)["input_ids"][0]


@torch.no_grad()
def mc_accuracy(model: Model, samples: Sequence[Any], options: dict[str, Sequence[str]], n_options: int = 4,
                seed: int = 0, batch_size: int = 64) -> dict:
    """Multiple-choice accuracy over ``samples`` (single-token answers; ``options[attribute]`` the candidates).

    Chance is ``1 / n_options``; distractors are drawn with ``random.Random(seed)``.
    """
    rng = random.Random(seed)
    correct = []
    for b in range(0, len(samples), batch_size):
        batch = samples[b:b + batch_size]
        inputs, positions = answer_batch(model, [s.image for s in batch], [s.question for s in batch],
                                         [s.answer for s in batch])
        inputs.pop("labels")
        logits = model.hf(**inputs, use_cache=False).logits
        for r, s in enumerate(batch):
            others = [o for o in options[s.attribute] if o != s.answer]
            cands = [s.answer] + rng.sample(others, n_options - 1)
            ids = [_token_id(model, c) for c in cands]
            row = logits[r, positions[r][0] - 1, ids]
            correct.append(int(row.argmax()) == 0)
    k = int(sum(correct))
    lo, hi = wilson(k, len(correct))
    return {"accuracy": k / max(1, len(correct)), "lo": lo, "hi": hi, "n": len(correct), "chance": 1 / n_options,
            "correct": correct}


@torch.no_grad()
def cloze_accuracy(model: Model, bios: Sequence[Any], fact_words: Sequence[Sequence[str]], batch_size: int = 64) -> dict:
    """Fraction of fact words in the biography answers that the model predicts given the words before them."""
    correct = []
    for b in range(0, len(bios), batch_size):
        batch = bios[b:b + batch_size]
        inputs, positions = answer_batch(model, [s.image for s in batch], [s.question for s in batch],
                                         [s.answer for s in batch])
        labels = inputs.pop("labels")
        pred = model.hf(**inputs, use_cache=False).logits.argmax(-1)
        for r, pos in enumerate(positions):
            want = {_token_id(model, w) for w in fact_words[b + r]}
            for p in pos:
                if int(labels[r, p]) in want:
                    correct.append(int(pred[r, p - 1]) == int(labels[r, p]))
    k = int(sum(correct))
    lo, hi = wilson(k, len(correct))
    return {"accuracy": k / max(1, len(correct)), "lo": lo, "hi": hi, "n": len(correct)}


@torch.no_grad()
def rouge_l(model: Model, bios: Sequence[Any], max_new_tokens: int = 24, seed: int = 0) -> dict:
    """Greedy biography vs reference, ROUGE-L F1; prompts are batched by token length (no padding)."""
    from rouge_score import rouge_scorer

    tok = getattr(model.processor, "tokenizer", model.processor)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    by_len: dict[int, list[int]] = {}
    for i, s in enumerate(bios):
        by_len.setdefault(len(tok(s.question)["input_ids"]), []).append(i)
    scores, texts = [0.0] * len(bios), [""] * len(bios)
    for idx in by_len.values():
        inputs = model.prepare([bios[i].image for i in idx], [bios[i].question for i in idx])
        gen = model.hf.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tok.pad_token_id or tok.eos_token_id)
        new = gen[:, inputs["input_ids"].shape[1]:]
        for r, i in enumerate(idx):
            texts[i] = tok.decode(new[r], skip_special_tokens=True).strip()
            scores[i] = scorer.score(bios[i].answer, texts[i])["rougeL"].fmeasure
    m, lo, hi = boot_ci(scores, seed)
    return {"rouge_l": m, "lo": lo, "hi": hi, "n": len(bios), "example": texts[0] if texts else ""}


@torch.no_grad()
def mia_scores(model: Model, samples: Sequence[Any], k: float = 0.2, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Per sample: ``loss`` (mean answer-token log-prob), ``min_k`` and ``min_k_pp``; higher = member."""
    out: dict[str, list[float]] = {"loss": [], "min_k": [], "min_k_pp": []}
    for b in range(0, len(samples), batch_size):
        batch = samples[b:b + batch_size]
        inputs, positions = answer_batch(model, [s.image for s in batch], [s.question for s in batch],
                                         [s.answer for s in batch])
        labels = inputs.pop("labels")
        logp = torch.log_softmax(model.hf(**inputs, use_cache=False).logits.double(), -1)
        for r, pos in enumerate(positions):
            lp = logp[r, [p - 1 for p in pos]]  # [t, V]
            tgt = lp.gather(-1, labels[r, pos].unsqueeze(-1)).squeeze(-1)
            probs = lp.exp()
            mu = (probs * lp).sum(-1)
            sd = ((probs * lp.pow(2)).sum(-1) - mu.pow(2)).clamp_min(1e-12).sqrt()
            m = max(1, int(math.ceil(k * len(pos))))
            out["loss"].append(float(tgt.mean()))
            out["min_k"].append(float(tgt.sort().values[:m].mean()))
            out["min_k_pp"].append(float(((tgt - mu) / sd).sort().values[:m].mean()))
    return {key: np.array(v) for key, v in out.items()}


def p_from_ci(value: float, lo: float, hi: float, chance: float) -> float:
    """One-sided p-value of ``value > chance`` from a 95% CI (normal approximation, se = width / 3.92)."""
    return _p_from_ci(value, lo, hi, chance, min_se=1e-12)


def holm_detect(pvalues: Sequence[float], alpha: float = 0.05) -> list[bool]:
    """Holm's step-down decision per p-value (family-wise error ``alpha`` over all of them)."""
    return (holm(np.asarray(pvalues, dtype=float)) <= alpha).tolist()
