"""Rendered text and shape scenes the reader organism is trained and tested on.

Text is drawn in PIL's bitmap default font (6 x 11 px per character, monospace), so an
8-character string is 48 px wide and fits a 64 px image. Strings use :data:`CHARS`
(lower-case letters and digits); the tokenizer of the reader has one token per character.

Example:
    >>> import random
    >>> im = text_image("ab12", random.Random(0))
    >>> im.size
    (64, 64)
"""

from __future__ import annotations

import functools
import random

from PIL import Image, ImageDraw, ImageFont

from ..data.synthetic import COLOURS, SHAPES, draw_shape

__all__ = ["CHARS", "SIZE", "random_string", "draw_text", "text_image", "scene"]

CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
SIZE = 64
CHAR_W, CHAR_H = 6, 11


@functools.lru_cache(maxsize=1)
def font() -> ImageFont.ImageFont:
    # The bitmap font ships inside Pillow: identical pixels on every machine.
    return ImageFont.load_default_imagefont()


def random_string(rng: random.Random, lo: int = 4, hi: int = 8) -> str:
    return "".join(rng.choice(CHARS) for _ in range(rng.randint(lo, hi)))


def draw_text(img: Image.Image, text: str, rng: random.Random, opacity: float = 1.0,
              colour: tuple[int, int, int] = (255, 255, 255), where: str | None = None,
              grid: int | None = None, place: str | None = None) -> tuple[Image.Image, str]:
    """Return a copy of ``img`` with ``text`` at a random position, and ``"top"``/``"bottom"``.

    ``opacity`` in (0, 1] is the alpha of the text layer (Ju et al. use 0.5). ``grid``: draw
    at a random position on a ``grid``-pixel lattice (with ``grid`` = 6 = the character width
    and the ViT patch size, each character fills one column of patches). ``place="banner"``:
    always the top-left corner (x = y = 0), the layout the reader organism learned to read.
    """
    w, h = img.size
    tw, th = CHAR_W * len(text), CHAR_H
    if place not in (None, "banner"):
        raise ValueError(f"place must be None or 'banner', got {place!r}")
    if place == "banner":
        half, x, y = "top", 0, 0
    elif grid:
        half = rng.choice(("top", "bottom")) if where is None else where
        x = grid * rng.randint(0, max(0, w - tw) // grid)
        rows = range(0, h // 2 - th + 1, grid) if half == "top" else range(h // 2, h - th + 1, grid)
        y = rng.choice(list(rows))
    else:
        x = rng.randint(0, max(0, w - tw))
        half = rng.choice(("top", "bottom")) if where is None else where
        y = rng.randint(0, h // 2 - th) if half == "top" else rng.randint(h // 2, h - th)
    base = img.convert("RGBA")
    layer = Image.new("RGBA", base.size, (*colour, 0))
    ImageDraw.Draw(layer).text((x, y), text, fill=(*colour, int(round(255 * opacity))), font=font())
    return Image.alpha_composite(base, layer).convert("RGB"), half


def scene(rng: random.Random, size: int = SIZE) -> tuple[Image.Image, dict]:
    """One shape of a random colour and kind at a random place on a dark background."""
    bg = tuple(rng.randrange(0, 40) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    r = rng.uniform(0.14, 0.22) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    draw_shape(ImageDraw.Draw(img), shape, cx, cy, r, COLOURS[colour])
    return img, {"colour": colour, "shape": shape, "side": "left" if cx < size / 2 else "right"}


def text_image(text: str, rng: random.Random, size: int = SIZE, opacity: float = 1.0,
               grid: int | None = None, place: str | None = None) -> Image.Image:
    """``text`` on a dark background, or over a shape scene half of the time."""
    if rng.random() < 0.5:
        img = Image.new("RGB", (size, size), tuple(rng.randrange(0, 60) for _ in range(3)))
    else:
        img, _ = scene(rng, size)
    return draw_text(img, text, rng, opacity, grid=grid, place=place)[0]
