"""Loading a checkpoint's processor, with the one fallback a torchvision-free install needs."""

from __future__ import annotations

import functools
import inspect
import json
import os
from pathlib import Path
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

    # ProcessorMixin reads the sub-processors off inspect.signature(__init__) and the settings it
    # accepts on load (image_seq_len, num_image_tokens, ...) off __init__.__code__.co_varnames, so
    # the subclass needs a real function with the stock parameters less video_processor.
    sig = inspect.signature(cls.__init__)
    names = [n for n, p in sig.parameters.items() if n not in ("self", "video_processor")
             and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    defaults = {n: None if sig.parameters[n].default is inspect.Parameter.empty else sig.parameters[n].default
                for n in names}
    src = (f"def __init__(self, {''.join(f'{n}=_d[{n!r}], ' for n in names)}**kwargs):\n"
           f"    kwargs.pop('video_processor', None)\n"
           f"    _cls.__init__(self, video_processor=None, {''.join(f'{n}={n}, ' for n in names)}**kwargs)\n")
    scope: dict[str, Any] = {"_d": defaults, "_cls": cls}
    exec(src, scope)  # noqa: S102 - source built from parameter names only
    __init__ = scope["__init__"]

    def save_pretrained(self: Any, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        # Saved under the stock class name, so that AutoProcessor (and load_processor's
        # fallback) knows what the files are; an unknown name made AutoProcessor return the
        # bare tokenizer, silently dropping the images.
        out = cls.save_pretrained(self, save_directory, *args, **kwargs)
        _rename_processor_class(Path(save_directory), f"ImageOnly{cls.__name__}", cls.__name__)
        return out

    from transformers.processing_utils import ProcessorMixin

    stock = cls.get_attributes()

    class _NoVideoMixin(ProcessorMixin):
        # Sits between the stock class and ProcessorMixin in the MRO: the stock __init__ hands its
        # sub-processors on positionally in its own order (video first for LLaVA-NeXT-Video), so
        # they are named by that order here and the empty video processor is dropped.
        def __init__(self: Any, *args: Any, **kwargs: Any):
            named = dict(zip(stock, args))
            named.pop("video_processor", None)
            kwargs.pop("video_processor", None)
            ProcessorMixin.__init__(self, *args[len(stock):], **named, **kwargs)

    return type(f"ImageOnly{cls.__name__}", (cls, _NoVideoMixin), {"__init__": __init__, "save_pretrained": save_pretrained,
                                                                   "__module__": __name__})


def _rename_processor_class(directory: Path, old: str, new: str) -> None:
    for f in directory.glob("*.json"):
        cfg = json.loads(f.read_text())
        if isinstance(cfg, dict) and cfg.get("processor_class") == old:
            cfg["processor_class"] = new
            f.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _image_only_qwen2_vl_class() -> type:
    """``image_only(Qwen2VLProcessor)`` (kept for the tiny Qwen2-VL builder)."""
    from transformers import Qwen2VLProcessor

    return image_only(Qwen2VLProcessor)


def load_processor(path: str | os.PathLike[str]) -> Any:
    """``AutoProcessor.from_pretrained(path)``, with the fallbacks a torchvision-free install needs.

    transformers 5.x cannot build several processors without torchvision, for real and tiny
    checkpoints alike: those with a video processor (Qwen2/2.5/3-VL, LLaVA-OneVision, SmolVLM,
    InternVL, GLM-4V) and ``PixtralProcessor`` (Mistral 3). In that case only, this returns
    :func:`image_only` of the stock class, or :func:`pixtral_processor`'s image-only
    equivalent, loaded from the same files; they process images and text exactly like the
    stock classes. Llama 4's image processor has no torchvision-free version (the in-memory
    :func:`llama4_single_tile_image_processor` serves tiny builds only), so a Llama 4
    checkpoint still needs torchvision.
    """
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path)
    except (ImportError, OSError, ValueError):
        # OSError: a checkpoint saved by an image-only processor has no video-processor files;
        # ValueError: an image processor with only a torchvision backend (Llama 4)
        if _torchvision_available():
            raise
        fallback = _image_only_fallback(Path(path))
        if fallback is None:
            raise
        return fallback


def _processor_class_name(directory: Path) -> str | None:
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        f = directory / name
        if f.is_file():
            cls = json.loads(f.read_text()).get("processor_class")
            if cls:
                return str(cls)
    return None


def _image_only_fallback(directory: Path) -> Any:
    import transformers

    name = _processor_class_name(directory) if directory.is_dir() else None
    if name == "PixtralProcessor":
        cfg_file = directory / "processor_config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        tok = transformers.AutoTokenizer.from_pretrained(directory)
        return pixtral_processor(transformers.PixtralImageProcessorPil.from_pretrained(directory), tok,
                                 patch_size=int(cfg.get("patch_size", 16)),
                                 spatial_merge_size=int(cfg.get("spatial_merge_size", 1)),
                                 chat_template=getattr(tok, "chat_template", None))
    if name == "Llama4Processor":
        cfg_file, ip_file = directory / "processor_config.json", directory / "preprocessor_config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        ip = json.loads(ip_file.read_text()) if ip_file.is_file() else cfg.get("image_processor", {})
        if ip.get("max_patches") != 1:  # real checkpoints tile (max_patches 16): only the stock processor does that
            return None
        keep = {k: cfg[k] for k in ("patch_size", "pixel_shuffle_ratio") if k in cfg}
        return transformers.Llama4Processor(image_processor=llama4_single_tile_image_processor(int(ip["size"]["height"])),
                                            tokenizer=transformers.AutoTokenizer.from_pretrained(directory), **keep)
    cls = getattr(transformers, name, None) if name else None
    if cls is None or "video_processor" not in inspect.signature(cls.__init__).parameters:
        return None
    return image_only(cls).from_pretrained(directory)


def pixtral_processor(image_processor: Any, tokenizer: Any, patch_size: int = 16, spatial_merge_size: int = 1,
                      chat_template: Any = None) -> Any:
    """``PixtralProcessor`` (Mistral 3, Pixtral), or where torchvision is missing an equivalent image-only one.

    transformers guards the whole ``PixtralProcessor`` class behind torchvision although the
    PIL image processor (``PixtralImageProcessorPil``) does the pixel work. The fallback
    expands every ``[IMG]`` the way the stock class does (one ``[IMG]`` per merged patch, an
    ``[IMG_BREAK]`` after each row, ``[IMG_END]`` instead of the last break) and tokenizes.

    Example:
        >>> from probekit.tiny import zoo
        >>> hf, proc = zoo.build("mistral3")
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

    def save_pretrained(self, directory: str | os.PathLike[str], **kwargs: Any) -> None:
        """Write the files a stock ``PixtralProcessor`` checkpoint has (image processor, tokenizer, processor config)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.image_processor.save_pretrained(d)
        self.tokenizer.save_pretrained(d)
        cfg = {"processor_class": "PixtralProcessor", "patch_size": self.patch_size,
               "spatial_merge_size": self.spatial_merge_size, "image_token": self.image_token,
               "image_break_token": self.image_break_token, "image_end_token": self.image_end_token}
        (d / "processor_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        _rename_processor_class(d, "_ImageOnlyPixtralProcessor", "PixtralProcessor")

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

        def to_dict(self) -> dict[str, Any]:
            # saved as what it stands in for: Llama 4's processor with one tile per image
            return {**super().to_dict(), "image_processor_type": "Llama4ImageProcessor", "max_patches": 1,
                    "resize_to_max_canvas": False}

    return Llama4SingleTileImageProcessor(size={"height": tile_size, "width": tile_size}, image_mean=[0.5] * 3,
                                          image_std=[0.5] * 3)
