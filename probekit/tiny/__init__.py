"""Tiny, offline Hugging Face vision-language models for tests, docs and benchmarks.

:func:`build` writes a real checkpoint directory (``config.json``, ``model.safetensors``,
tokenizer files, processor and image-processor configs, a chat template where the family's
real checkpoints have one) for one of :data:`FAMILIES`. Nothing is downloaded: the tokenizer
is a byte-level BPE trained in memory on a fixed synthetic corpus, and the weights are random
(seeded). The directory loads through the ordinary hub path::

    processor = transformers.AutoProcessor.from_pretrained(path)
    model = transformers.AutoModelForImageTextToText.from_pretrained(path)

so code under test sees exactly the classes, module trees, processor behaviour and image-token
expansion it would see with e.g. ``llava-hf/llava-1.5-7b-hf``, at a few hundred thousand
parameters instead of billions.

One exception, shared with real checkpoints: in transformers 5.23 ``Qwen2VLProcessor`` needs
torchvision (for its video processor), so ``AutoProcessor`` cannot load any Qwen2-VL
checkpoint without it. :func:`load_processor` (and :func:`load`) then fall back to an
image-only subclass of ``Qwen2VLProcessor`` that reads the same files.

This package is every tiny builder probekit has, in one place:

- this module: the public API (sizes, :func:`build`, :func:`load`, :func:`prompt`,
  :func:`fixture_images`);
- :mod:`probekit.tiny.builders` (and :mod:`~probekit.tiny.builders_xattn`): one builder per
  checkpoint family, and ``_FAMILIES``, the one registry of those families (name, builder,
  ``config.model_type``, prompt, default sizes) that :data:`FAMILIES`, :func:`prompt` and
  the zoo all read;
- :mod:`probekit.tiny.zoo` (and :mod:`~probekit.tiny.zoo_variants`): an in-memory
  ``(model, processor)`` of every architecture of the coverage matrix, the checkpoint
  families included (``zoo.build("gemma3")``);
- :mod:`probekit.tiny.text` (tokenizer, chat templates) and :mod:`probekit.tiny.parts`
  (config pieces both kinds of build share).

Example (runnable, takes well under a second per family)::

    >>> import tempfile, transformers, torch
    >>> from probekit import tiny
    >>> path = tiny.build("llava", tempfile.mkdtemp() + "/llava")
    >>> processor = transformers.AutoProcessor.from_pretrained(path)
    >>> model = transformers.AutoModelForImageTextToText.from_pretrained(path)
    >>> inputs = processor(images=tiny.fixture_images(2, 32), text=["USER: <image>\\nWhat? ASSISTANT:",
    ...                    "USER: <image>\\nWhat colour is the big square? ASSISTANT:"],
    ...                    return_tensors="pt", padding=True)
    >>> with torch.no_grad():
    ...     logits = model(**inputs).logits
    >>> logits.shape[0], logits.shape[-1] == model.config.text_config.vocab_size
    (2, True)
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from collections.abc import Iterator
from typing import Any

from probekit.errors import InputError, check_int
from probekit.models.processors import load_processor

from .builders import _FAMILIES

__all__ = [
    "FAMILIES",
    "LLAVA_22M",
    "SIZE_KEYS",
    "build",
    "default_sizes",
    "fixture_images",
    "load",
    "load_processor",
    "prompt",
]

FAMILIES: tuple[str, ...] = tuple(_FAMILIES)
"""The families :func:`build` writes checkpoints of (``builders._FAMILIES``; each is also in ``zoo.ARCHITECTURES``)."""

# Sizes every family understands. None = derived from the others (see _derive).
_COMMON_DEFAULTS: dict[str, int | None] = {
    "hidden_size": 64,  # language model width
    "num_layers": 2,  # language model layers
    "intermediate_size": None,  # 2 * hidden_size
    "num_heads": 4,
    "num_kv_heads": None,  # num_heads; 1 for PaliGemma (multi-query, like Gemma-2B)
    "vision_hidden_size": 32,
    "vision_layers": 2,
    "vision_intermediate_size": None,  # 4 * vision_hidden_size
    "vision_heads": 4,
    "image_size": 32,
    "patch_size": 8,
    "vocab_size": 2048,  # BPE target (task words, chat words stay whole); special tokens come on top
}
_FAMILY_DEFAULTS: dict[str, dict[str, int | None]] = {name: dict(f.sizes) for name, f in _FAMILIES.items()}
SIZE_KEYS: frozenset[str] = frozenset(_COMMON_DEFAULTS)
"""Size keywords :func:`build` accepts for every family. Family extras: ``max_num_tiles``
(mllama), ``num_query_tokens`` and ``qformer_layers`` (blip2)."""

LLAVA_22M: dict[str, int] = {
    "hidden_size": 256,
    "num_layers": 4,
    "intermediate_size": 1024,
    "num_heads": 4,
    "image_size": 64,
    "patch_size": 8,
    "vision_hidden_size": 512,
    "vision_heads": 8,
    "vision_layers": 6,
    "vision_intermediate_size": 1792,
}
"""Sizes of the ~22M-parameter LLaVA used for benchmarks: ``build("llava", p, **LLAVA_22M)``
(hidden 256, 4 LM layers, 64x64 images of 64 patches)."""


def default_sizes(family: str) -> dict[str, int]:
    """Return the default ``**sizes`` of ``family``, derived values filled in (a fresh dict).

    >>> default_sizes("blip2")["num_query_tokens"]
    4
    """
    _check_family(family)
    return _derive(family, {**_COMMON_DEFAULTS, **_FAMILY_DEFAULTS[family]})


def _derive(family: str, s: dict[str, Any]) -> dict[str, int]:
    s = dict(s)
    if s["intermediate_size"] is None:
        s["intermediate_size"] = 2 * s["hidden_size"]
    if s["vision_intermediate_size"] is None:
        s["vision_intermediate_size"] = 4 * s["vision_hidden_size"]
    if s["num_kv_heads"] is None:
        s["num_kv_heads"] = 1 if family == "paligemma" else s["num_heads"]
    return s


def prompt(family: str, question: str) -> str:
    """A raw one-image prompt for ``family``, in the format its processor expects.

    >>> prompt("llava", "What is this?")
    'USER: <image>\\nWhat is this? ASSISTANT:'
    """
    _check_family(family)
    return _FAMILIES[family].prompt.format(question=question)


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def _check_family(family: object) -> None:
    if family not in FAMILIES:
        raise InputError(
            f"unknown tiny model family {family!r}",
            fix=f"use one of {', '.join(FAMILIES)}",
        )


def _resolve_sizes(family: str, sizes: dict[str, Any]) -> dict[str, int]:
    allowed = {**_COMMON_DEFAULTS, **_FAMILY_DEFAULTS[family]}
    unknown = sorted(set(sizes) - set(allowed))
    if unknown:
        others = [f for f in FAMILIES if set(unknown) <= ({*_COMMON_DEFAULTS, *_FAMILY_DEFAULTS[f]})]
        hint = f" ({', '.join(unknown)} only applies to {', '.join(others)})" if others else ""
        raise InputError(
            f"unknown size keyword(s) for {family!r}: {', '.join(unknown)}{hint}",
            fix=f"use only {', '.join(sorted(allowed))}",
        )
    for key, value in sizes.items():
        if value is None and allowed[key] is None:
            continue  # explicitly asking for the derived default
        sizes[key] = check_int(value, key, low=1, fix=f"pass e.g. {key}={default_sizes(family)[key]}")
    s = _derive(family, {**allowed, **sizes})

    def need(ok: bool, what: str, fix: str) -> None:
        if not ok:
            raise InputError(f"invalid sizes for {family!r}: {what}", fix=fix)

    need(
        s["hidden_size"] % s["num_heads"] == 0 and (s["hidden_size"] // s["num_heads"]) % 2 == 0,
        f"hidden_size={s['hidden_size']} must split into num_heads={s['num_heads']} heads of even size",
        "make hidden_size a multiple of 2 * num_heads",
    )
    need(
        s["num_heads"] % s["num_kv_heads"] == 0,
        f"num_heads={s['num_heads']} is not a multiple of num_kv_heads={s['num_kv_heads']}",
        "pick num_kv_heads dividing num_heads",
    )
    need(
        s["vision_hidden_size"] % s["vision_heads"] == 0,
        f"vision_hidden_size={s['vision_hidden_size']} is not a multiple of vision_heads={s['vision_heads']}",
        "make vision_hidden_size a multiple of vision_heads",
    )
    need(
        s["image_size"] % s["patch_size"] == 0,
        f"image_size={s['image_size']} is not a multiple of patch_size={s['patch_size']}",
        "make image_size a multiple of patch_size",
    )
    need(s["vocab_size"] >= 260, f"vocab_size={s['vocab_size']} is too small", "use vocab_size >= 260 (256 bytes + merges)")
    grid = s["image_size"] // s["patch_size"]
    if family in ("qwen2_vl", "idefics3"):
        need(
            grid % 2 == 0,
            f"image_size/patch_size={grid} must be even (2x2 patches are merged into one token)",
            "make image_size a multiple of 2 * patch_size",
        )
    if family == "qwen2_vl":
        head_dim = s["hidden_size"] // s["num_heads"]
        vis_head = s["vision_hidden_size"] // s["vision_heads"]
        need(head_dim >= 8, f"LM head dim {head_dim} is too small for 3-axis M-RoPE", "use hidden_size >= 8 * num_heads")
        need(vis_head % 4 == 0, f"vision head dim {vis_head} must be a multiple of 4 (2-D rotary)", "adjust vision_heads")
        need(
            s["vision_intermediate_size"] % s["vision_hidden_size"] == 0,
            "vision_intermediate_size must be a multiple of vision_hidden_size (Qwen2-VL has an mlp_ratio)",
            "leave vision_intermediate_size out or use k * vision_hidden_size",
        )
    if family == "mllama":
        need(s["num_layers"] >= 2, "mllama needs num_layers >= 2 (one is cross-attention)", "use num_layers >= 2")
        need(s["max_num_tiles"] <= 4, "max_num_tiles must be <= 4", "use max_num_tiles in 1..4")
    return s


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def build(
    family: str,
    path: str | os.PathLike[str],
    seed: int = 0,
    *,
    padding_side: str = "right",
    overwrite: bool = False,
    manifest: bool = False,
    **sizes: int,
) -> pathlib.Path:
    """Write a tiny random-weight checkpoint of ``family`` to the directory ``path``.

    Args:
        family: one of :data:`FAMILIES`.
        path: target directory. It must not exist, or be empty, unless ``overwrite=True``.
        seed: weights come from ``torch.manual_seed(seed)`` (the caller's RNG state is
            restored afterwards); the same seed and sizes give bit-identical files.
        padding_side: the tokenizer's padding side, ``"right"`` or ``"left"``.
        overwrite: replace an existing non-empty ``path``.
        manifest: also write :data:`probekit.files.MANIFEST` (every file's size and hash), so that
            :func:`probekit.load` refuses the checkpoint if a file changes later (study caches).
        **sizes: override :func:`default_sizes` (``hidden_size``, ``num_layers``,
            ``intermediate_size``, ``num_heads``, ``num_kv_heads``, ``vision_hidden_size``,
            ``vision_layers``, ``vision_intermediate_size``, ``vision_heads``,
            ``image_size``, ``patch_size``, ``vocab_size``; mllama: ``max_num_tiles``;
            blip2: ``num_query_tokens``, ``qformer_layers``).

    Returns:
        The checkpoint directory as a :class:`pathlib.Path`.

    Raises:
        probekit.errors.InputError: unknown family or size keyword, inconsistent sizes,
            or ``path`` already holds files.

    The checkpoint is written to a temporary directory beside ``path`` and renamed into
    place at the end, so a failure never leaves a half-written checkpoint behind.

    Example::

        >>> import tempfile
        >>> p = build("qwen2_vl", tempfile.mkdtemp() + "/q", seed=1, hidden_size=32, num_layers=1)
        >>> sorted(f.name for f in p.iterdir())[:3]
        ['chat_template.jinja', 'config.json', 'generation_config.json']
    """
    _check_family(family)
    s = _resolve_sizes(family, sizes)
    if padding_side not in ("left", "right"):
        raise InputError(f"padding_side must be 'left' or 'right', got {padding_side!r}", fix="pass 'left' or 'right'")
    seed = check_int(seed, "seed", fix="pass e.g. seed=0")
    target = pathlib.Path(path)
    if target.exists():
        if not target.is_dir():
            raise InputError(f"{target} exists and is not a directory", fix="pass a directory path")
        if any(target.iterdir()) and not overwrite:
            raise InputError(
                f"{target} already exists and is not empty",
                fix="pass a new or empty directory, or overwrite=True to replace it",
            )
    target.parent.mkdir(parents=True, exist_ok=True)

    import torch

    from ..files import atomic_dir, write_manifest

    # written to a temporary directory beside target (os.mkdir: umask permissions), fsynced and renamed
    with atomic_dir(target, "tiny checkpoint") as tmp:
        # fork_rng: seeding must not disturb the caller's global RNG stream.
        with torch.random.fork_rng(devices=[]), _no_progress_bars():
            torch.manual_seed(seed)
            built = _FAMILIES[family].build(s, padding_side)
            built.model.eval()
            built.model.save_pretrained(tmp)
            built.processor.save_pretrained(tmp)
        if built.post_save is not None:
            built.post_save(tmp)
        _record_provenance(tmp, family, seed, s)
        if manifest:
            write_manifest(tmp, {"generator": "probekit.tiny"})
    return target


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    # A "Writing model shards" bar per tiny build only clutters test output.
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load(path: str | os.PathLike[str]) -> tuple[Any, Any]:
    """Load ``(model, processor)`` from a checkpoint directory the hub way (model in eval mode).

    The model comes from ``AutoModelForImageTextToText.from_pretrained``; the processor from
    :func:`load_processor`.
    """
    from transformers import AutoModelForImageTextToText

    with _no_progress_bars():
        model = AutoModelForImageTextToText.from_pretrained(path)
    return model.eval(), load_processor(path)


def _record_provenance(directory: pathlib.Path, family: str, seed: int, sizes: dict[str, int]) -> None:
    # A small side file, not a config key: from_pretrained must see a stock config.json.
    info = {"generator": "probekit.tiny", "family": family, "seed": seed, "sizes": sizes}
    (directory / "probekit_tiny.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def fixture_images(n: int, size: int | tuple[int, int] = 32, seed: int = 0) -> list[Any]:
    """Return ``n`` deterministic random RGB ``PIL.Image.Image`` of ``size`` (int or (w, h)).

    >>> [im.size for im in fixture_images(2, 16)]
    [(16, 16), (16, 16)]
    """
    import numpy as np
    from PIL import Image

    n = check_int(n, "n", low=0, fix="pass e.g. n=2")
    w, h = (size, size) if isinstance(size, int) else tuple(size)
    if w < 1 or h < 1:
        raise InputError(f"image size must be positive, got {size!r}", fix="pass e.g. size=32")
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)) for _ in range(n)]

