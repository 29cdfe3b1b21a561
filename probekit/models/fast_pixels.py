"""Pixel values of a batch of RGB images, computed as a stock PIL image processor computes them, in one pass.

transformers' PIL image processors (``CLIPImageProcessorPil``, ``SiglipImageProcessorPil``,
``BlipImageProcessorPil``, ...) handle one image at a time: numpy conversion, PIL resize, crop,
a float64 rescale and a float32 normalise per image, with validation around every call. For
images that need no resize (the demo's 96x96 images) that is most of the processor's time.

:class:`FastPixels` does the same steps with the processor's own numbers: the resize target
from transformers' own size function and PIL's resize with the same filter (skipped when the
target is the image's size, where PIL returns a copy), the same crop offsets, and the rescale
and normalise, which act on each 8-bit value alone, as a 256-entry table per channel computed
by the processor's own ``rescale`` and ``normalize`` methods, so every value is the one the
processor computes. It recognises only processors that run transformers' plain PIL pipeline
(no method of it overridden, no padding, a size rule it reproduces) and only RGB PIL images;
for anything else it returns None and the caller uses the stock processor, which stays the
reference (``tests/test_fast_inputs.py`` checks ``torch.equal`` against it).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["FastPixels"]

# the methods of transformers' PIL pipeline; a processor overriding any of them is not recognised
_PIPELINE = ("__call__", "preprocess", "_preprocess", "_preprocess_image_like_inputs", "_prepare_image_like_inputs",
             "_prepare_images_structure", "process_image", "convert_to_rgb", "fetch_images", "resize", "center_crop",
             "rescale", "normalize", "_standardize_kwargs", "_validate_preprocess_kwargs")


class FastPixels:
    """``pixel_values`` of RGB PIL images, bit for bit what ``image_processor(images, return_tensors="pt")`` returns.

    Build with :meth:`of` (None for a processor it does not reproduce); calling it returns None
    for a batch it does not handle (an image that is not an RGB PIL image without transparency,
    a crop larger than the resized image, images of different output sizes).
    """

    def __init__(self, ip: Any):
        self.do_resize, self.do_crop = bool(ip.do_resize), bool(ip.do_center_crop)
        self.resample = ip.resample
        size, crop = ip.size, ip.crop_size
        self.shortest = self.square = None
        if self.do_resize:
            if size.shortest_edge and not size.longest_edge:
                self.shortest = int(size.shortest_edge)
            elif size.height and size.width and not size.shortest_edge and not (size.max_height and size.max_width):
                self.square = (int(size.height), int(size.width))
            else:
                raise ValueError(f"size rule {dict(size)} is not reproduced")
            if not isinstance(self.resample, int):  # PILImageResampling is an int enum
                raise ValueError(f"resample {self.resample!r} is not a PIL filter")
        self.crop = (int(crop.height), int(crop.width)) if self.do_crop else None
        if not (ip.do_rescale or ip.do_normalize):
            raise ValueError("neither rescale nor normalise: the stock output keeps 8-bit values")
        # every 8-bit value of each channel through the processor's own rescale and normalise
        # (what PilBackend._preprocess applies to each image, value by value)
        table = np.tile(np.arange(256, dtype=np.uint8), (3, 1))[:, None, :]  # a [3, 1, 256] channels-first image
        if ip.do_rescale:
            table = ip.rescale(table, ip.rescale_factor)
        if ip.do_normalize:
            table = ip.normalize(table, _tuple(ip.image_mean), _tuple(ip.image_std))
        if table.shape != (3, 1, 256) or table.dtype != np.float32:
            raise ValueError(f"rescale/normalise gave {table.dtype} {table.shape}")
        self._table = np.ascontiguousarray(table.reshape(3, 256))
        self._targets: dict[tuple[int, int], tuple[int, int]] = {}

    @classmethod
    def of(cls, image_processor: Any) -> "FastPixels | None":
        """The fast path for ``image_processor``, or None when it does not reproduce it exactly."""
        try:
            from transformers.image_processing_backends import PilBackend
        except ImportError:
            return None
        if not isinstance(image_processor, PilBackend):
            return None
        kind = type(image_processor)
        if any(getattr(kind, m, None) is not getattr(PilBackend, m, None) for m in _PIPELINE):
            return None
        if getattr(image_processor, "do_pad", None):
            return None
        try:
            return cls(image_processor)
        except (AttributeError, TypeError, ValueError):
            return None

    def _target(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the resize: transformers' own size rule for a shortest edge."""
        if self.square is not None:
            return self.square
        hit = self._targets.get((height, width))
        if hit is None:
            from transformers.image_transforms import get_resize_output_image_size

            shape_only = np.broadcast_to(np.uint8(0), (3, height, width))  # the rule reads only the shape
            h, w = get_resize_output_image_size(shape_only, size=self.shortest, default_to_square=False,
                                                input_data_format="channels_first")
            hit = self._targets[(height, width)] = (int(h), int(w))
        return hit

    def __call__(self, images: Sequence[Any]) -> torch.Tensor | None:
        """``[b, 3, h, w]`` float32 pixel values, or None for a batch the fast path does not handle."""
        from PIL import Image

        crops = []
        for im in images:
            if not isinstance(im, Image.Image) or im.mode != "RGB" or "transparency" in im.info:
                return None  # the stock processor composites transparency on white, converts other modes
            if self.do_resize:
                h, w = self._target(im.height, im.width)
                if (w, h) != im.size:  # at its own size PIL's resize returns a copy of the pixels
                    im = im.resize((w, h), resample=self.resample)
            arr = np.asarray(im)
            if self.crop is not None:
                ch, cw = self.crop
                top, left = (arr.shape[0] - ch) // 2, (arr.shape[1] - cw) // 2
                if top < 0 or left < 0:
                    return None  # the stock crop pads a smaller image
                arr = arr[top:top + ch, left:left + cw]
            crops.append(arr)
        if not crops or len({a.shape for a in crops}) != 1:
            return None
        values = np.stack(crops)  # [b, h, w, 3] uint8
        out = np.empty((values.shape[0], 3, *values.shape[1:3]), dtype=np.float32)
        for c in range(3):  # every value looked up in its channel's table (uint8 indices are always in range)
            np.take(self._table[c], values[..., c], out=out[:, c], mode="clip")
        return torch.from_numpy(out)


def _tuple(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v
