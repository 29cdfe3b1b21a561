"""`probekit.Model`: one HF vision-language model and where everything lives in it.

The adapter is the only place that knows module paths. Everything above it speaks the flat
hook-point vocabulary of DESIGN.md (``lm.3.resid``, ``vision.0.resid``, ``projector``, ...).
"""

from __future__ import annotations

import difflib
import fnmatch
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..errors import InputError, UnknownPointError, UnsupportedModelError, check_bool
from .context import check_context
from .fingerprint import fingerprint
from .layout import HookTarget, Layout, find_first, get_module, require  # noqa: F401 (the families' names, read here too)
from .logit_output import LogitOutput, OutputHead

__all__ = ["Layout", "Model", "HookTarget", "get_module"]


class Model:
    """A Hugging Face VLM with probekit's map of it.

    Build one with :func:`probekit.load` (a path or hub id) or :func:`probekit.wrap` (an
    already-loaded model and its processor); do not call the constructor directly.

    Example:
        >>> import probekit, tempfile
        >>> path = probekit.tiny.build("llava", tempfile.mkdtemp() + "/m")
        >>> model = probekit.load(path)
        >>> model.points("lm.*.resid")[:2]
        ['lm.0.resid', 'lm.1.resid']
    """

    def __init__(self, hf_model: nn.Module, processor: Any, layout: Layout, family_impl: Any):
        self.hf = hf_model
        self.processor = processor
        self.layout = layout
        self.family = layout.family
        self._impl = family_impl
        self._targets = family_impl.hook_targets(hf_model, layout)
        self._input_cache: Any = None  # an InputCache inside `with model.input_cache():`

    # ------------------------------------------------------------------ structure
    @property
    def name(self) -> str:
        return str(getattr(self.hf.config, "_name_or_path", "") or type(self.hf).__name__)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the model's device, or with a ``device_map`` the first device that runs blocks."""
        dmap = getattr(self.hf, "hf_device_map", None)
        if dmap:
            # Offloaded weights ("cpu"/"disk" in the map) sit on the meta device between forwards and
            # run on the main device, which accelerate takes to be the first accelerator, else the CPU.
            run = [d for d in dmap.values() if d not in ("cpu", "disk")]
            first = run[0] if run else "cpu"
            return torch.device(f"cuda:{first}" if isinstance(first, int) else first)
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def lm_layers(self) -> nn.ModuleList:
        return get_module(self.hf, self.layout.lm_layers)

    @property
    def n_layers(self) -> int:
        return len(self.lm_layers)

    @property
    def final_norm(self) -> nn.Module | None:
        return get_module(self.hf, self.layout.final_norm) if self.layout.final_norm else None

    @property
    def unembed(self) -> nn.Module:
        return get_module(self.hf, self.layout.unembed)

    @property
    def head(self) -> nn.Module:
        """The unembedding followed by the model's output map (:mod:`~probekit.models.logit_output`):
        what turns the final-normed residual into the logits the model returns."""
        return OutputHead(self.unembed, self.target("logits").post or LogitOutput())

    @property
    def d_model(self) -> int:
        return int(self.unembed.weight.shape[1])

    @property
    def image_token_id(self) -> int | None:
        return self.layout.image_token_id

    def points(self, pattern: str | Sequence[str] | None = None) -> list[str]:
        """Hook points this model has, in forward order; optionally filtered by glob(s).

        Example: ``model.points("lm.*.resid")``. An unknown pattern raises
        :class:`~probekit.errors.UnknownPointError`.
        """
        if pattern is None:
            return list(self._targets)
        return self.resolve(pattern)

    def resolve(self, patterns: str | Sequence[str]) -> list[str]:
        """Expand glob patterns to point names (forward order, no duplicates)."""
        if isinstance(patterns, str):
            patterns = [patterns]
        if not isinstance(patterns, (list, tuple)) or not patterns:
            raise InputError(
                f"points must be a pattern string or a non-empty list of them, got {patterns!r}",
                fix='pass e.g. points="lm.*.resid" or points=["lm.3.resid", "projector"]',
            )
        chosen: set[str] = set()
        for pat in patterns:
            if not isinstance(pat, str):
                raise InputError(f"point pattern {pat!r} is not a string", fix='use names like "lm.3.resid"')
            hits = [p for p in self._targets if fnmatch.fnmatchcase(p, pat)]
            if not hits:
                close = difflib.get_close_matches(pat, list(self._targets), n=3)
                raise UnknownPointError(
                    f"{self.family} model has no hook point matching {pat!r}"
                    + (f" (did you mean {', '.join(close)}?)" if close else ""),
                    fix=f"choose from model.points(); this model has e.g. {_summary(list(self._targets))}",
                )
            chosen.update(hits)
        return [p for p in self._targets if p in chosen]

    def target(self, point: str) -> HookTarget:
        try:
            return self._targets[point]
        except KeyError:
            raise UnknownPointError(
                f"{self.family} model has no hook point {point!r}",
                fix=f"choose from model.points(): {_summary(list(self._targets))}",
            ) from None

    def module(self, point: str) -> nn.Module:
        """The torch module a point is read from."""
        return get_module(self.hf, self.target(point).path)

    # ------------------------------------------------------------------ inputs
    def prepare(
        self,
        images: Sequence[Any],
        prompts: Sequence[str],
        *,
        chat: bool | None = None,
        padding_side: str | None = None,
        answers: Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Processor inputs for a batch of PIL images and prompts, on the model's device.

        ``chat=None`` uses the processor's chat template when it has one. ``answers`` (one per
        prompt) are appended after the formatted prompt, as the assistant's reply, for a
        teacher-forced forward; :meth:`answer_lengths` says how many tokens each one took.
        """
        check_bool(chat, "chat", none=True)
        tok = getattr(self.processor, "tokenizer", self.processor)
        old_side = getattr(tok, "padding_side", None)
        if padding_side is not None:
            if padding_side not in ("left", "right"):
                raise InputError(f"padding_side must be 'left' or 'right', got {padding_side!r}",
                                 fix="pass padding_side='left' or 'right'")
            tok.padding_side = padding_side
        try:
            cache = self._input_cache
            if answers is not None:
                inputs = self._forced_inputs(list(images), list(prompts), list(answers), chat)
            else:
                inputs = cache.build(self, self._impl, list(images), list(prompts), chat) if cache is not None else None
            if inputs is None:
                inputs = self._impl.build_inputs(self, list(images), list(prompts), chat)
        finally:
            if padding_side is not None:
                tok.padding_side = old_side
        check_context(self, inputs.get("input_ids"))  # longer than the context: refused before the forward
        dev, dt = self.device, self.dtype
        out = {}
        inputs.pop("labels", None)  # PaliGemma's processor adds labels; a loss is not wanted here
        for k, v in inputs.items():
            if isinstance(v, torch.Tensor):
                v = v.to(dev, dtype=dt) if v.is_floating_point() else v.to(dev)
            out[k] = v
        return out

    def check_answers(self) -> None:
        """Raise :class:`UnsupportedModelError` when this family cannot take teacher-forced answers."""
        from .families.base import Family

        if type(self._impl).build_inputs is not Family.build_inputs or self.image_free("lm"):
            raise UnsupportedModelError(
                f"answers= (a teacher-forced reply after the prompt) is not supported for {self.family}: its decoder "
                "is fed separately from the prompt", fix="record without answers=, or use a decoder-only VLM")

    def _forced_inputs(self, images: list, prompts: list[str], answers: list[str], chat: bool | None) -> dict:
        self.check_answers()
        if len(answers) != len(prompts):
            raise InputError(f"{len(answers)} answers for {len(prompts)} prompts", fix="pass one answer per image")
        cache = self._input_cache
        texts = (cache.texts(self._impl, self.processor, prompts, chat) if cache is not None
                 else [self._impl.format_prompt(self.processor, p, chat) for p in prompts])
        return self._impl.call_processor(self.processor, images, [t + " " + a for t, a in zip(texts, answers)])

    def answer_lengths(self, inputs: Mapping[str, Any], answers: Sequence[str]) -> torch.Tensor:
        """``[b]``: tokens of each forced answer, checked to be the last real tokens of its row.

        Raises :class:`InputError` when a row does not end in its answer's tokens (a processor that
        appends text after the prompt, or an answer that merges with the prompt's last token).
        """
        tok = getattr(self.processor, "tokenizer", self.processor)
        ids, am = inputs["input_ids"], inputs.get("attention_mask")
        out = []
        for r, a in enumerate(answers):
            want = tok(" " + a, add_special_tokens=False)["input_ids"]
            row = ids[r][am[r].bool()] if am is not None else ids[r]
            if not want or row[-len(want):].tolist() != list(want):
                raise InputError(f"answer {a!r} is not the last tokens of its row after the processor",
                                 fix="use answers that start a new word, with a processor that adds nothing after the text")
            out.append(len(want))
        return torch.tensor(out, dtype=torch.long)

    @contextmanager
    def input_cache(self) -> Iterator[None]:
        """Within the block, :meth:`prepare` reuses across calls what does not change between batches.

        Each distinct prompt is rendered once; a batch with one prompt for every image takes its
        token rows from one stock processor call and, for transformers' plain PIL image
        processors, its pixels from one batched pass (the same bits; see
        :mod:`probekit.models.input_cache`). ``collect`` runs its batches inside it. Do not change
        the processor inside the block. Nested blocks share the outer cache.
        """
        from .input_cache import InputCache

        outer = self._input_cache
        self._input_cache = outer if outer is not None else InputCache()
        try:
            yield
        finally:
            self._input_cache = outer

    def image_mask(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Bool ``[b, s]``: which token positions hold image tokens (an encoder-decoder's: in the encoder sequence)."""
        return self._impl.image_mask(self, inputs)

    def sequences(self, inputs: Mapping[str, Any]) -> dict[str, tuple[dict, torch.Tensor]]:
        """The token sequences of a batch by point side: ``{side: ({"input_ids", "attention_mask"}, image mask)}``.

        A decoder-only model has one, ``"lm"``; an encoder-decoder (Florence-2) has ``"encoder"``
        (image tokens and prompt) and ``"lm"`` (its decoder's tokens). Positions of a point are
        chosen on the sequence of its side (:attr:`HookTarget.side`). A sequence whose token ids
        the inputs lack (a call with ``inputs_embeds``) is left out.
        """
        return self._impl.sequences(self, inputs)

    def describe_sequence(self, side: str) -> str:
        """A phrase naming the token sequence of ``side`` (for error messages)."""
        return self._impl.sequence_names.get(side, f"the {side} sequence")

    def image_free(self, side: str) -> bool:
        """Whether the sequence of ``side`` never holds image tokens (Florence-2's decoder)."""
        return side in self._impl.image_free_sequences

    def vision_counts(self, inputs: Mapping[str, torch.Tensor], point: str, first_dim: int) -> list[int] | None:
        """How many rows of a flattened vision tensor belong to each sample (Qwen2-VL), else None."""
        return self._impl.vision_counts(self, inputs, point, first_dim)

    def lm_activation(self, point: str, h: torch.Tensor, batch: int) -> torch.Tensor:
        """An LM-side activation of ``batch`` samples as ``[b, s, d]`` (OPT's fc2 runs on ``[b*s, d]``)."""
        return self._impl.lm_activation(point, h, batch)

    def vision_activation(self, inputs: Mapping[str, torch.Tensor], point: str, h: torch.Tensor,
                          batch: int) -> tuple[torch.Tensor, list[int] | None]:
        """A vision-side activation and its rows per image, as ``select_vision`` takes them (Mllama's tiles folded)."""
        return self._impl.vision_activation(self, inputs, point, h, batch)

    def point_width(self, point: str) -> int | None:
        """Width of a point's activation, known without a forward pass (None when it is not)."""
        return self.target(point).width

    def residual_writers(self) -> list[tuple[str, str]]:
        """``(dotted path, kind)`` of every module writing into the residual stream (what ``orthogonalize`` edits)."""
        return self._impl.residual_writers(self)

    def fingerprint(self) -> str:
        """A short hash of the architecture and the weights (for store checks and reports).

        It changes when any weight changes: besides the config and every parameter's name and
        shape it hashes a strided sample of each parameter's values (at most
        ``FINGERPRINT_SAMPLE`` per tensor, always the first and last), so a fine-tuned copy of a
        model gets its own fingerprint while a 7B model is still fingerprinted in milliseconds
        (the whole weights are never read).

        Example:
            >>> import probekit, tempfile, torch
            >>> m = probekit.load(probekit.tiny.build("llava", tempfile.mkdtemp() + "/m"))
            >>> before = m.fingerprint()
            >>> with torch.no_grad():
            ...     _ = next(m.hf.parameters()).view(-1)[0].add_(1e-3)
            >>> m.fingerprint() != before
            True
        """
        return fingerprint(self.hf, self.name)

    def __repr__(self) -> str:
        n_params = sum(p.numel() for p in self.hf.parameters())
        return (
            f"probekit.Model(family={self.family!r}, name={self.name!r}, lm_layers={self.n_layers}, "
            f"d_model={self.d_model}, params={n_params:,}, points={len(self._targets)})"
        )




def _summary(names: list[str], k: int = 6) -> str:
    if len(names) <= k:
        return ", ".join(names)
    return ", ".join(names[: k // 2]) + ", ..., " + ", ".join(names[-k // 2 :])
