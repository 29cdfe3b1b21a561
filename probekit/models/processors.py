"""Loading a checkpoint's processor, with the one fallback a torchvision-free install needs."""

from __future__ import annotations

import functools
import os
from typing import Any

__all__ = ["load_processor"]


def _torchvision_available() -> bool:
    from transformers.utils import is_torchvision_available

    return bool(is_torchvision_available())


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
