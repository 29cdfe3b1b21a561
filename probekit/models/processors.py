"""Loading a checkpoint's processor, with the one fallback a torchvision-free install needs."""

from __future__ import annotations

import functools
import os
from typing import Any

__all__ = ["image_only", "load_processor"]


def _torchvision_available() -> bool:
    from transformers.utils import is_torchvision_available

    return bool(is_torchvision_available())


@functools.cache
def image_only(cls: type) -> type:
    """``cls`` (a processor class that takes a video processor) without its video processor.

    transformers 5.x builds every sub-processor named in a processor's ``__init__``; the
    video processors of Qwen2/2.5/3-VL, LLaVA-OneVision, SmolVLM, InternVL and GLM-4V need
    torchvision, so without it the stock classes cannot be constructed even for images.
    The subclass's ``__init__`` has no ``video_processor`` (``ProcessorMixin`` reads its
    sub-processors off the signature) and hands None on; image and text handling are
    inherited unchanged.

    Example:
        >>> from transformers import Qwen3VLProcessor
        >>> image_only(Qwen3VLProcessor).__name__
        'ImageOnlyQwen3VLProcessor'
    """

    def __init__(self: Any, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs: Any):
        kwargs.pop("video_processor", None)
        cls.__init__(self, image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                     chat_template=chat_template, **kwargs)

    return type(f"ImageOnly{cls.__name__}", (cls,), {"__init__": __init__, "__module__": __name__})


@functools.cache
def _image_only_qwen2_vl_class() -> type:
    """A Qwen2VLProcessor without the video processor, for installs without torchvision.

    transformers 5.23 builds every sub-processor named in the processor's ``__init__`` and
    Qwen2VLVideoProcessor needs torchvision, so the stock class cannot be constructed (or
    loaded by AutoProcessor) without it. Narrowing ``__init__`` to (image_processor,
    tokenizer) is all it takes: image and text handling are inherited unchanged.
    """
    from transformers import Qwen2VLProcessor

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs: Any):
            # ProcessorMixin maps positional args onto get_attributes(), which no longer has
            # video_processor, so the None is dropped instead of type-checked.
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template)

    return ImageOnlyQwen2VLProcessor


def load_processor(path: str | os.PathLike[str]) -> Any:
    """``AutoProcessor.from_pretrained(path)``, plus the one fallback a torchvision-free install needs.

    transformers 5.23 cannot build ``Qwen2VLProcessor`` without torchvision (its video
    processor requires it, even for image-only use), for real and tiny checkpoints alike. In
    that case only, this returns an image-only subclass of ``Qwen2VLProcessor`` loaded from
    the same files; it processes images and text exactly like the stock class.
    """
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path)
    except ImportError:
        from transformers import AutoConfig

        if AutoConfig.from_pretrained(path).model_type != "qwen2_vl" or _torchvision_available():
            raise
        return _image_only_qwen2_vl_class().from_pretrained(path)


def pixtral_processor(image_processor: Any, tokenizer: Any, patch_size: int = 16, spatial_merge_size: int = 1,
                      chat_template: Any = None) -> Any:
    """``PixtralProcessor`` (Mistral 3, Pixtral), or where torchvision is missing an equivalent image-only one.

    transformers guards the whole ``PixtralProcessor`` class behind torchvision although the
    PIL image processor (``PixtralImageProcessorPil``) does the pixel work. The fallback
    expands every ``[IMG]`` the way the stock class does (one ``[IMG]`` per merged patch, an
    ``[IMG_BREAK]`` after each row, ``[IMG_END]`` instead of the last break) and tokenizes.

    Example:
        >>> from probekit.models import tiny_zoo
        >>> hf, proc = tiny_zoo.build("mistral3")
        >>> proc.image_token
        '[IMG]'
    """
    if _torchvision_available():
        from transformers import PixtralProcessor

        return PixtralProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                                spatial_merge_size=spatial_merge_size, chat_template=chat_template)
    return _ImageOnlyPixtralProcessor(image_processor, tokenizer, patch_size, spatial_merge_size, chat_template)


class _ImageOnlyPixtralProcessor:
    image_token, image_break_token, image_end_token = "[IMG]", "[IMG_BREAK]", "[IMG_END]"

    def __init__(self, image_processor: Any, tokenizer: Any, patch_size: int, spatial_merge_size: int, chat_template: Any):
        self.image_processor, self.tokenizer, self.chat_template = image_processor, tokenizer, chat_template
        self.patch_size, self.spatial_merge_size = patch_size, spatial_merge_size
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)

    def __call__(self, images: Any = None, text: Any = None, return_tensors: str = "pt", **kwargs: Any) -> Any:
        from transformers import BatchFeature

        text = [text] if isinstance(text, str) else list(text)
        step = self.patch_size * self.spatial_merge_size
        pix = self.image_processor(images, patch_size=step, return_tensors="pt") if images is not None else {}
        sizes = iter(pix["image_sizes"].tolist() if images is not None else [])
        expanded = []
        for t in text:
            parts = t.split(self.image_token)
            out = parts[0]
            for part in parts[1:]:
                h, w = next(sizes)
                rows = [self.image_token * (w // step) + self.image_break_token] * (h // step)
                out += "".join(rows)[: -len(self.image_break_token)] + self.image_end_token + part
            expanded.append(out)
        enc = self.tokenizer(expanded, return_tensors=return_tensors, padding=kwargs.get("padding", True))
        return BatchFeature({**enc, **dict(pix)})


def llama4_single_tile_image_processor(tile_size: int) -> Any:
    """An image processor for Llama 4 that needs no torchvision: each image becomes one tile.

    transformers' ``Llama4ImageProcessor`` has only a torchvision backend. This one resizes an
    image to one ``tile_size`` square tile and normalises it as Llama 4 does (mean = std = 0.5),
    which is what the stock processor returns for an image with ``max_patches=1``; it reports
    ``aspect_ratios`` of (1, 1) so ``Llama4Processor`` writes the matching image tokens.
    """
    import torch
    from transformers import SiglipImageProcessorPil

    class Llama4SingleTileImageProcessor(SiglipImageProcessorPil):
        def preprocess(self, images: Any, **kwargs: Any) -> Any:
            kwargs.pop("max_patches", None)
            kwargs.pop("resize_to_max_canvas", None)
            out = super().preprocess(images, **kwargs)
            out["aspect_ratios"] = torch.ones(len(out["pixel_values"]), 2, dtype=torch.long)
            return out

    return Llama4SingleTileImageProcessor(size={"height": tile_size, "width": tile_size}, image_mean=[0.5] * 3,
                                          image_std=[0.5] * 3)
