"""Shared pieces of the tiny builds: sizes, a tiny BPE tokenizer, text and vision config dicts.

Used by :mod:`probekit.models.tiny_zoo` and :mod:`probekit.models.tiny_zoo_variants`; apart so
that neither imports the other's helpers (the two used to import each other).
"""

from __future__ import annotations

from typing import Any

# Small enough to be quick, large enough for every config's divisibility rules.
_S = {"hidden_size": 32, "num_layers": 2, "intermediate_size": 64, "num_heads": 2, "num_kv_heads": 2,
      "vision_hidden_size": 32, "vision_layers": 1, "vision_intermediate_size": 64, "vision_heads": 2,
      "image_size": 32, "patch_size": 8, "vocab_size": 512}
_IMG = 32


def _tok(specials: Any = (), *, bos: str | None = "<s>", eos: str = "</s>", pad: str = "<pad>", add_bos: bool = True,
         named: dict[str, str] | None = None) -> Any:
    """A tiny BPE tokenizer; ``named`` special tokens also become attributes (``tok.image_token``)."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    from probekit.models.tiny_text import _train_bpe

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


def _text(tok: Any, **extra: Any) -> dict[str, Any]:
    s = _S
    return {"vocab_size": len(tok), "hidden_size": s["hidden_size"], "intermediate_size": s["intermediate_size"],
            "num_hidden_layers": s["num_layers"], "num_attention_heads": s["num_heads"],
            "num_key_value_heads": s["num_kv_heads"], "max_position_embeddings": 512, "head_dim": 16,
            "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
            "tie_word_embeddings": False, **extra}


def _vision(**extra: Any) -> dict[str, Any]:
    s = _S
    return {"hidden_size": s["vision_hidden_size"], "intermediate_size": s["vision_intermediate_size"],
            "num_hidden_layers": s["vision_layers"], "num_attention_heads": s["vision_heads"],
            "image_size": s["image_size"], "patch_size": s["patch_size"], **extra}
