"""CLEVR-like 2-D scenes with one-word yes/no questions about one object (cf. Apple, arXiv 2604.09885).

Each scene is a grey floor with 3 to ``grid**2`` objects (at most 10) on a grid of cells (3x3 by
default, so that each object fills one 20-pixel patch of a 60-pixel image). Every object has a colour,
a shape (circle, square, triangle), a size (small, large) and a material drawn as a texture
(``rubber``: flat fill; ``metal``: dark body with a bright specular highlight). The *target* is
the object in the centre cell; the question asks only about its colour ("Is the centre object
red?"), so everything else in the scene (the target's size, material and shape, the background
objects, whether the image was blurred or noised) is unasked by construction. ``random`` is a
coin flip per image drawn from its own generator: it is not in the image (negative control).

Everything is deterministic from ``seed``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import InputError, check_int, check_number
from .synthetic import draw_shape

__all__ = ["SCENE_COLOURS", "SCENE_SHAPES", "ATTRIBUTES", "Scene", "make_scenes", "draw_object"]

SCENE_COLOURS = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (45, 75, 215),
                 "yellow": (225, 205, 40), "purple": (140, 55, 175), "cyan": (40, 190, 200)}
SCENE_SHAPES = ("circle", "square", "triangle")
CORRUPTIONS = ("none", "blur", "noise")
ATTRIBUTES = ("target_size", "target_material", "target_shape", "many_objects", "corrupted", "random")
"""Unasked labels of every scene (``Scene.meta``); ``random`` is the negative control."""



@dataclass
class Scene:
    """One scene and its question. ``answer`` is ``"Yes"`` or ``"No"``; ``meta`` holds every label."""

    image: Image.Image
    question: str
    answer: str
    kind: str = "yesno"
    meta: dict = field(default_factory=dict)


def draw_object(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, shape: str, colour: tuple, material: str) -> None:
    """Draw one object; metal is a darker body with a highlight (the "shiny" texture a probe may see)."""
    body = colour if material == "rubber" else tuple(int(c * 0.55) for c in colour)

    def fig(rr: float, x: float, y: float, fill: tuple) -> None:
        draw_shape(d, shape, x, y, rr, fill)

    fig(r, cx, cy, body)
    if material == "metal":
        shine = tuple(int(0.35 * c + 0.65 * 255) for c in colour)
        d.ellipse([cx - 0.55 * r, cy - 0.15 * r, cx - 0.05 * r, cy + 0.35 * r] if shape == "triangle"
                  else [cx - 0.6 * r, cy - 0.6 * r, cx - 0.05 * r, cy - 0.05 * r], fill=shine)


def _corrupt(img: Image.Image, kind: str, rng: random.Random) -> Image.Image:
    if kind == "blur":
        return img.filter(ImageFilter.GaussianBlur(radius=1.3))
    if kind == "noise":
        a = np.asarray(img, dtype=np.float32)
        noise = np.random.default_rng(rng.randrange(2**32)).normal(0.0, 28.0, a.shape)
        return Image.fromarray(np.clip(a + noise, 0, 255).astype(np.uint8))
    return img


def make_scenes(n: int, size: int = 60, seed: int = 0, p_corrupt: float = 0.5, grid: int = 3,
                colours: tuple[str, ...] = ("red", "blue"),
                background: tuple[str, ...] = ("green", "yellow", "purple", "cyan"),
                ask: str | None = None) -> list[Scene]:
    """``n`` scenes with balanced Yes/No answers, deterministic from ``seed``.

    The target's colour (the one asked about) is one of ``colours``; background objects take
    ``background`` colours. With the two sets disjoint (the default) the answer can be read
    from which target colour is present anywhere, which a tiny model learns in a minute on a
    CPU; pass overlapping sets for the harder task where the model must find the centre.
    ``ask`` fixes the colour every question asks about (the easiest task: the answer no longer
    depends on the question's words).

    Example:
        >>> s = make_scenes(4, seed=0)
        >>> s[0].question.startswith("Is the centre object"), s[0].answer in ("Yes", "No")
        (True, True)
        >>> 3 <= s[0].meta["n_objects"] <= 9, sorted(s[0].meta)[:3]
        (True, ['answer_colour', 'corrupted', 'corruption'])
    """
    n = check_int(n, "n", low=1, fix="e.g. make_scenes(400)")
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 2 or grid % 2 == 0:
        raise InputError(f"grid must be an odd int >= 3 (the target sits in the centre cell), got {grid!r}", fix="e.g. grid=3")
    if isinstance(size, bool) or not isinstance(size, int) or size < 12 * grid:
        raise InputError(f"image size {size!r} is too small for a {grid}x{grid} grid of objects", fix=f"use size >= {12 * grid}")
    check_number(p_corrupt, "p_corrupt", low=0, high=1, example=0.5)
    bad = [c for c in (*colours, *background) if c not in SCENE_COLOURS]
    if bad or len(colours) < 2 or not background:
        raise InputError(f"colours must be >= 2 and background >= 1 of {sorted(SCENE_COLOURS)}, "
                         f"got {list(colours)} and {list(background)}", fix="e.g. colours=('red', 'blue')")
    if ask is not None and ask not in colours:
        raise InputError(f"ask={ask!r} is not one of the target colours {list(colours)}", fix=f"e.g. ask={colours[0]!r}")
    rng = random.Random(seed)
    coin = random.Random(f"{seed}-random")  # the negative control never touches the scene's generator
    cell = size / grid
    centre = (grid // 2, grid // 2)
    others = [(i, j) for i in range(grid) for j in range(grid) if (i, j) != centre]
    most = min(10, grid * grid)
    out = []
    for k in range(n):
        floor = rng.randrange(95, 135)
        img = Image.new("RGB", (size, size), (floor, floor, floor + 5))
        d = ImageDraw.Draw(img)
        n_obj = rng.randrange(3, most + 1)
        yes = k % 2 == 0
        objs = []
        for i, spot in enumerate([centre] + rng.sample(others, n_obj - 1)):
            obj = {"colour": rng.choice(colours if i == 0 else background), "shape": rng.choice(SCENE_SHAPES),
                   "size": rng.choice(("small", "large")), "material": rng.choice(("rubber", "metal")), "cell": spot}
            if i == 0 and ask is not None:  # the asked colour is the target's on Yes scenes only
                obj["colour"] = ask if yes else rng.choice([c for c in colours if c != ask])
            r = cell * (0.24 if obj["size"] == "small" else 0.42)
            cx = (spot[0] + 0.5) * cell + rng.uniform(-0.06, 0.06) * cell
            cy = (spot[1] + 0.5) * cell + rng.uniform(-0.06, 0.06) * cell
            draw_object(d, cx, cy, r, obj["shape"], SCENE_COLOURS[obj["colour"]], obj["material"])
            objs.append(obj)
        target = objs[0]
        corruption = "none" if rng.random() >= p_corrupt else rng.choice(CORRUPTIONS[1:])
        img = _corrupt(img, corruption, rng)
        if ask is not None:
            asked = ask
        else:
            asked = target["colour"] if yes else rng.choice([c for c in colours if c != target["colour"]])
        meta = {"target_colour": target["colour"], "target_shape": target["shape"], "target_size": target["size"],
                "target_material": target["material"], "n_objects": n_obj, "many_objects": n_obj > (3 + most) / 2,
                "corruption": corruption, "corrupted": corruption != "none", "answer_colour": asked,
                "random": coin.random() < 0.5, "objects": objs}
        out.append(Scene(img, f"Is the centre object {asked}?", "Yes" if yes else "No", meta=meta))
    return out
