"""Checks of collect's text inputs (prompts, answers, flags), all run before any forward pass."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Sequence

from ..errors import InputError, PositionError
from ..models.adapter import Model
from .positions import Position

__all__ = ["check_prompts", "check_answers", "DEFAULT_PROMPT"]

DEFAULT_PROMPT = "Describe the image."


def check_prompts(prompts: str | Sequence[str] | None, n: int, image_token: str | None = None) -> list[str]:
    """One prompt per image; a prompt must not hold the image token (probekit inserts it, once per image)."""
    if prompts is None:
        return [DEFAULT_PROMPT] * n
    if isinstance(prompts, str):
        prompts = [prompts]
        _no_image_token(prompts, image_token)
        return prompts * n
    if isinstance(prompts, Mapping) or not isinstance(prompts, Iterable):
        raise InputError(f"prompts must be a string or a list of strings, got {type(prompts).__name__}",
                         fix="pass one prompt per image, or a single string used for all")
    prompts = list(prompts)
    if len(prompts) != n:
        raise InputError(f"{n} images but {len(prompts)} prompts",
                         fix="pass one prompt per image, or a single string used for all")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise InputError(f"prompt {i} is a {type(p).__name__}, not a string", fix="pass prompts as strings")
    _no_image_token(prompts, image_token)
    return prompts


def _no_image_token(prompts: list[str], token: str | None) -> None:
    for i, p in enumerate(prompts):
        if token and token in p:
            raise InputError(f"prompt {i} already contains the image token {token!r}: {p[:80]!r}",
                             fix=f"pass the question alone; probekit places {token!r} itself, once per image")


def check_answers(model: Model, answers: Sequence[str] | None, n: int, pos_list: list[Position]) -> list[str] | None:
    """``answers`` as a list (None stays None), checked before any forward pass."""
    if answers is None:
        if "answer_mean" in pos_list:
            raise PositionError('position "answer_mean" needs answers= (the reply to teacher-force after each prompt)',
                                fix='pass answers=[...] with one string per image, or drop "answer_mean"')
        return None
    if isinstance(answers, str):
        answers = [answers] * n
    answers = list(answers)
    if len(answers) != n or not all(isinstance(a, str) and a.strip() for a in answers):
        raise InputError(f"answers must be one non-empty string per image ({n}), got {len(answers)} items",
                         fix="pass answers=[...] of the same length as images")
    model.check_answers()
    return answers
