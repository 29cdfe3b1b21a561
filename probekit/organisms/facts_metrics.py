"""Scores of the fictitious-profile study: likelihood protocols and membership attacks.

- :func:`mc_accuracy` (``protocol="likelihood"``): multiple choice by likelihood ranking. Each
  candidate (the answer and ``n_options - 1`` distractors of the same attribute, in a seeded random
  order) is scored as a whole sequence, the sum of its tokens' log-probabilities after the prompt
  (``normalise=True``: their mean); the first highest-scoring candidate in that random order is
  the pick, so ties do not favour the answer (``ties="against"``: a tie with the answer counts as
  wrong). A model with constant logits scores chance, ``1 / n_options``. MLLMU-Bench's own
  protocol (letters in the prompt, a generated reply) is :func:`probekit.studies.unlearning.mllmu_protocol.mc_generation`.
- :func:`cloze_accuracy`: probekit's teacher-forced cloze: in the biography, is each fact word's
  token the argmax given the words before it (MLLMU-Bench's generated ``[Blank]`` cloze is
  :func:`probekit.studies.unlearning.mllmu_protocol.cloze_generation`).
- :func:`mia_scores`: per sample, loss, Min-K% (Shi et al. 2023) and Min-K%++ (Zhang et al. 2024:
  each token's log-prob standardised by the mean and sd of the model's own next-token log-probs).
- :func:`profile_ci`: mean and 95% CI resampling profiles (the unit: a profile's questions are not
  independent), used by every accuracy here.

Example:
    >>> m, lo, hi = profile_ci([1, 1, 0, 0, 1, 0], [0, 0, 1, 1, 2, 2], n_boot=200)
    >>> round(m, 3), lo <= m <= hi
    (0.5, True)
"""

from __future__ import annotations

import math
import random
from typing import Any, Sequence

import numpy as np
import torch

from .._stats import bootstrap_mean, cluster_bootstrap
from .._stats import p_from_ci as _p_from_ci
from ..errors import InputError
from ..models.adapter import Model
from .finetune import answer_batch

__all__ = ["mc_accuracy", "cloze_accuracy", "mia_scores", "token_scores", "p_from_ci", "boot_ci", "profile_ci"]


def boot_ci(x: Sequence[float], seed: int = 0, n_boot: int = 1000) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap 95% CI (:func:`probekit._stats.bootstrap_mean`)."""
    return bootstrap_mean(x, seed, n_boot)


def profile_ci(values: Sequence[float], units: Sequence[Any], seed: int = 0, n_boot: int = 1000) -> tuple[float, float, float]:
    """Mean of ``values`` and a percentile 95% CI resampling whole ``units`` (profiles) with replacement
    (:func:`probekit._stats.cluster_bootstrap`); one value per unit is the ordinary bootstrap."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    keys = list(dict.fromkeys(units))
    code = np.array([keys.index(u) for u in units])
    sums, sizes = np.bincount(code, v, len(keys))[:, None], np.bincount(code, minlength=len(keys))
    if len(keys) == 1:
        return float(v.mean()), float(v.mean()), float(v.mean())
    lo, hi = cluster_bootstrap(sums, sizes, n_boot, seed)
    return float(v.mean()), float(lo[0]), float(hi[0])


def _ids(model: Model, word: str) -> list[int]:
    tok = getattr(model.processor, "tokenizer", model.processor)
    return tok(" " + word, add_special_tokens=False)["input_ids"]


def _token_id(model: Model, word: str) -> int:
    return _ids(model, word)[0]


@torch.no_grad()
def _candidate_scores(model: Model, samples: Sequence[Any], cands: list[list[str]], normalise: bool,
                      batch_size: int) -> list[list[float]]:
    """Per question, each candidate's summed (or mean) answer-token log-probability after the prompt."""
    ids = [[_ids(model, c) for c in cs] for cs in cands]
    out: list[list[float]] = []
    if all(len(i) == 1 for row in ids for i in row):  # one forward per question: the prompt's next-token distribution
        for b in range(0, len(samples), batch_size):
            batch = samples[b:b + batch_size]
            inputs, positions = answer_batch(model, [s.image for s in batch], [s.question for s in batch],
                                             [cands[b + r][0] for r in range(len(batch))])
            inputs.pop("labels")
            logp = torch.log_softmax(model.hf(**inputs, use_cache=False).logits.float(), -1)
            for r in range(len(batch)):
                row = logp[r, positions[r][0] - 1]
                out.append([float(row[i[0]]) for i in ids[b + r]])
        return out
    flat = [(q, c) for q, cs in enumerate(cands) for c in cs]  # teacher-force every candidate
    scores = []
    for b in range(0, len(flat), batch_size):
        chunk = flat[b:b + batch_size]
        inputs, positions = answer_batch(model, [samples[q].image for q, _ in chunk], [samples[q].question for q, _ in chunk],
                                         [c for _, c in chunk])
        labels = inputs.pop("labels")
        logp = torch.log_softmax(model.hf(**inputs, use_cache=False).logits.float(), -1)
        for r, pos in enumerate(positions):
            tl = logp[r, [p - 1 for p in pos]].gather(-1, labels[r, pos].unsqueeze(-1)).squeeze(-1)
            scores.append(float(tl.mean() if normalise else tl.sum()))
    it = iter(scores)
    return [[next(it) for _ in cs] for cs in cands]


def mc_accuracy(model: Model, samples: Sequence[Any], options: dict[str, Sequence[str]], n_options: int = 4,
                seed: int = 0, batch_size: int = 64, normalise: bool = False, ties: str = "shuffled",
                n_boot: int = 1000) -> dict:
    """Multiple choice by likelihood ranking (see the module docstring); CI resampling profiles (``s.pid``).

    Returns ``accuracy``, ``lo``, ``hi``, ``n``, ``chance`` (``1 / n_options``), ``correct`` and ``units``.
    """
    if ties not in ("shuffled", "against"):
        raise InputError(f"ties={ties!r}", fix="use 'shuffled' (the first in the seeded order) or 'against'")
    rng = random.Random(seed)
    cands, answer_at = [], []
    for s in samples:
        cs = [s.answer] + rng.sample([o for o in options[s.attribute] if o != s.answer], n_options - 1)
        rng.shuffle(cs)
        cands.append(cs)
        answer_at.append(cs.index(s.answer))
    scores = _candidate_scores(model, list(samples), cands, normalise, batch_size)
    correct = []
    for sc, k in zip(scores, answer_at):
        best = max(sc)
        if ties == "against":
            correct.append(sc[k] == best and sum(v == best for v in sc) == 1)
        else:
            correct.append(sc.index(best) == k)
    units = [getattr(s, "pid", i) for i, s in enumerate(samples)]
    m, lo, hi = profile_ci(correct, units, seed, n_boot)
    return {"accuracy": m, "lo": lo, "hi": hi, "n": len(correct), "chance": 1 / n_options, "correct": correct,
            "units": units, "protocol": "likelihood ranking" + (" (length-normalised)" if normalise else "")}


@torch.no_grad()
def cloze_accuracy(model: Model, bios: Sequence[Any], fact_words: Sequence[Sequence[str]], batch_size: int = 64,
                   seed: int = 0, n_boot: int = 1000) -> dict:
    """Fraction of fact words in the biography answers that the model predicts given the words before them
    (teacher forced; CI resampling profiles)."""
    correct, units = [], []
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
                    units.append(getattr(batch[r], "pid", b + r))
    m, lo, hi = profile_ci(correct, units, seed, n_boot)
    return {"accuracy": m, "lo": lo, "hi": hi, "n": len(correct), "protocol": "teacher-forced argmax (probekit)"}


def token_scores(logp: torch.Tensor, target: torch.Tensor, k: float = 0.2) -> tuple[float, float, float]:
    """Loss, Min-K% and Min-K%++ of one answer from its next-token log-probabilities ``logp`` [t, V]
    and the answer tokens ``target`` [t]; higher = member.

    Min-K% and Min-K%++ average the lowest ``ceil(k * t)`` token scores, at least one (the Min-K%++
    reference ``run.py`` takes ``floor(k * t)``: the same for ``k * t`` whole, an empty mean, NaN, for
    ``t < 1 / k``). Min-K%++ standardises each token's log-prob by the mean and sd of ``logp`` (Zhang et al.).
    """
    tgt = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    probs = logp.exp()
    mu = (probs * logp).sum(-1)
    sd = ((probs * logp.pow(2)).sum(-1) - mu.pow(2)).clamp_min(1e-12).sqrt()
    m = max(1, int(math.ceil(k * len(tgt))))
    return float(tgt.mean()), float(tgt.sort().values[:m].mean()), float(((tgt - mu) / sd).sort().values[:m].mean())


@torch.no_grad()
def mia_scores(model: Model, samples: Sequence[Any], k: float = 0.2, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Per sample: ``loss`` (mean answer-token log-prob), ``min_k`` and ``min_k_pp`` (:func:`token_scores`)."""
    out: dict[str, list[float]] = {"loss": [], "min_k": [], "min_k_pp": []}
    for b in range(0, len(samples), batch_size):
        batch = samples[b:b + batch_size]
        inputs, positions = answer_batch(model, [s.image for s in batch], [s.question for s in batch],
                                         [s.answer for s in batch])
        labels = inputs.pop("labels")
        logp = torch.log_softmax(model.hf(**inputs, use_cache=False).logits.double(), -1)
        for r, pos in enumerate(positions):
            loss, mk, mkpp = token_scores(logp[r, [p - 1 for p in pos]], labels[r, pos], k)
            out["loss"].append(loss)
            out["min_k"].append(mk)
            out["min_k_pp"].append(mkpp)
    return {key: np.array(v) for key, v in out.items()}


def p_from_ci(value: float, lo: float, hi: float, chance: float) -> float:
    """One-sided p-value of ``value > chance`` from a 95% CI (normal approximation, se = width / 3.92)."""
    return _p_from_ci(value, lo, hi, chance, min_se=1e-12)
