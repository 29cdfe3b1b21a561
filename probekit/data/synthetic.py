"""A synthetic visual question task (shapes, colours, counts) that a tiny VLM learns on CPU.

Each sample is one image with 1-3 shapes of one colour and kind on a dark background, a
question and a one-word answer. The task is what a model is fine-tuned on; anything else
written into the images (a watermark) is task-irrelevant by construction.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

from PIL import Image, ImageDraw

from ..errors import InputError, check_int

__all__ = ["COLOURS", "SHAPES", "COUNTS", "QUESTIONS", "Sample", "make_task", "draw_scene", "draw_shape"]

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 220, 40)}
SHAPES = ("circle", "square", "triangle")
COUNTS = ("one", "two", "three")
QUESTIONS = {
    "colour": "What colour is the shape?",
    "shape": "What shape is it?",
    "count": "How many shapes are there?",
}


@dataclass
class Sample:
    """One question about one image. ``meta`` holds the scene (and any watermark applied later)."""

    image: Image.Image
    question: str
    answer: str
    kind: str
    meta: dict = field(default_factory=dict)


def draw_scene(colour: str, shape: str, count: int, size: int, rng: random.Random) -> Image.Image:
    """Draw ``count`` shapes of one colour and kind at random, non-overlapping cells."""
    bg = tuple(rng.randrange(10, 50) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    cells = 3
    cell = size / cells
    spots = rng.sample([(i, j) for i in range(cells) for j in range(cells)], count)
    r = cell * 0.38
    for i, j in spots:
        cx = (i + 0.5) * cell + rng.uniform(-0.08, 0.08) * cell
        cy = (j + 0.5) * cell + rng.uniform(-0.08, 0.08) * cell
        draw_shape(d, shape, cx, cy, r, COLOURS[colour])
    return img


def draw_shape(d: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple) -> None:
    """A filled circle, square or (any other name) upward triangle of half-size ``r`` centred at (cx, cy)."""
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        d.rectangle(box, fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)


def make_task(n: int, size: int = 32, seed: int = 0, kinds: Sequence[str] = ("colour", "shape", "count")) -> list[Sample]:
    """``n`` samples of the synthetic task, deterministic from ``seed``.

    Example:
        >>> s = make_task(3, seed=0)
        >>> [x.kind for x in s], s[0].answer in COLOURS or s[0].answer in SHAPES or s[0].answer in COUNTS
        (['colour', 'shape', 'count'], True)
    """
    n = check_int(n, "n", low=1, fix="pass the number of samples, e.g. n=100")
    bad = [k for k in kinds if k not in QUESTIONS]
    if bad or not kinds:
        raise InputError(f"unknown question kinds {bad or kinds}", fix=f"choose from {sorted(QUESTIONS)}")
    if size < 16:
        raise InputError(f"image size {size} is too small to draw shapes", fix="use size >= 16")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        colour, shape, count = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.randrange(1, 4)
        kind = kinds[i % len(kinds)]
        answer = {"colour": colour, "shape": shape, "count": COUNTS[count - 1]}[kind]
        img = draw_scene(colour, shape, count, size, rng)
        out.append(Sample(img, QUESTIONS[kind], answer, kind, {"colour": colour, "shape": shape, "count": count}))
    return out
