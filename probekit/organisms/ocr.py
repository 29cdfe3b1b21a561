"""Reading with the reader organism: greedy answers, held-out strings and OCR accuracy with a CI.

Example:
    >>> from probekit.organisms.ocr import held_out_strings
    >>> len(held_out_strings(3))
    3
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._stats import bootstrap_indices, percentile_interval
from ..errors import check_int
from .text import random_string, text_image

__all__ = ["READ", "read", "held_out_strings", "is_held_out", "layout", "ocr_accuracy"]

READ = "Read the text."


def is_held_out(text: str) -> bool:
    """One string in ten (by a hash) is never used in pretraining: OCR is scored on those."""
    return hashlib.sha256(text.encode()).digest()[0] % 10 == 0


@torch.no_grad()
def read(model: Any, images: Sequence[Any], question: str = READ, max_new_tokens: int = 10,
         batch_size: int = 64) -> list[str]:
    """Greedy answers of ``model`` to ``question`` about each image, cut at the first ``"."``."""
    tok = getattr(model.processor, "tokenizer", model.processor)
    out: list[str] = []
    for b in range(0, len(images), batch_size):
        ims = list(images[b:b + batch_size])
        inputs = model._impl.build_inputs(model, ims, [question] * len(ims), None)
        n = inputs["input_ids"].shape[1]
        gen = model.hf.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tok.pad_token_id, eos_token_id=None)
        for row in gen[:, n:]:
            text = tok.decode(row, skip_special_tokens=True)
            out.append(text.split(".")[0].strip())
    return out


def _edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def held_out_strings(n: int, seed: int = 12345) -> list[str]:
    """``n`` random 4-8 character strings that pretraining never used (:func:`is_held_out`)."""
    rng = random.Random(f"heldout:{seed}")
    out: list[str] = []
    while len(out) < n:
        s = random_string(rng)
        if is_held_out(s):
            out.append(s)
    return out


def layout(model_or_path: Any) -> tuple[int, int, str | None]:
    """``(image_size, grid, place)`` the reader was trained with (its ``probekit_organism.json``)."""
    path = Path(model_or_path) if isinstance(model_or_path, (str, os.PathLike)) else \
        Path(getattr(model_or_path.hf.config, "_name_or_path", "") or ".")
    info = path / "probekit_organism.json"
    if info.exists():
        cfg = json.loads(info.read_text())["config"]
        return int(cfg.get("image_size", 64)), int(cfg.get("grid", 0)), cfg.get("place") or None
    if isinstance(model_or_path, (str, os.PathLike)):
        from transformers import AutoConfig

        return int(AutoConfig.from_pretrained(path).vision_config.image_size), 0, None
    return int(model_or_path.hf.config.vision_config.image_size), 0, None


def ocr_accuracy(model: Any, n: int = 200, seed: int = 12345, opacity: float = 1.0, n_boot: int = 1000,
                 grid: int | None = None, place: str | None = None) -> dict:
    """Character accuracy (1 - edit distance / length, summed over strings) on held-out strings.

    Images are :func:`.text.text_image` of :func:`held_out_strings`; the CI is a percentile
    bootstrap over strings (characters of one string are not independent).
    """
    n = check_int(n, "n", low=1, fix="pass e.g. n=200")
    size, auto_grid, auto_place = layout(model)
    grid = auto_grid if grid is None else grid
    place = auto_place if place is None else (place or None)
    rng = random.Random(f"ocr-images:{seed}")
    truth = held_out_strings(n, seed)
    images = [text_image(t, rng, size, opacity=opacity, grid=grid or None, place=place) for t in truth]
    pred = read(model, images)
    errs = np.array([min(_edit_distance(p, t), len(t)) for p, t in zip(pred, truth)], dtype=float)
    lens = np.array([len(t) for t in truth], dtype=float)
    acc = 1 - errs.sum() / lens.sum()
    idx = bootstrap_indices(n, n_boot, np.random.default_rng(seed))  # whole strings resampled
    boots = 1 - errs[idx].sum(1) / lens[idx].sum(1)
    lo, hi = percentile_interval(boots)
    exact = float(np.mean([p == t for p, t in zip(pred, truth)]))
    return {"char_accuracy": float(acc), "char_accuracy_lo": lo,
            "char_accuracy_hi": hi, "exact_match": exact, "n": n,
            "examples": list(zip(truth[:5], pred[:5]))}


