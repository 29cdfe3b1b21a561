"""Output-only baselines for "was this seen in training?": membership inference and asking directly.

- Loss attack: score = mean answer-token log-probability (teacher forced); higher -> "member".
- Min-K% Prob (Shi et al. 2023): score = mean of the lowest k% answer-token log-probs
  (at least one token; with one-token answers it equals the loss attack).
- :func:`mia_metrics`: ROC AUC and TPR at 1% FPR (sklearn ``roc_auc_score`` / ``roc_curve``)
  with percentile-bootstrap 95% CIs (resampling members and non-members separately).
- :func:`direct_prompt`: ask "What is the username?", decode greedily and call an image "seen"
  when the answer contains its username or its first token is the username's first token.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from .._stats import percentile_interval, unit_resample
from ..errors import InputError
from ..models.adapter import Model
from .._stats import wilson
from .finetune import answer_batch

__all__ = ["answer_logprobs", "loss_score", "min_k_score", "tpr_at_fpr", "mia_metrics", "direct_prompt"]


@torch.no_grad()
def answer_logprobs(model: Model, samples: Sequence[Any], batch_size: int = 16) -> list[np.ndarray]:
    """Per sample, the log-probability of each answer token given everything before it."""
    out = []
    for b in range(0, len(samples), batch_size):
        batch = samples[b:b + batch_size]
        inputs, positions = answer_batch(model, [s.image for s in batch], [s.question for s in batch], [s.answer for s in batch])
        labels = inputs.pop("labels")
        logp = torch.log_softmax(model.hf(**inputs, use_cache=False).logits.double(), -1)
        for r, pos in enumerate(positions):
            prev = [p - 1 for p in pos]
            out.append(logp[r, prev].gather(-1, labels[r, pos].unsqueeze(-1)).squeeze(-1).cpu().numpy())
    return out


def loss_score(token_logprobs: Sequence[np.ndarray]) -> np.ndarray:
    """Mean token log-prob per sample (= minus the loss); higher means 'member'."""
    return np.array([float(np.mean(t)) for t in token_logprobs])


def min_k_score(token_logprobs: Sequence[np.ndarray], k: float = 0.2) -> np.ndarray:
    """Min-K% Prob: mean of the lowest ``ceil(k * len)`` token log-probs (at least one)."""
    out = []
    for t in token_logprobs:
        m = max(1, int(math.ceil(k * len(t))))
        out.append(float(np.sort(np.asarray(t))[:m].mean()))
    return np.array(out)


def tpr_at_fpr(y: np.ndarray, score: np.ndarray, fpr: float = 0.01) -> float:
    """Largest TPR on the ROC curve whose FPR is <= ``fpr``."""
    from sklearn.metrics import roc_curve

    f, t, _ = roc_curve(y, score)
    ok = f <= fpr + 1e-12
    return float(t[ok].max()) if ok.any() else 0.0


def mia_metrics(score: Sequence[float], member: Sequence[bool], n_boot: int = 1000, seed: int = 0,
                fpr: float = 0.01, groups: Sequence[Any] | None = None) -> dict:
    """AUC and TPR@``fpr`` of ``score`` (higher = member) with percentile-bootstrap 95% CIs.

    With ``groups`` (e.g. the username on each image) the bootstrap resamples whole groups within
    members and within non-members: images of one name are not independent, and resampling them
    one by one gives intervals too narrow for a dozen names per pool.

    Example:
        >>> m = mia_metrics([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], n_boot=50)
        >>> m["auc"], m["tpr_at_1fpr"]
        (1.0, 1.0)
    """
    from sklearn.metrics import roc_auc_score

    s = np.asarray(score, dtype=np.float64)
    y = np.asarray(member).astype(int)
    auc, tpr = float(roc_auc_score(y, s)), tpr_at_fpr(y, s, fpr)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if groups is None:
        units = [[np.array([i]) for i in pos], [np.array([i]) for i in neg]]
    else:
        g = np.asarray(groups)
        if len(g) != len(y):
            raise InputError(f"{len(g)} groups for {len(y)} scores", fix="pass one group per score")
        units = [[idx[g[idx] == k] for k in dict.fromkeys(g[idx].tolist())] for idx in (pos, neg)]
    aucs, tprs = [], []
    for _ in range(n_boot):
        idx = unit_resample(units, rng)
        aucs.append(roc_auc_score(y[idx], s[idx]))
        tprs.append(tpr_at_fpr(y[idx], s[idx], fpr))
    (auc_lo, auc_hi), (tpr_lo, tpr_hi) = percentile_interval(aucs), percentile_interval(tprs)
    return {"auc": auc, "auc_lo": auc_lo, "auc_hi": auc_hi, "tpr_at_1fpr": tpr, "tpr_lo": tpr_lo, "tpr_hi": tpr_hi,
            "n_members": int(len(pos)), "n_nonmembers": int(len(neg))}


@torch.no_grad()
def direct_prompt(model: Model, images: Sequence[Any], usernames: Sequence[str], seen: Sequence[bool],
                  prompt: str = "What is the username?", max_new_tokens: int = 6, batch_size: int = 16) -> dict:
    """Ask the model directly; "seen" when the greedy answer names the image's username.

    Returns accuracy of that rule for seen vs unseen (Wilson CI), the rates at which the answer
    contains the username / starts with its first token per class, and a few example answers.
    """
    from ..steering.evaluation import _grouped_inputs

    tok = getattr(model.processor, "tokenizer", model.processor)
    answers: list[str] = [""] * len(images)
    first_hit = [False] * len(images)
    for idx, inputs in _grouped_inputs(model, list(images), [prompt] * len(images), batch_size):
        gen = model.hf.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tok.pad_token_id or tok.eos_token_id)
        new = gen[:, inputs["input_ids"].shape[1]:]
        for r, i in enumerate(idx):
            answers[i] = tok.decode(new[r], skip_special_tokens=True)
            want = tok(" " + usernames[i], add_special_tokens=False)["input_ids"]
            first_hit[i] = bool(len(new[r]) and int(new[r, 0]) == want[0])
    contains = [u.lower() in a.lower() for u, a in zip(usernames, answers)]
    pred = [c or f for c, f in zip(contains, first_hit)]
    seen = [bool(s) for s in seen]
    correct = sum(p == s for p, s in zip(pred, seen))
    n = len(seen)
    lo, hi = wilson(correct, n)
    res = {"accuracy": correct / n, "accuracy_lo": lo, "accuracy_hi": hi, "chance": max(sum(seen), n - sum(seen)) / n, "n": n,
           "examples": answers[:4]}
    for name, cls in (("seen", True), ("unseen", False)):
        rows = [i for i in range(n) if seen[i] == cls]
        k = sum(contains[i] for i in rows)
        kf = sum(first_hit[i] for i in rows)
        res[f"contains_{name}"] = k / max(1, len(rows))
        res[f"contains_{name}_lo"], res[f"contains_{name}_hi"] = wilson(k, len(rows))
        res[f"first_token_{name}"] = kf / max(1, len(rows))
        res[f"first_token_{name}_lo"], res[f"first_token_{name}_hi"] = wilson(kf, len(rows))
    return res
