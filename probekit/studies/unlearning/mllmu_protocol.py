"""MLLMU-Bench's own evaluation protocol (Liu et al., NAACL 2025; ``eval.py`` of franciscoliu/MLLMU-Bench).

Generation-based, where :mod:`.facts_metrics` ranks likelihoods:

- :func:`mc_generation`: multiple choice. The options are lettered A-D in the prompt
  (``"{question}\\nA: ...\\nB: ...\\nJust give ONE letter representing the answer directly."``), the
  model replies greedily and the reply's first character, upper-cased, is its answer when it is
  one of the letters (:func:`first_letter`, eval.py's rule); anything else is wrong.
- :func:`cloze_generation`: the fact blanked in a sentence (``"__"`` -> ``"[Blank]"``) plus
  ``"\\nPlease **ONLY** provide the correct answer that should replace the [Blank]."``, a greedy
  reply of up to 50 new tokens, correct when the answer is a substring of the reply (case-folded).
- :func:`rouge_l`: ROUGE-L F1 of a greedy reply of up to 50 new tokens against the reference, with
  ``rouge_score``'s Porter stemmer (``use_stemmer=True``), as eval.py scores its generation task.

Differences from eval.py, by design: prompts go through the model's own chat template (for
LLaVA-1.5 the same ``USER: <image>\\n... ASSISTANT:`` frame), questions by name carry the
organism's blank image (eval.py sends none), no few-shot examples are prepended, and multiple
choice generates 5 new tokens (eval.py: 5 for text questions, 50 for image ones; only the first
non-space character is read). CIs resample profiles (:func:`.facts_metrics.profile_ci`).

Example:
    >>> mc_prompt("What does Bob Red work with?", ["car", "book"])
    'What does Bob Red work with?\\nA: car\\nB: book\\nJust give ONE letter representing the answer directly.'
    >>> first_letter(" b) book", "AB"), first_letter("The answer", "AB")
    ('B', None)
"""

from __future__ import annotations

import random
from typing import Any, Sequence

import torch

from ...models.adapter import Model
from ...organisms.facts_metrics import profile_ci

__all__ = ["LETTERS", "mc_prompt", "cloze_prompt", "first_letter", "greedy", "mc_generation", "cloze_generation",
           "rouge_l", "rouge_score_l", "shuffled_options"]

LETTERS = "ABCD"
MC_SUFFIX = "Just give ONE letter representing the answer directly."
CLOZE_SUFFIX = "Please **ONLY** provide the correct answer that should replace the [Blank]."


def mc_prompt(question: str, options: Sequence[str]) -> str:
    """eval.py's ``formulate_prompt_with_options`` plus its instruction line."""
    lines = "\n".join(f"{LETTERS[i]}: {o}" for i, o in enumerate(options))
    return f"{question}\n{lines}\n{MC_SUFFIX}"


def cloze_prompt(sentence: str) -> str:
    """eval.py's fill-in-the-blank question: ``"__"`` becomes ``"[Blank]"``, then the instruction."""
    return sentence.replace("__", "[Blank]") + "\n" + CLOZE_SUFFIX


def first_letter(reply: str, letters: str = LETTERS) -> str | None:
    """eval.py: ``reply.strip()[0].upper()`` when it is one of the option letters, else None."""
    r = reply.strip()
    return r[0].upper() if r and r[0].upper() in letters else None


def shuffled_options(answer: str, values: Sequence[str], n_options: int, rng: random.Random) -> tuple[list[str], int]:
    """The answer and ``n_options - 1`` distractors of the same attribute in a seeded random order; the answer's index."""
    cands = [answer] + rng.sample([v for v in values if v != answer], n_options - 1)
    rng.shuffle(cands)
    return cands, cands.index(answer)


@torch.no_grad()
def greedy(model: Model, images: Sequence[Any], prompts: Sequence[str], max_new_tokens: int,
           batch_size: int = 64) -> list[str]:
    """Greedy replies (new tokens only, special tokens dropped); prompts batched by token length (no padding)."""
    tok = getattr(model.processor, "tokenizer", model.processor)
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(tok(p)["input_ids"]), []).append(i)
    out = [""] * len(prompts)
    for idx in by_len.values():
        for b in range(0, len(idx), batch_size):
            chunk = idx[b:b + batch_size]
            inputs = model.prepare([images[i] for i in chunk], [prompts[i] for i in chunk])
            gen = model.hf.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tok.pad_token_id or tok.eos_token_id)
            new = gen[:, inputs["input_ids"].shape[1]:]
            for r, i in enumerate(chunk):
                out[i] = tok.decode(new[r], skip_special_tokens=True)
    return out


def _result(correct: list[bool], units: list, seed: int, n_boot: int, **extra: Any) -> dict:
    m, lo, hi = profile_ci(correct, units, seed, n_boot)
    return {"accuracy": m, "lo": lo, "hi": hi, "n": len(correct), "correct": correct, "units": units, **extra}


def mc_generation(model: Model, samples: Sequence[Any], options: dict[str, Sequence[str]], n_options: int = 4,
                  seed: int = 0, max_new_tokens: int = 5, n_boot: int = 1000) -> dict:
    """MLLMU-Bench's multiple choice: lettered options, greedy reply, its first letter (chance ``1 / n_options``).

    ``samples``: objects with ``image``, ``question``, ``answer``, ``attribute`` (``options[attribute]``
    the candidates) and ``pid`` (the unit of the bootstrap). Also returns ``letter_rate``: the
    fraction of replies that start with an option letter at all.
    """
    rng = random.Random(seed)
    prompts, keys = [], []
    for s in samples:
        cands, k = shuffled_options(s.answer, options[s.attribute], n_options, rng)
        prompts.append(mc_prompt(s.question, cands))
        keys.append(LETTERS[k])
    replies = greedy(model, [s.image for s in samples], prompts, max_new_tokens)
    picks = [first_letter(r, LETTERS[:n_options]) for r in replies]
    correct = [p == k for p, k in zip(picks, keys)]
    return _result(correct, [getattr(s, "pid", i) for i, s in enumerate(samples)], seed, n_boot,
                   chance=1 / n_options, letter_rate=sum(p is not None for p in picks) / max(1, len(picks)),
                   example=replies[0] if replies else "", protocol="MLLMU-Bench generation (letter)")


def cloze_generation(model: Model, samples: Sequence[Any], seed: int = 0, max_new_tokens: int = 50,
                     n_boot: int = 1000) -> dict:
    """MLLMU-Bench's cloze: ``samples`` carry ``question`` = a sentence with ``"__"`` and ``answer`` = the fact."""
    replies = greedy(model, [s.image for s in samples], [cloze_prompt(s.question) for s in samples], max_new_tokens)
    correct = [s.answer.lower() in r.lower() for s, r in zip(samples, replies)]
    return _result(correct, [getattr(s, "pid", i) for i, s in enumerate(samples)], seed, n_boot,
                   example=replies[0] if replies else "", protocol="MLLMU-Bench generation ([Blank], substring)")


def rouge_score_l(reference: str, prediction: str, use_stemmer: bool = True) -> float:
    """ROUGE-L F1 (``rouge_score``; eval.py scores ``score(ground_truth, predicted_answer)`` with the stemmer)."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer).score(reference, prediction)["rougeL"].fmeasure


def rouge_l(model: Model, bios: Sequence[Any], max_new_tokens: int = 50, seed: int = 0, n_boot: int = 1000,
            use_stemmer: bool = True) -> dict:
    """Greedy biography (up to ``max_new_tokens``) vs the reference, ROUGE-L F1 with the stemmer; CI by profile."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
    texts = [t.strip() for t in greedy(model, [s.image for s in bios], [s.question for s in bios], max_new_tokens)]
    scores = [scorer.score(s.answer, t)["rougeL"].fmeasure for s, t in zip(bios, texts)]
    m, lo, hi = profile_ci(scores, [getattr(s, "pid", i) for i, s in enumerate(bios)], seed, n_boot)
    return {"rouge_l": m, "lo": lo, "hi": hi, "n": len(bios), "example": texts[0] if texts else "",
            "max_new_tokens": max_new_tokens, "stemmer": use_stemmer}
