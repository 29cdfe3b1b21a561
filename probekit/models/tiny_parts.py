"""Config pieces every tiny builder shares (:mod:`probekit.models.tiny_builders`)."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__: list[str] = []


@dataclass
class _Built:
    model: Any
    processor: Any
    post_save: Callable[[pathlib.Path], None] | None = None


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
