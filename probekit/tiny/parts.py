"""Pieces every tiny builder shares: the family registry entry, the zoo's sizes and tokenizer, config dicts.

The checkpoint builders (:mod:`probekit.tiny.builders`) pass the sizes a caller chose; the zoo builds
(:mod:`probekit.tiny.zoo`) pass :data:`_S` and use :func:`_zoo_text` (the same keys, with the zoo's short
positions, an explicit head size and untied embeddings).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__: list[str] = []


@dataclass
class _Built:
    model: Any
    processor: Any
    post_save: Callable[[pathlib.Path], None] | None = None


@dataclass(frozen=True)
class _Family:
    """One checkpoint family: how to build it, and everything else that differs per family.

    ``model_type`` is its key in :data:`probekit.tiny.zoo.ARCHITECTURES` (the zoo builds it with
    :data:`_S` plus ``sizes`` plus ``zoo_sizes``); ``prompt`` is a one-image prompt with a
    ``{question}`` field; ``sizes`` are the family's own default sizes (extra keywords of
    :func:`probekit.tiny.build`, or overrides of the common defaults).
    """

    build: Callable[[dict[str, int], str], _Built]
    model_type: str
    prompt: str
    sizes: dict[str, int] = field(default_factory=dict)
    zoo_sizes: dict[str, int] = field(default_factory=dict)


# The zoo's sizes: small enough to be quick, large enough for every config's divisibility rules.
_S = {"hidden_size": 32, "num_layers": 2, "intermediate_size": 64, "num_heads": 2, "num_kv_heads": 2,
      "vision_hidden_size": 32, "vision_layers": 1, "vision_intermediate_size": 64, "vision_heads": 2,
      "image_size": 32, "patch_size": 8, "vocab_size": 512}
_IMG = 32
_ZOO_TEXT = {"max_position_embeddings": 512, "head_dim": 16, "tie_word_embeddings": False}


def _text(s: dict[str, int], tok: Any, **extra: Any) -> dict[str, Any]:
    """Language-model config keys every family shares; ``extra`` adds or overrides."""
    return {
        "vocab_size": len(tok),
        "hidden_size": s["hidden_size"],
        "intermediate_size": s["intermediate_size"],
        "num_hidden_layers": s["num_layers"],
        "num_attention_heads": s["num_heads"],
        "num_key_value_heads": s["num_kv_heads"],
        "max_position_embeddings": 4096,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        **extra,
    }


def _llama_text(s: dict[str, int], tok: Any) -> dict[str, Any]:
    return _text(s, tok, model_type="llama", tie_word_embeddings=False)


def _zoo_text(tok: Any, **extra: Any) -> dict[str, Any]:
    """:func:`_text` at the zoo's sizes :data:`_S`, with :data:`_ZOO_TEXT` (``extra`` overrides both)."""
    return _text(_S, tok, **{**_ZOO_TEXT, **extra})


def _vision(s: dict[str, int], **extra: Any) -> dict[str, Any]:
    """ViT config keys of the CLIP/SigLIP-style towers; ``extra`` adds or overrides."""
    return {
        "hidden_size": s["vision_hidden_size"],
        "intermediate_size": s["vision_intermediate_size"],
        "num_hidden_layers": s["vision_layers"],
        "num_attention_heads": s["vision_heads"],
        "image_size": s["image_size"],
        "patch_size": s["patch_size"],
        **extra,
    }


def _tok(specials: Any = (), *, bos: str | None = "<s>", eos: str = "</s>", pad: str = "<pad>", add_bos: bool = True,
         named: dict[str, str] | None = None) -> Any:
    """The zoo's tiny BPE tokenizer; ``named`` special tokens also become attributes (``tok.image_token``)."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    from .text import _train_bpe

    tok = _train_bpe(_S["vocab_size"])
    named = dict(named or {})
    specials = list(dict.fromkeys([t for t in (bos, eos, pad) if t] + list(specials) + list(named.values())))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    kw: dict[str, Any] = {"tokenizer_object": tok, "eos_token": eos, "pad_token": pad, "padding_side": "right",
                          "add_bos_token": add_bos, "add_eos_token": False, "clean_up_tokenization_spaces": False}
    if bos:
        kw["bos_token"] = bos
    extra = [t for t in specials if t not in (bos, eos, pad) and t not in named.values()]
    kw["extra_special_tokens"] = {**named} if named else extra
    out = PreTrainedTokenizerFast(**kw)
    if named and extra:
        out.add_special_tokens({"additional_special_tokens": extra}, replace_extra_special_tokens=False)
    return out
