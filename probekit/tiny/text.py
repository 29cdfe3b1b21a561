"""Offline tokenizer and chat templates of the tiny checkpoints (:mod:`probekit.tiny`), also used by the zoo builds.

The tokenizer is a byte-level BPE trained in memory on a fixed synthetic corpus (task words
and chat words stay whole), so building a checkpoint needs no download. The chat templates
are short versions in the style of each family's real checkpoints.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Any

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
# Ovis2.5's processor writes the image's start and end marks around its placeholders itself:
# the prompt holds the bare image token.
_OVIS2_5_TEMPLATE = _QWEN2_VL_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<image>\n")
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
