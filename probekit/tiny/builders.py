"""One builder per checkpoint family, and :data:`_FAMILIES`, the registry of those families.

Each ``_build_<family>(sizes, padding_side)`` returns the model built from its transformers
config and the processor the family's real checkpoints ship, so ``save_pretrained`` writes a
directory that loads through the ordinary hub path. The two cross-attention families
(Mllama, BLIP-2) are built in :mod:`probekit.tiny.builders_xattn`.

:data:`_FAMILIES` is the one list of checkpoint families: :data:`probekit.tiny.FAMILIES`, the
family defaults and prompts of :func:`probekit.tiny.build` / :func:`probekit.tiny.prompt`, and
the family entries of :data:`probekit.tiny.zoo.ARCHITECTURES` are all read from it.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from typing import Any

from probekit.models.processors import _image_only_qwen2_vl_class, _torchvision_available

from .builders_xattn import _build_blip2, _build_mllama
from .parts import _Built, _Family, _llama_text, _text, _vision
from .text import (
    _IDEFICS3_TEMPLATE,
    _LLAVA_TEMPLATE,
    _QWEN2_VL_TEMPLATE,
    _make_tokenizer,
    _TokenizerSpec,
)


def _build_llava(s: dict[str, int], padding_side: str) -> _Built:
    from transformers import (
        CLIPImageProcessorPil,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = _make_tokenizer(
        _TokenizerSpec(bos="<s>", eos="</s>", pad="<pad>", unk="<unk>", add_bos=True, extra_special=("<image>",)),
        s["vocab_size"],
        padding_side,
    )
    grid = s["image_size"] // s["patch_size"]
    config = LlavaConfig(
        vision_config=_vision(s, model_type="clip_vision_model", projection_dim=s["hidden_size"]),
        text_config=_llama_text(s, tok),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=grid * grid,
        # As llava-1.5: features of the penultimate vision layer, CLS dropped.
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        pad_token_id=tok.pad_token_id,
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": s["image_size"]},
        crop_size={"height": s["image_size"], "width": s["image_size"]},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=s["patch_size"],
        vision_feature_select_strategy="default",
        chat_template=_LLAVA_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,  # CLIP's CLS; "default" strategy removes it again
    )
    return _Built(LlavaForConditionalGeneration(config), processor)


def _mrope_section(head_dim: int) -> list[int]:
    # Qwen2-VL splits the rotary half-dim over (t, h, w) as 16:24:24 of 64; keep the ratio.
    half = head_dim // 2
    t = max(1, half // 4)
    h = (half - t) // 2
    return [t, h, half - t - h]


def _build_qwen2_vl(s: dict[str, int], padding_side: str) -> _Built:
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
    )

    specials = (
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|vision_pad|>",
        "<|image_pad|>",
        "<|video_pad|>",
    )
    tok = _make_tokenizer(
        _TokenizerSpec(bos=None, eos="<|im_end|>", pad="<|endoftext|>", extra_special=("<|endoftext|>",) + specials),
        s["vocab_size"],
        padding_side,
    )
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials}
    head_dim = s["hidden_size"] // s["num_heads"]
    config = Qwen2VLConfig(
        vision_config={
            "depth": s["vision_layers"],
            "embed_dim": s["vision_hidden_size"],
            "hidden_size": s["hidden_size"],  # output of the patch merger = LM width
            "num_heads": s["vision_heads"],
            "mlp_ratio": s["vision_intermediate_size"] // s["vision_hidden_size"],
            "patch_size": s["patch_size"],
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        text_config=_text(
            s,
            tok,
            max_window_layers=s["num_layers"],
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": _mrope_section(head_dim)},
            bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    pixels = s["image_size"] * s["image_size"]
    image_processor = Qwen2VLImageProcessorPil(
        # min = max pixels: every image is resized to about image_size x image_size.
        size={"shortest_edge": pixels, "longest_edge": pixels},
        patch_size=s["patch_size"],
        temporal_patch_size=2,
        merge_size=2,
    )
    processor, post_save = _qwen2_vl_processor(image_processor, tok)
    return _Built(Qwen2VLForConditionalGeneration(config), processor, post_save)


def _qwen2_vl_processor(image_processor: Any, tok: Any) -> tuple[Any, Callable[[pathlib.Path], None] | None]:
    from transformers import Qwen2VLProcessor

    video = {
        "size": dict(image_processor.size),
        "patch_size": image_processor.patch_size,
        "temporal_patch_size": image_processor.temporal_patch_size,
        "merge_size": image_processor.merge_size,
        "image_mean": list(image_processor.image_mean),
        "image_std": list(image_processor.image_std),
        "min_frames": 4,
        "max_frames": 16,
    }
    if _torchvision_available():
        from transformers import Qwen2VLVideoProcessor

        video_processor = Qwen2VLVideoProcessor(**video)
        return Qwen2VLProcessor(image_processor, tok, video_processor, chat_template=_QWEN2_VL_TEMPLATE), None

    processor = _image_only_qwen2_vl_class()(image_processor, tok, chat_template=_QWEN2_VL_TEMPLATE)

    def as_stock_checkpoint(directory: pathlib.Path) -> None:
        # Make the files read exactly as a real Qwen2-VL checkpoint's: stock processor class
        # and a video-processor section, so that AutoProcessor loads it where torchvision is.
        cfg_file = directory / "processor_config.json"
        cfg = json.loads(cfg_file.read_text())
        cfg["processor_class"] = "Qwen2VLProcessor"
        cfg["video_processor"] = {**video, "video_processor_type": "Qwen2VLVideoProcessor"}
        cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        tok_file = directory / "tokenizer_config.json"
        tok_cfg = json.loads(tok_file.read_text())
        tok_cfg["processor_class"] = "Qwen2VLProcessor"
        tok_file.write_text(json.dumps(tok_cfg, indent=2, sort_keys=True) + "\n")

    return processor, as_stock_checkpoint


def _build_idefics3(s: dict[str, int], padding_side: str) -> _Built:
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    # from its module: transformers 5.9's top-level name wrongly asks for torchvision (the class does not use it)
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    specials = ("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>") + tuple(
        f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)
    )
    tok = _make_tokenizer(
        _TokenizerSpec(
            bos="<|begin_of_text|>", eos="<end_of_utterance>", pad="<|end_of_text|>", add_bos=True, extra_special=specials
        ),
        s["vocab_size"],
        padding_side,
    )
    scale = 2
    grid = s["image_size"] // s["patch_size"]
    text = _llama_text(s, tok)
    config = Idefics3Config(
        vision_config=_vision(s),
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=scale,
        pad_token_id=tok.pad_token_id,
    )
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": s["image_size"]},
        max_image_size={"longest_edge": s["image_size"]},
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_len=(grid * grid) // (scale * scale),
        chat_template=_IDEFICS3_TEMPLATE,
    )
    return _Built(Idefics3ForConditionalGeneration(config), processor)


def _build_paligemma(s: dict[str, int], padding_side: str) -> _Built:
    from transformers import (
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessorPil,
    )
    from transformers.models.paligemma.processing_paligemma import EXTRA_TOKENS

    tok = _make_tokenizer(
        _TokenizerSpec(
            bos="<bos>",
            eos="<eos>",
            pad="<pad>",
            unk="<unk>",
            add_bos=True,
            extra_special=("<image>",),
            extra_plain=tuple(EXTRA_TOKENS),
        ),
        s["vocab_size"],
        padding_side,
    )
    grid = s["image_size"] // s["patch_size"]
    config = PaliGemmaConfig(
        vision_config=_vision(s, model_type="siglip_vision_model", vision_use_head=False),
        text_config=_text(s, tok, model_type="gemma", head_dim=s["hidden_size"] // s["num_heads"]),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        projection_dim=s["hidden_size"],
        hidden_size=s["hidden_size"],
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
    )
    image_processor = SiglipImageProcessorPil(size={"height": s["image_size"], "width": s["image_size"]})
    # PaliGemmaProcessor reads this attribute; real checkpoints carry it in preprocessor_config.json.
    image_processor.image_seq_length = grid * grid
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
    return _Built(PaliGemmaForConditionalGeneration(config), processor)


_FAMILIES: dict[str, _Family] = {
    "llava": _Family(_build_llava, "llava", "USER: <image>\n{question} ASSISTANT:"),
    "qwen2_vl": _Family(
        _build_qwen2_vl,
        "qwen2_vl",
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n",
    ),
    "idefics3": _Family(_build_idefics3, "idefics3", "User:<image>{question}<end_of_utterance>\nAssistant:"),
    # 4 layers so that exactly one is a cross-attention layer, the rest self-attention.
    "mllama": _Family(_build_mllama, "mllama", "<|image|>{question}", sizes={"num_layers": 4, "max_num_tiles": 2},
                      zoo_sizes={"max_num_tiles": 1}),
    "blip2": _Family(_build_blip2, "blip-2", "Question: {question} Answer:",
                     sizes={"num_query_tokens": 4, "qformer_layers": 2}, zoo_sizes={"qformer_layers": 1}),
    # multi-query attention, like Gemma-2B (checkpoints: the derived default of num_kv_heads)
    "paligemma": _Family(_build_paligemma, "paligemma", "<image>{question}", zoo_sizes={"num_kv_heads": 1}),
}
"""Family name (:data:`probekit.tiny.FAMILIES`) -> its builder, ``config.model_type``, prompt and default sizes."""
