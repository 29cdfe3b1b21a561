"""The membership organism: a tiny LLaVA fine-tuned to name 16 images, beside a matched control.

The base is a tiny LLaVA (4 language-model layers, built here from a config, seed ``seed``). The **tuned** model
is the base fine-tuned to answer ``"What is the name?"`` with one of 16 names on the 16 *member* images; the
*non-members* are 16 other images with the same 16 names, so the answers alone do not tell the sets apart: only
having seen an image does. The **control** is the same base fine-tuned the same way on 16 *third* images: it saw
neither set, so nothing it holds can separate members from non-members (the matched negative). A deliberately
*shifted* split (brightened vs darkened images, nothing trained on either) is where the distribution-shift guard
must speak first. Everything is deterministic from ``seed``; training takes seconds, so nothing is cached.

Example:
    >>> from probekit.studies.membership.organism import MembershipConfig
    >>> MembershipConfig.small().seeds, MembershipConfig().seeds
    ((0,), (0, 1, 2))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["NAMES", "QUESTION", "MembershipConfig", "Organism", "build"]

NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "oscar",
         "peggy", "rupert", "sybil", "trent")
QUESTION = "What is the name?"


@dataclass(frozen=True)
class MembershipConfig:
    """The organism's recipe and the audit's settings (``small``: one seed and fewer permutations)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    num_layers: int = 4
    steps: int = 100
    lr: float = 3e-3
    batch_size: int = 8
    cv: int = 4
    n_perm: int = 1000
    n_boot: int = 1000

    @classmethod
    def small(cls) -> "MembershipConfig":
        return cls(seeds=(0,), n_perm=200, n_boot=200)


@dataclass
class Organism:
    """One seed's models and sets: ``base``, ``tuned`` (memorised the members), ``control`` (saw neither set)."""

    base: Any
    tuned: Any
    control: Any
    members: list[dict]
    nonmembers: list[dict]
    shifted: tuple[list[dict], list[dict]]  # (bright, dark): a split that differs in its inputs, not in training


def _rows(images: list, names: tuple[str, ...] = NAMES) -> list[dict]:
    return [{"image": im, "prompt": QUESTION, "answer": a} for im, a in zip(images, names)]


def build(cfg: MembershipConfig, seed: int, workdir: str | Path) -> Organism:
    """Build the base checkpoint under ``workdir`` and fine-tune the tuned model and its control (seconds)."""
    from ...models.loading import load
    from ... import tiny
    from ...data.synthetic import Sample
    from ...organisms.finetune import finetune

    path = tiny.build("llava", Path(workdir) / f"base-s{seed}", seed=seed, num_layers=cfg.num_layers,
                               overwrite=True)
    images = tiny.fixture_images(48, 32, seed=5 + 100 * seed)
    members, nonmembers, third = _rows(images[:16]), _rows(images[16:32]), _rows(images[32:])
    models = {}
    for name, train in (("tuned", members), ("control", third)):
        m = load(path)
        finetune(m, [Sample(r["image"], QUESTION, r["answer"], "name") for r in train], steps=cfg.steps,
                 batch_size=cfg.batch_size, lr=cfg.lr, seed=seed, progress=False)
        models[name] = m
    shift = tiny.fixture_images(32, 32, seed=8 + 100 * seed)
    bright = _rows([im.point(lambda v: min(255, v // 2 + 128)) for im in shift[:16]])
    dark = _rows([im.point(lambda v: v // 2) for im in shift[16:]])
    return Organism(load(path), models["tuned"], models["control"], members, nonmembers, (bright, dark))
