"""Images from paths, PIL images, numpy arrays or tensors, checked before any forward pass."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import ImageError

__all__ = ["check_images", "CheckedImages", "to_pil", "decode", "images_digest", "image_hashes", "pixel_hash"]

ImageLike = Any  # PIL.Image.Image | str | os.PathLike | np.ndarray | torch.Tensor


# modes whose pixels convert("RGB") clips to 8 bits without scaling: a 16-bit scan would come out white
_WIDE_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N", "I;32", "I;32B", "I;32L")


def _check_pil(im: Image.Image, what: str) -> None:
    if im.width == 0 or im.height == 0:
        raise ImageError(f"{what} is {im.width}x{im.height} pixels (empty)", fix="remove it or pass the real image")
    if im.mode in _WIDE_MODES:
        raise ImageError(f"{what} has {im.mode} pixels (more than 8 bits per channel), which convert to RGB "
                         "clipped, not scaled",
                         fix="scale it to 8 bits first, e.g. Image.fromarray((np.asarray(im) / 257).astype(np.uint8))")


def _check_file(p: Path, i: int) -> None:
    """Check a file without decoding its pixels where the format allows (the scan decodes it once, later).

    The header gives size and mode (and PIL's decompression-bomb check); a PNG's chunk structure and
    checksums are read by ``verify()`` (a cut file has no IEND); a JPEG must end with its EOI marker,
    which ``verify()`` does not look for. Anything else, or a JPEG with bytes after its end marker,
    is decoded here as before, so nothing is let through that the old full decode refused.
    """
    if not p.is_file():
        raise ImageError(f"image {i}: file {str(p)!r} does not exist", fix="check the path")
    try:
        with Image.open(p) as im:
            _check_pil(im, f"image {i} ({str(p)!r})")
            if im.format == "PNG":
                im.verify()
            elif im.format != "JPEG" or not _ends_with_eoi(p):
                im.load()  # decodes: the only check that notices a truncated GIF, BMP, ... or JPEG
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image {i}: file {str(p)!r} declares more pixels than PIL will decode ({exc})",
                         fix="downscale the file, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"image {i}: file {str(p)!r} is not a readable image ({exc})",
                         fix="remove or replace that file") from exc


def _ends_with_eoi(p: Path) -> bool:
    with open(p, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < 4:
            return False
        f.seek(-2, os.SEEK_END)
        return f.read(2) == b"\xff\xd9"


def _check_one(x: ImageLike, i: int) -> None:
    if isinstance(x, Image.Image):
        try:
            x.load()  # a lazily opened file may be truncated; find out now, not mid-collection
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"image {i} (a PIL image) cannot be decoded ({exc})",
                             fix="re-open or replace that image file") from exc
        _check_pil(x, f"image {i}")
        return
    if isinstance(x, (str, os.PathLike)):
        _check_file(Path(x), i)
        return
    if isinstance(x, (np.ndarray, torch.Tensor)):
        shape = tuple(x.shape)
        ok = len(shape) == 2 or (len(shape) == 3 and (shape[-1] in (1, 3, 4) or shape[0] in (1, 3, 4)))
        if not ok:
            raise ImageError(f"image {i}: array of shape {shape} is not an image",
                             fix="pass HxW, HxWxC or CxHxW (C in 1, 3, 4) arrays, one image per item")
        if isinstance(x, np.ndarray) and x.dtype.kind not in "buif":
            raise ImageError(f"image {i}: array of dtype {x.dtype} holds no pixel values",
                             fix="pass numeric arrays (uint8 0..255 or float 0..1)")
        if 0 in shape:
            raise ImageError(f"image {i}: array of shape {shape} has no pixels", fix="remove it or pass the real image")
        arr = x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ImageError(f"image {i}: array holds NaN or inf", fix="clean the pixel values")
        if arr.max() > 255:
            raise ImageError(f"image {i}: pixel values reach {arr.max():g}, above 255 (a 16-bit image?)",
                             fix="scale to uint8 0..255 or float 0..1")
        if arr.min() < 0:  # clipping them to 0 would feed the model another image than the one meant
            raise ImageError(f"image {i}: pixel values go down to {arr.min():g}, below 0 (already normalised "
                             f"with a mean and std?)",
                             fix="pass the raw image (uint8 0..255 or float 0..1); the model's processor normalises it")
        return
    raise ImageError(f"image {i} has type {type(x).__name__}, which probekit cannot read",
                     fix="pass PIL images, file paths, numpy arrays (HxWxC) or tensors (CxHxW)")


class CheckedImages(list):
    """A list of images that :func:`check_images` has validated: checking it again returns it as is.

    ``scan`` checks its images once (before any model work) and hands this list to ``collect``,
    which would otherwise open every file a second time.
    """


def check_images(images: Any) -> CheckedImages:
    """Validate a sequence of images up front; returns it as a list (files are not decoded where the
    format allows a structural check, see :func:`_check_file`)."""
    if isinstance(images, CheckedImages):
        return images
    if isinstance(images, (str, os.PathLike, Image.Image)) or (isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 3):
        raise ImageError("images must be a sequence of images, got a single image",
                         fix="wrap it in a list: [image]")
    if isinstance(images, Mapping):
        raise ImageError(f"images must be a sequence of images, got a {type(images).__name__}",
                         fix="pass a list, e.g. list(d.values()) for a dict of images")
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim != 4:
            raise ImageError(f"an image batch array must be 4-D, got shape {tuple(images.shape)}",
                             fix="pass [n, C, H, W] / [n, H, W, C] arrays, or a list of images")
        images = list(images)
    try:
        items = list(images)
    except TypeError:
        raise ImageError(f"images must be a list of images, got {type(images).__name__}",
                         fix="pass a list of PIL images, paths, arrays or tensors") from None
    if not items:
        raise ImageError("the image list is empty", fix="pass at least one image")
    for i, x in enumerate(items):
        _check_one(x, i)
    return CheckedImages(items)


def to_pil(x: ImageLike) -> Image.Image:
    """Decode one (checked) image to an RGB PIL image."""
    if isinstance(x, Image.Image):
        return x.convert("RGB") if x.mode != "RGB" else x
    if isinstance(x, (str, os.PathLike)):
        with Image.open(x) as im:
            return im.convert("RGB")
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.transpose(arr, (1, 2, 0))  # CHW -> HWC
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        if arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return Image.fromarray(arr).convert("RGB")


def decode(x: ImageLike, i: int) -> Image.Image:
    """:func:`to_pil` for image ``i`` of a checked list; a file that passed the structural check but
    does not decode (damaged compressed data) raises an :class:`ImageError` naming it."""
    try:
        return to_pil(x)
    except (OSError, SyntaxError, ValueError) as exc:
        what = f"file {os.fspath(x)!r}" if isinstance(x, (str, os.PathLike)) else "it"
        raise ImageError(f"image {i}: {what} cannot be decoded ({exc})", fix="remove or replace that file") from exc


def pixel_hash(im: Image.Image) -> str:
    """Content hash of one decoded RGB image (see :func:`image_hashes`)."""
    h = hashlib.sha256(f"{im.size}".encode())
    h.update(im.tobytes())
    return h.hexdigest()[:16]


def images_digest(images: Sequence[ImageLike]) -> str:
    """A hash that changes when the image list changes (cheap for paths: name, size, mtime)."""
    h = hashlib.sha256()
    for x in images:
        if isinstance(x, (str, os.PathLike)):
            st = os.stat(x)
            h.update(f"{os.fspath(x)}|{st.st_size}|{st.st_mtime_ns}".encode())
        elif isinstance(x, Image.Image):
            h.update(f"{x.size}{x.mode}".encode())
            h.update(x.tobytes())
        else:
            arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
            h.update(str(arr.shape).encode())
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


def image_hashes(images: Sequence[ImageLike]) -> list[str]:
    """One content hash per image: sha256 over the decoded RGB pixels and the size (16 hex digits).

    Unlike :func:`images_digest` it looks at pixels, so the same picture given as a path, a PIL
    image or an array hashes alike; the steering layer keeps these per image to count how many
    evaluation images an intervention was fitted on.

    Example:
        >>> import numpy as np
        >>> a = np.zeros((4, 4, 3), dtype=np.uint8)
        >>> h = image_hashes([a, a.copy(), a + 1])
        >>> h[0] == h[1], h[0] == h[2], len(h[0])
        (True, False, 16)
    """
    return [pixel_hash(to_pil(x)) for x in images]
