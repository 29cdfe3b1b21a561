"""The model's context length, and the check that no input is longer (before any forward pass).

transformers only warns ("Token indices sequence length is longer than the specified maximum
sequence length (12460 > 4096)") and runs on, reading position embeddings it was never trained
on. probekit refuses instead: :func:`check_prompt_lengths` tokenises each distinct prompt (and
answer) up front, :func:`check_context` every prepared batch (chat template and image tokens
included).
"""

from __future__ import annotations

from typing import Any, Sequence

from ..errors import InputError

__all__ = ["context_length", "check_prompt_lengths", "check_context"]

_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def context_length(model: Any) -> int | None:
    """The longest token sequence the language model takes (its position table), None when unknown."""
    config = getattr(model.hf, "config", None)
    for cfg in (getattr(config, "text_config", None), config):
        for key in _KEYS:
            value = getattr(cfg, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def _refuse(what: str, n: int, limit: int) -> InputError:
    return InputError(f"{what} is {n} tokens long, more than the model's context of {limit} tokens",
                      fix=f"shorten it to well under {limit} tokens (the image and chat template take some too)")


def check_prompt_lengths(model: Any, prompts: Sequence[str], answers: Sequence[str] | None = None) -> None:
    """Refuse a prompt (plus its answer) whose text alone is longer than the context."""
    limit = context_length(model)
    tok = getattr(model.processor, "tokenizer", None)
    if limit is None or tok is None or not callable(tok):
        return
    pairs = dict.fromkeys(zip(prompts, answers if answers is not None else [""] * len(prompts)))
    texts = [p + (" " + a if a else "") for p, a in pairs]
    if sum(map(len, texts)) <= limit:  # a token is at least one character: nothing can be too long
        return
    lengths = [len(ids) for ids in tok(texts, add_special_tokens=False, verbose=False)["input_ids"]]
    for (p, _), n in zip(pairs, lengths):
        if n > limit:
            i = list(prompts).index(p)
            raise _refuse(f"prompt {i} ({p[:40]!r}...)", n, limit)


def check_context(model: Any, input_ids: Any) -> None:
    """Refuse a prepared batch longer than the context (raised before its forward pass)."""
    limit = context_length(model)
    if limit is not None and getattr(input_ids, "ndim", 0) == 2 and input_ids.shape[1] > limit:
        raise _refuse("the prepared input (prompt, chat template and image tokens)", int(input_ids.shape[1]), limit)
