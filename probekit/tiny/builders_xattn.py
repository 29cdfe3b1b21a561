"""Tiny builds of the cross-attention families: Mllama (LM cross-attention) and BLIP-2 (Q-Former).

Registered in :data:`probekit.tiny.builders._FAMILIES`, like the other families.
"""

from __future__ import annotations

from typing import Any

from .parts import _Built, _text, _vision
from .text import _MLLAMA_TEMPLATE, _make_tokenizer, _TokenizerSpec

__all__: list[str] = []


def _supported_aspect_ratios(max_tiles: int) -> list[list[int]]:
    # Same order as the image processor's get_all_supported_aspect_ratios: ids must agree.
    return [[w, h] for w in range(1, max_tiles + 1) for h in range(1, max_tiles + 1) if w * h <= max_tiles]


def _build_mllama(s: dict[str, int], padding_side: str) -> _Built:
    from transformers import (
        MllamaConfig,
        MllamaForConditionalGeneration,
        MllamaImageProcessorPil,
        MllamaProcessor,
    )

    specials = (
        "<|image|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
        "<|python_tag|>",
    )
    tok = _make_tokenizer(
        _TokenizerSpec(
            bos="<|begin_of_text|>",
            eos="<|eot_id|>",
            pad="<|finetune_right_pad_id|>",
            # Like Llama-3.2-Vision: MllamaProcessor inserts the BOS itself, after leading <|image|>s.
            add_bos=False,
            extra_special=("<|end_of_text|>",) + specials,
        ),
        s["vocab_size"],
        padding_side,
    )
    n = s["num_layers"]
    # Llama-3.2-Vision puts a cross-attention layer every 5th layer from 3; here every 4th from 1.
    cross = list(range(1, n, 4))
    inter_idx = [0] if s["vision_layers"] == 1 else [0, s["vision_layers"] - 1]
    max_tiles = s["max_num_tiles"]
    config = MllamaConfig(
        vision_config={
            "hidden_size": s["vision_hidden_size"],
            "intermediate_size": s["vision_intermediate_size"],
            "num_hidden_layers": s["vision_layers"],
            "num_global_layers": 1,
            "attention_heads": s["vision_heads"],
            "image_size": s["image_size"],
            "patch_size": s["patch_size"],
            "max_num_tiles": max_tiles,
            "intermediate_layers_indices": inter_idx,
            "vision_output_dim": s["vision_hidden_size"] * (len(inter_idx) + 1),
            "supported_aspect_ratios": _supported_aspect_ratios(max_tiles),
        },
        text_config=_text(s, tok, num_hidden_layers=n, cross_attention_layers=cross),
        image_token_index=tok.convert_tokens_to_ids("<|image|>"),
    )
    image_processor = MllamaImageProcessorPil(
        size={"height": s["image_size"], "width": s["image_size"]},
        max_image_tiles=max_tiles,
    )
    processor = MllamaProcessor(image_processor=image_processor, tokenizer=tok, chat_template=_MLLAMA_TEMPLATE)
    model = MllamaForConditionalGeneration(config)
    _open_mllama_gates(model)
    return _Built(model, processor)


def _open_mllama_gates(model: Any) -> None:
    """Give Mllama's tanh gates non-zero values.

    They are zero-initialised (as for training from scratch), which would make the text
    output independent of the image; trained checkpoints have them open. Drawn from the
    seeded RNG, so still deterministic.
    """
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("gate", "cross_attn_attn_gate", "cross_attn_mlp_gate"):
                param.uniform_(0.5, 1.0)


def _build_blip2(s: dict[str, int], padding_side: str) -> _Built:
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessorPil,
    )

    # OPT's GPT-2 style tokenizer: "</s>" is both bos (prepended) and eos.
    tok = _make_tokenizer(
        _TokenizerSpec(bos="</s>", eos="</s>", pad="<pad>", unk="<unk>", add_bos=True, extra_special=("<image>",)),
        s["vocab_size"],
        padding_side,
    )
    config = Blip2Config(
        vision_config=_vision(s),
        qformer_config={
            "hidden_size": s["vision_hidden_size"],
            "num_hidden_layers": s["qformer_layers"],
            "num_attention_heads": s["vision_heads"],
            "intermediate_size": s["vision_intermediate_size"],
            "cross_attention_frequency": 1,
            "encoder_hidden_size": s["vision_hidden_size"],
            "vocab_size": len(tok),
            "max_position_embeddings": 512,
        },
        text_config={
            "model_type": "opt",
            "vocab_size": len(tok),
            "hidden_size": s["hidden_size"],
            "word_embed_proj_dim": s["hidden_size"],
            "ffn_dim": s["intermediate_size"],
            "num_hidden_layers": s["num_layers"],
            "num_attention_heads": s["num_heads"],
            "max_position_embeddings": 2048,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        },
        num_query_tokens=s["num_query_tokens"],
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    image_processor = BlipImageProcessorPil(size={"height": s["image_size"], "width": s["image_size"]})
    processor = Blip2Processor(image_processor=image_processor, tokenizer=tok, num_query_tokens=s["num_query_tokens"])
    return _Built(Blip2ForConditionalGeneration(config), processor)
