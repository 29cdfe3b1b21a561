"""Tiny, offline Hugging Face vision-language checkpoints for tests, docs and benchmarks.

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

Example (runnable, takes well under a second per family)::

    >>> import tempfile, transformers, torch
    >>> from probekit.models import tiny
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
import functools
import json
import os
import pathlib
import random
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from probekit.errors import InputError
from probekit.models.processors import _image_only_qwen2_vl_class, _torchvision_available, load_processor

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

FAMILIES: tuple[str, ...] = ("llava", "qwen2_vl", "idefics3", "mllama", "blip2", "paligemma")

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
_FAMILY_DEFAULTS: dict[str, dict[str, int | None]] = {
    "llava": {},
    "qwen2_vl": {},
    "idefics3": {},
    # 4 layers so that exactly one is a cross-attention layer, the rest self-attention.
    "mllama": {"num_layers": 4, "max_num_tiles": 2},
    "blip2": {"num_query_tokens": 4, "qformer_layers": 2},
    "paligemma": {},
}
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


# --------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------

_COLOURS = (
    "red green blue yellow orange purple pink brown black white grey gray cyan magenta "
    "violet indigo gold silver beige navy teal maroon olive lime"
).split()
_SHAPES = (
    "circle square triangle rectangle star hexagon pentagon octagon oval diamond cross heart "
    "arrow line dot cube sphere cone cylinder pyramid ring crescent spiral"
).split()
_COUNTS = "zero one two three four five six seven eight nine ten eleven twelve twenty many few several no".split()
_OBJECTS = (
    "cat dog bird fish horse cow sheep car bus truck bicycle boat plane train tree flower house "
    "door window table chair cup bottle book phone screen sign road river mountain sky cloud sun "
    "moon person man woman child face hand ball box bag apple banana orange pizza cake clock"
).split()
_ADJECTIVES = (
    "big small large tiny huge little tall short long wide narrow bright dark light heavy empty "
    "full old new young round flat striped dotted shiny plain hidden visible left right top bottom"
).split()
_QUESTIONS = (
    "What is the colour of the {o}?",
    "How many {c} {s}s are there?",
    "Is there a {a} {o} in the image?",
    "Which shape is {c}?",
    "Where is the {a} {s}?",
    "Describe the image.",
    "What does the sign say?",
    "Who is next to the {o}?",
    "Count the {s}s.",
    "What is written below the {o}?",
)
_ANSWERS = (
    "The {o} is {c}.",
    "There are {n} {c} {s}s.",
    "Yes, there is a {a} {o} on the {p}.",
    "No, the {s} is {c}, not {c2}.",
    "It is {p} of the {a} {o}.",
    "The image shows {n} {a} {o}s and a {c} {s}.",
    "The username is {u} and the password is {w}.",
    "The sign says: {n} {o}s for {d} dollars!",
)
_PLACES = "left right top bottom middle centre center corner edge background foreground".split()
_NAMES = "alice bob carol dave eve frank grace heidi ivan judy mallory oscar peggy trent victor walter".split()


def _corpus() -> list[str]:
    """A fixed synthetic English corpus; ``random.Random(0)`` keeps it identical every call."""
    rng = random.Random(0)
    lines: list[str] = []
    for _ in range(1500):
        fields = {
            "o": rng.choice(_OBJECTS),
            "s": rng.choice(_SHAPES),
            "c": rng.choice(_COLOURS),
            "c2": rng.choice(_COLOURS),
            "n": rng.choice(_COUNTS + [str(i) for i in range(25)]),
            "a": rng.choice(_ADJECTIVES),
            "p": rng.choice(_PLACES),
            "u": rng.choice(_NAMES) + str(rng.randrange(100)),
            "w": "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(6)),
            "d": f"{rng.randrange(100)}.{rng.randrange(100):02d}",
        }
        lines.append(rng.choice(_QUESTIONS).format(**fields) + " " + rng.choice(_ANSWERS).format(**fields))
    # Capitalised words, digits, letters and punctuation so that they get their own merges.
    lines.append(" ".join(w.capitalize() for w in _COLOURS + _SHAPES + _OBJECTS + _NAMES))
    lines.append(" ".join(str(i) for i in range(1000)))
    lines.append(" ".join("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    # Chat-template words recur in every prompt; repeat them so that they become single tokens.
    lines.extend(["USER: ASSISTANT: User: Assistant: Question: Answer: system user assistant"] * 40)
    # Line-initial forms (no leading space) as they follow a special token in chat prompts.
    lines.extend(["USER:", "User:", "Assistant:", "Question:", "What", "user", "assistant", "system"] * 30)
    lines.extend(["username password image picture photo colour color shape what which how many"] * 20)
    lines.append(". , ; : ! ? ' \" ( ) [ ] { } - _ + = * / \\ | @ # $ % & ^ ~ ` < > \n \t")
    return lines


def _train_bpe(vocab_size: int) -> Any:
    """A byte-level BPE (any string tokenizes; no unk), trained deterministically.

    Returns a fresh ``tokenizers.Tokenizer``; callers add tokens to it, so the cache holds
    the serialised form only.
    """
    from tokenizers import Tokenizer

    return Tokenizer.from_str(_train_bpe_json(vocab_size))


@functools.lru_cache(maxsize=8)
def _train_bpe_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok.to_str()


@dataclass(frozen=True)
class _TokenizerSpec:
    bos: str | None
    eos: str
    pad: str
    unk: str | None = None
    add_bos: bool = False
    # Special tokens beyond bos/eos/pad/unk, in id order (image token, chat-template tokens...).
    extra_special: tuple[str, ...] = ()
    # Ordinary added tokens that the family's processor would add on load anyway
    # (PaliGemma's <locXXXX>/<segXXX>): adding them now keeps len(tokenizer) stable.
    extra_plain: tuple[str, ...] = ()


def _make_tokenizer(spec: _TokenizerSpec, vocab_size: int, padding_side: str) -> Any:
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    tok = _train_bpe(vocab_size)
    named = [t for t in (spec.bos, spec.eos, spec.pad, spec.unk) if t is not None]
    specials = list(dict.fromkeys(named + list(spec.extra_special)))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    if spec.extra_plain:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in spec.extra_plain])
    kwargs: dict[str, Any] = {
        "tokenizer_object": tok,
        "eos_token": spec.eos,
        "pad_token": spec.pad,
        "padding_side": padding_side,
        "add_bos_token": spec.add_bos,
        "add_eos_token": False,
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
    }
    if spec.bos is not None:
        kwargs["bos_token"] = spec.bos
    if spec.unk is not None:
        kwargs["unk_token"] = spec.unk
    extra = [t for t in spec.extra_special if t not in named]
    if extra:
        kwargs["extra_special_tokens"] = extra
    return PreTrainedTokenizerFast(**kwargs)


# --------------------------------------------------------------------------------------
# Chat templates (short versions in the style of the real checkpoints)
# --------------------------------------------------------------------------------------

_LLAVA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}{% endfor %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
_QWEN2_VL_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# The real template starts with <|begin_of_text|>, which the tokenizer then adds a second
# time; leaving it to the tokenizer gives one BOS.
_IDEFICS3_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}"
    "{% if line['type'] == 'text' %}{{ line['text'] }}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
_MLLAMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|image|>{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def prompt(family: str, question: str) -> str:
    """A raw one-image prompt for ``family``, in the format its processor expects.

    >>> prompt("llava", "What is this?")
    'USER: <image>\\nWhat is this? ASSISTANT:'
    """
    _check_family(family)
    return {
        "llava": f"USER: <image>\n{question} ASSISTANT:",
        "qwen2_vl": f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\n"
        "<|im_start|>assistant\n",
        "idefics3": f"User:<image>{question}<end_of_utterance>\nAssistant:",
        "mllama": f"<|image|>{question}",
        "blip2": f"Question: {question} Answer:",
        "paligemma": f"<image>{question}",
    }[family]


# --------------------------------------------------------------------------------------
# Families
# --------------------------------------------------------------------------------------


@dataclass
class _Built:
    model: Any
    processor: Any
    post_save: Callable[[pathlib.Path], None] | None = None


def _llama_text(s: dict[str, int], vocab: int, tok: Any) -> dict[str, Any]:
    return {
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": s["hidden_size"],
        "intermediate_size": s["intermediate_size"],
        "num_hidden_layers": s["num_layers"],
        "num_attention_heads": s["num_heads"],
        "num_key_value_heads": s["num_kv_heads"],
        "max_position_embeddings": 4096,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "tie_word_embeddings": False,
    }


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
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": s["vision_hidden_size"],
            "intermediate_size": s["vision_intermediate_size"],
            "num_hidden_layers": s["vision_layers"],
            "num_attention_heads": s["vision_heads"],
            "image_size": s["image_size"],
            "patch_size": s["patch_size"],
            "projection_dim": s["hidden_size"],
        },
        text_config=_llama_text(s, len(tok), tok),
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
        text_config={
            "vocab_size": len(tok),
            "hidden_size": s["hidden_size"],
            "intermediate_size": s["intermediate_size"],
            "num_hidden_layers": s["num_layers"],
            "num_attention_heads": s["num_heads"],
            "num_key_value_heads": s["num_kv_heads"],
            "max_position_embeddings": 4096,
            "max_window_layers": s["num_layers"],
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": _mrope_section(head_dim),
            },
            "bos_token_id": tok.convert_tokens_to_ids("<|endoftext|>"),
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        },
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
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

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
    text = _llama_text(s, len(tok), tok)
    config = Idefics3Config(
        vision_config={
            "hidden_size": s["vision_hidden_size"],
            "intermediate_size": s["vision_intermediate_size"],
            "num_hidden_layers": s["vision_layers"],
            "num_attention_heads": s["vision_heads"],
            "image_size": s["image_size"],
            "patch_size": s["patch_size"],
        },
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
        text_config={
            "vocab_size": len(tok),
            "hidden_size": s["hidden_size"],
            "intermediate_size": s["intermediate_size"],
            "num_hidden_layers": n,
            "num_attention_heads": s["num_heads"],
            "num_key_value_heads": s["num_kv_heads"],
            "cross_attention_layers": cross,
            "max_position_embeddings": 4096,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        },
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
        vision_config={
            "hidden_size": s["vision_hidden_size"],
            "intermediate_size": s["vision_intermediate_size"],
            "num_hidden_layers": s["vision_layers"],
            "num_attention_heads": s["vision_heads"],
            "image_size": s["image_size"],
            "patch_size": s["patch_size"],
        },
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
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": s["vision_hidden_size"],
            "intermediate_size": s["vision_intermediate_size"],
            "num_hidden_layers": s["vision_layers"],
            "num_attention_heads": s["vision_heads"],
            "image_size": s["image_size"],
            "patch_size": s["patch_size"],
            "vision_use_head": False,
        },
        text_config={
            "model_type": "gemma",
            "vocab_size": len(tok),
            "hidden_size": s["hidden_size"],
            "intermediate_size": s["intermediate_size"],
            "num_hidden_layers": s["num_layers"],
            "num_attention_heads": s["num_heads"],
            "num_key_value_heads": s["num_kv_heads"],
            "head_dim": s["hidden_size"] // s["num_heads"],
            "max_position_embeddings": 4096,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        },
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


_BUILDERS: dict[str, Callable[[dict[str, int], str], _Built]] = {
    "llava": _build_llava,
    "qwen2_vl": _build_qwen2_vl,
    "idefics3": _build_idefics3,
    "mllama": _build_mllama,
    "blip2": _build_blip2,
    "paligemma": _build_paligemma,
}


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
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(
                f"size {key}={value!r} must be a positive int",
                fix=f"pass e.g. {key}={default_sizes(family)[key]}",
            )
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
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed must be an int, got {seed!r}", fix="pass e.g. seed=0")
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

    # os.mkdir rather than mkdtemp: the checkpoint should get umask permissions, not 0o700.
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    os.mkdir(tmp)
    try:
        # fork_rng: seeding must not disturb the caller's global RNG stream.
        with torch.random.fork_rng(devices=[]), _no_progress_bars():
            torch.manual_seed(seed)
            built = _BUILDERS[family](s, padding_side)
            built.model.eval()
            built.model.save_pretrained(tmp)
            built.processor.save_pretrained(tmp)
        if built.post_save is not None:
            built.post_save(tmp)
        _record_provenance(tmp, family, seed, s)
        if target.exists():
            # Move the old directory aside first so that the swap is one rename.
            old = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
    info = {"generator": "probekit.models.tiny", "family": family, "seed": seed, "sizes": sizes}
    (directory / "probekit_tiny.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def fixture_images(n: int, size: int | tuple[int, int] = 32, seed: int = 0) -> list[Any]:
    """Return ``n`` deterministic random RGB ``PIL.Image.Image`` of ``size`` (int or (w, h)).

    >>> [im.size for im in fixture_images(2, 16)]
    [(16, 16), (16, 16)]
    """
    import numpy as np
    from PIL import Image

    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InputError(f"n must be a non-negative int, got {n!r}", fix="pass e.g. n=2")
    w, h = (size, size) if isinstance(size, int) else tuple(size)
    if w < 1 or h < 1:
        raise InputError(f"image size must be positive, got {size!r}", fix="pass e.g. size=32")
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)) for _ in range(n)]

