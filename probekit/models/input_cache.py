"""What one ``collect`` reuses across its batches when it builds the model's inputs.

Per image, the stock path renders the chat template, has the processor expand the image token,
tokenise and validate, and processes the pixels one image at a time. Within one ``collect`` the
processor does not change, so :class:`InputCache` (active inside ``with model.input_cache():``):

- renders each distinct prompt once (the template's output depends only on the prompt);
- when every prompt of a batch is the same and the processor is one whose token rows depend
  only on the prompt and the processed image's shape (:data:`SAME_ROWS`), takes the token rows
  (``input_ids``, ``attention_mask``, ...) from one stock processor call on the batch's first
  image and repeats them for the batch (equal rows need no padding, so the stock batch call
  returns exactly these rows), and the pixels from :class:`~.fast_pixels.FastPixels`. That one
  stock call is also the check: if its ``pixel_values`` differ in any bit from the fast path's
  for the same image, or it returns anything else per image, the fast path is off for the rest
  of the collect.

Anything else (prompts that differ within a batch, other processors, images the fast path does
not handle, a family with its own ``build_inputs``) goes through the stock processor, as before.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .fast_pixels import FastPixels

__all__ = ["InputCache", "SAME_ROWS"]

SAME_ROWS = frozenset({"LlavaProcessor", "Blip2Processor", "PaliGemmaProcessor"})
"""Processor classes whose token rows for one prompt depend only on the processed image's shape
(a fixed number of image tokens per image); checked by exact class, not by subclass."""


class InputCache:
    """Caches of one ``collect`` (see the module docstring); ``build`` is :meth:`probekit.Model.prepare`'s fast path."""

    def __init__(self) -> None:
        self._texts: dict[tuple[str, bool | None], str] = {}
        self._rows: dict[tuple, dict[str, torch.Tensor]] = {}
        self._pixels: FastPixels | None | bool = False  # False: not looked at yet

    def texts(self, family: Any, processor: Any, prompts: Sequence[str], chat: bool | None) -> list[str]:
        """``family.format_prompt`` of every prompt, each distinct prompt rendered once per collect."""
        out = []
        for p in prompts:
            key = (p, chat)
            if key not in self._texts:
                self._texts[key] = family.format_prompt(processor, p, chat)
            out.append(self._texts[key])
        return out

    def build(self, model: Any, family: Any, images: list, prompts: list[str], chat: bool | None) -> dict | None:
        """The processor's inputs for a batch, or None when ``family`` builds its own (the caller's stock path)."""
        from .families.base import Family

        if type(family).build_inputs is not Family.build_inputs:
            return None
        processor = model.processor
        texts = self.texts(family, processor, prompts, chat)
        if images and len(set(texts)) == 1 and type(processor).__name__ in SAME_ROWS:
            out = self._same_prompt(processor, family, images, texts[0])
            if out is not None:
                return out
        return family.call_processor(processor, images, texts)

    def _same_prompt(self, processor: Any, family: Any, images: list, text: str) -> dict | None:
        if self._pixels is False:
            self._pixels = FastPixels.of(getattr(processor, "image_processor", None))
            if self._pixels is not None and not _plain_image_kwargs(processor):
                self._pixels = None
        if self._pixels is None:
            return None
        pixels = self._pixels(images)
        if pixels is None:
            return None
        tok = getattr(processor, "tokenizer", processor)
        key = (text, tuple(pixels.shape[1:]), getattr(tok, "padding_side", None))
        rows = self._rows.get(key)
        if rows is None:
            ref = family.call_processor(processor, images[:1], [text])
            per_row = {k: v for k, v in ref.items() if k != "pixel_values"}
            if not (isinstance(ref.get("pixel_values"), torch.Tensor) and torch.equal(ref["pixel_values"], pixels[:1])
                    and all(isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == 1 for v in per_row.values())):
                self._pixels = None  # not what the stock processor returns: the stock path from here on
                return None
            rows = self._rows[key] = ref
        b = len(images)
        return {k: pixels if k == "pixel_values" else v.repeat(b, *([1] * (v.dim() - 1))) for k, v in rows.items()}


def _plain_image_kwargs(processor: Any) -> bool:
    """Whether the processor hands its image processor no setting of its own (only ``return_tensors``, and
    PaliGemma's ``data_format="channels_first"``, which is the PIL pipeline's layout anyway)."""
    try:
        merged = processor._merge_kwargs(tokenizer_init_kwargs=getattr(processor.tokenizer, "init_kwargs", {}),
                                         return_tensors="pt", padding=True)
    except Exception:  # noqa: BLE001 - a processor without transformers' kwargs merging: not recognised
        return False
    kwargs = dict(merged.get("images_kwargs", {}))
    kwargs.pop("return_tensors", None)
    if kwargs.get("data_format") in ("channels_first", None):
        kwargs.pop("data_format", None)
    return not kwargs
