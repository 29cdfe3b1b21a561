"""Task-irrelevant private content written into images (Ju et al., ICML 2025, in miniature).

Fake user profiles (username, 10-digit user id, gender, age, capture time, capture location)
come from a seed in disjoint pools (U1: seen in fine-tuning, U2: unseen). ``mode="text"`` renders
a profile as 6 ``key: value`` lines in PIL's default font, white at alpha 128 on a transparent
layer, at a uniformly random position that keeps the block inside the image (the paper's
setting). ``mode="username"`` writes only the username line (fits images of about 96 px).
Tiny images (32-64 px) cannot hold readable text, so ``mode="pattern"`` draws a small binary
pattern derived from the profile instead, also white at 50% opacity at a random position.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from ..errors import InputError, check_int

__all__ = ["Profile", "make_profiles", "render", "apply_watermarks"]

_FIRST = ("alice", "bruno", "chen", "dara", "emil", "fatima", "gus", "hana", "ivan", "jia", "kofi", "lena",
          "mateo", "nia", "omar", "priya", "quinn", "rosa", "sven", "tariq", "uma", "viktor", "wen", "yusuf", "zoe")
_PLACES = ("Lisbon", "Osaka", "Nairobi", "Quito", "Oslo", "Hanoi", "Austin", "Lyon", "Perth", "Accra", "Riga", "Cusco")


@dataclass(frozen=True)
class Profile:
    """A fake user profile; ``pid`` is unique across pools."""

    pid: int
    pool: int
    username: str
    user_id: str
    gender: str
    age: int
    capture_time: str
    capture_location: str

    def lines(self) -> list[str]:
        return [f"username: {self.username}", f"user id: {self.user_id}", f"gender: {self.gender}",
                f"age: {self.age}", f"time: {self.capture_time}", f"location: {self.capture_location}"]

    def pattern(self, k: int = 4) -> list[list[int]]:
        """A k x k binary pattern derived from the profile (never all-zero)."""
        bits = int.from_bytes(hashlib.sha256(self.username.encode() + self.user_id.encode()).digest()[:8], "big")
        cells = [[(bits >> (r * k + c)) & 1 for c in range(k)] for r in range(k)]
        cells[0][0] = 1
        return cells


def make_profiles(n: int, pool: int = 0, seed: int = 0) -> list[Profile]:
    """``n`` profiles of pool ``pool``; different pools never share a username or id.

    Example:
        >>> u1, u2 = make_profiles(20, pool=0), make_profiles(20, pool=1)
        >>> len({p.username for p in u1} & {p.username for p in u2})
        0
    """
    n = check_int(n, "n", low=1, example=100)
    pool = check_int(pool, "pool", low=0, example=0)
    rng = random.Random(f"{seed}:{pool}")
    out = []
    for i in range(n):
        # the pool index is part of the username and id, which keeps pools disjoint
        user = f"{rng.choice(_FIRST)}_{pool}{i:03d}{rng.randrange(10, 99)}"
        uid = f"{pool}{rng.randrange(10**8, 10**9)}"[:10].ljust(10, "0")
        out.append(Profile(pid=pool * 100_000 + i, pool=pool, username=user, user_id=uid,
                           gender=rng.choice(("female", "male", "non-binary")), age=rng.randrange(18, 80),
                           capture_time=f"20{rng.randrange(15, 25)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d} "
                                        f"{rng.randrange(24):02d}:{rng.randrange(60):02d}",
                           capture_location=rng.choice(_PLACES)))
    return out


def render(img: Image.Image, profile: Profile, rng: random.Random, mode: str = "text", cell: int | None = None) -> Image.Image:
    """Return a copy of ``img`` with ``profile`` written on it (white, 50% opacity)."""
    base = img.convert("RGBA")
    layer = Image.new("RGBA", base.size, (255, 255, 255, 0))
    d = ImageDraw.Draw(layer)
    w, h = base.size
    if mode in ("text", "username"):
        font = ImageFont.load_default()
        lines = profile.lines() if mode == "text" else [profile.username]
        boxes = [d.textbbox((0, 0), ln, font=font) for ln in lines]
        bw = max(b[2] - b[0] for b in boxes)
        lh = max(b[3] - b[1] for b in boxes) + 2
        bh = lh * len(lines)
        if bw > w or bh > h:
            raise InputError(f"a text profile ({bw}x{bh} px) does not fit a {w}x{h} image",
                             fix="use mode='pattern' for small images")
        x, y = rng.randint(0, w - bw), rng.randint(0, h - bh)
        for i, ln in enumerate(lines):
            d.text((x, y + i * lh), ln, fill=(255, 255, 255, 128), font=font)
    elif mode == "pattern":
        pat = profile.pattern()
        k = len(pat)
        c = cell or max(1, min(w, h) // 8)
        size = k * c
        x, y = rng.randint(0, w - size), rng.randint(0, h - size)
        for r in range(k):
            for col in range(k):
                if pat[r][col]:
                    d.rectangle([x + col * c, y + r * c, x + (col + 1) * c - 1, y + (r + 1) * c - 1], fill=(255, 255, 255, 128))
    else:
        raise InputError(f"unknown watermark mode {mode!r}", fix="use 'text', 'username' or 'pattern'")
    return Image.alpha_composite(base, layer).convert("RGB")


def apply_watermarks(images: Sequence[Image.Image], profiles: Sequence[Profile], p: float, seed: int = 0,
                     mode: str = "text", assign: Sequence[int] | None = None) -> tuple[list[Image.Image], list[int | None]]:
    """Watermark each image with probability ``p`` with a profile from ``profiles``.

    Returns the images and, per image, the applied profile's ``pid`` (None where none was
    applied). ``assign`` fixes which profile (index into ``profiles``) each image would get.
    Deterministic from ``seed``.
    """
    if not 0.0 <= p <= 1.0:
        raise InputError(f"p must be in [0, 1], got {p!r}")
    if not profiles:
        raise InputError("no profiles to apply", fix="make some with make_profiles(n)")
    rng = random.Random(seed)
    out, ids = [], []
    for i, img in enumerate(images):
        prof = profiles[assign[i]] if assign is not None else profiles[rng.randrange(len(profiles))]
        if rng.random() < p:
            out.append(render(img, prof, rng, mode))
            ids.append(prof.pid)
        else:
            out.append(img.copy())
            ids.append(None)
    return out, ids
