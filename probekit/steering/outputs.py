"""What the model answers, for the cost side of an evaluation: next-token log-probabilities on clean
inputs (for the KL) and teacher-forced answer scores (task accuracy, answer loss)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..data.images import check_images, to_pil
from ..errors import InputError
from ..hooks.collect import check_prompts
from ..models.adapter import Model
from ..models.compat import cache_kwarg, output_cache

__all__ = ["next_token_logprobs", "next_token_kl", "answer_scores"]


def _grouped_inputs(model: Model, images: list, prompts: list[str], batch_size: int):
    """Yield (indices, inputs) with every batch made of prompts of one token length.

    Equal lengths need no padding, so the last column is every row's last prompt token and
    a continuation with the KV cache gets the positions an unbatched run would.
    """
    per = [model.prepare([to_pil(im)], [p]) for im, p in zip(images, prompts)]
    by_len: dict[int, list[int]] = {}
    for i, inp in enumerate(per):
        by_len.setdefault(int(inp["input_ids"].shape[1]), []).append(i)
    for idx in by_len.values():
        for b in range(0, len(idx), batch_size):
            chunk = idx[b:b + batch_size]
            keys = per[chunk[0]].keys()
            yield chunk, {k: torch.cat([per[i][k] for i in chunk]) if isinstance(per[chunk[0]][k], torch.Tensor)
                          else per[chunk[0]][k] for k in keys}


@torch.no_grad()
def next_token_logprobs(model: Model, images: Sequence[Any], prompts: str | Sequence[str] | None = None,
                        batch_size: int = 16) -> torch.Tensor:
    """Log-probabilities ``[n, vocab]`` (float64) of the token after each prompt.

    Example:
        >>> import probekit, tempfile
        >>> m = probekit.load(probekit.tiny.build("llava", tempfile.mkdtemp() + "/m"))
        >>> next_token_logprobs(m, probekit.tiny.fixture_images(2, 32), "What colour?").shape[0]
        2
    """
    items = check_images(images)
    prompt_list = check_prompts(prompts, len(items))
    out: list[torch.Tensor | None] = [None] * len(items)
    for idx, inputs in _grouped_inputs(model, items, prompt_list, batch_size):
        logits = model.hf(**inputs, use_cache=False).logits[:, -1]
        lp = torch.log_softmax(logits.double(), -1).cpu()
        for r, i in enumerate(idx):
            out[i] = lp[r]
    return torch.stack(out)


def next_token_kl(before: torch.Tensor, after: torch.Tensor) -> np.ndarray:
    """``KL(before || after)`` in nats per input, from two ``[n, vocab]`` log-probability tables
    (:func:`next_token_logprobs` of one model and of the model changed); rounding below 0 is clipped.

    Example:
        >>> lp = torch.log_softmax(torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64), -1)
        >>> float(next_token_kl(lp, lp)[0])
        0.0
    """
    return (before.exp() * (before - after)).sum(-1).clamp_min(0).numpy()


@torch.no_grad()
def answer_scores(model: Model, samples: Sequence[Any], batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: whether every answer token is the argmax (teacher forced) and the mean
    answer-token NLL in nats.

    The prompt runs first and the answer tokens continue its KV cache, so interventions that
    choose positions see them on the prompt (as during ``generate``), not on prompt + answer.
    """
    tok = getattr(model.processor, "tokenizer", model.processor)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    images = [s.image for s in samples]
    questions = [s.question for s in samples]
    correct = np.zeros(len(samples), dtype=bool)
    nll = np.zeros(len(samples))
    for idx, inputs in _grouped_inputs(model, images, questions, batch_size):
        answers = [tok(" " + samples[i].answer, add_special_tokens=False)["input_ids"] for i in idx]
        if any(len(a) == 0 for a in answers):
            raise InputError("an answer tokenizes to nothing", fix="use non-empty answers")
        m = max(len(a) for a in answers)
        ans = torch.full((len(idx), m), pad, dtype=torch.long)
        for r, a in enumerate(answers):
            ans[r, :len(a)] = torch.tensor(a)
        ans = ans.to(model.device)
        out = model.hf(**inputs, use_cache=True)
        logits = [out.logits[:, -1:]]
        if m > 1:
            am = inputs.get("attention_mask")
            kw = {"attention_mask": torch.cat([am, torch.ones_like(ans[:, :-1])], 1)} if am is not None else {}
            kw[cache_kwarg(model.hf)] = output_cache(out)
            more = model.hf(input_ids=ans[:, :-1], use_cache=True, **kw)
            logits.append(more.logits)
        lp = torch.log_softmax(torch.cat(logits, 1).double(), -1)
        tok_lp = lp.gather(-1, ans[..., None]).squeeze(-1).cpu()
        pred = lp.argmax(-1).cpu()
        for r, i in enumerate(idx):
            k = len(answers[r])
            correct[i] = bool(torch.equal(pred[r, :k], ans[r, :k].cpu()))
            nll[i] = float(-tok_lp[r, :k].mean())
    return correct, nll
