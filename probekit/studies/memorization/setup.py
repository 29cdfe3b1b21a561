"""The memorisation study's settings and image sets (:mod:`probekit.studies.memorization.study`).

:class:`MemorizationConfig` (the small setting and :meth:`~MemorizationConfig.full`), the
watermarked training set, the held-out seen / unseen set, and the probe scan run on each model.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ...data.synthetic import make_task
from ...data.watermark import apply_watermarks, render
from ...organisms.unlearn import METHODS

__all__ = ["MemorizationConfig", "POINTS", "POSITIONS"]

POINTS = ["projector", "lm.*.resid"]
POSITIONS = ("last", "image_mean")


@dataclass
class MemorizationConfig:
    out: str = "probekit-memorization"
    seeds: tuple = (0,)
    ps: tuple = (0.0, 0.5, 1.0)
    batch_sizes: tuple = (8,)
    probe_batch_size: int = 8
    steps: int = 30
    lr: float = 2e-3
    lora: dict | None = None
    n_train: int = 192
    n_profiles: int = 8
    n_eval: int = 96
    n_test: int = 96
    image_size: int = 96
    num_layers: int = 2
    mode: str = "username"
    prompt: str = "What is the username?"
    controls: bool = True
    control_steps: int = 80
    control_mode: str = "pattern"
    control_cell: int = 16
    control_n_eval: int = 192
    control_lr: float = 3e-3
    removal: bool = True
    unlearning: tuple = ()
    unlearn_steps: int = 15
    unlearn_lr: float = 1e-4
    cos_every: int = 1
    n_boot: int = 200
    progress: bool = False
    verbose: bool = False

    @classmethod
    def full(cls, out: str = "probekit-memorization-full", **kw: Any) -> "MemorizationConfig":
        base = dict(out=out, seeds=(0, 1), batch_sizes=(2, 8, 32), steps=40, cos_every=2, n_train=160, n_eval=128,
                    n_test=96, num_layers=2, n_boot=200, control_steps=60, control_n_eval=160, unlearning=METHODS,
                    unlearn_steps=10, unlearn_lr=5e-4, verbose=True)
        base.update(kw)
        return cls(**base)


def _train_set(cfg: MemorizationConfig, seed: int, p: float, seen: list) -> tuple[list, list]:
    train = make_task(cfg.n_train, size=cfg.image_size, seed=seed)
    clean = [s.image for s in train]
    imgs, ids = apply_watermarks(clean, seen, p, seed=seed + 7, mode=cfg.mode)
    for s, im, pid in zip(train, imgs, ids):
        s.image, s.meta["watermark"] = im, pid
    return train, clean


def _eval_set(cfg: MemorizationConfig, seed: int, seen: list, unseen: list, offset: int = 1000) -> dict:
    """Held-out task samples, even rows watermarked with U1 (seen), odd rows with U2 (unseen)."""
    rng = random.Random(seed + offset)
    samples = make_task(cfg.n_eval, size=cfg.image_size, seed=seed + offset)
    clean, labels, groups, users = [], [], [], []
    for i, s in enumerate(samples):
        pool, name = (seen, "seen") if i % 2 == 0 else (unseen, "unseen")
        prof = pool[(i // 2) % len(pool)]
        clean.append(s.image)
        s.image = render(s.image, prof, rng, mode=cfg.mode)
        labels.append(name)
        groups.append(prof.pid)
        users.append(prof.username)
    return {"samples": samples, "images": [s.image for s in samples], "clean": clean, "labels": labels,
            "groups": groups, "usernames": users}


def _scan(model, ev: dict, cfg: MemorizationConfig, seed: int, labels=None, groups: Any = "default"):
    from ...scan import scan

    return scan(model, ev["images"], labels=labels or ev["labels"], prompts=cfg.prompt,
                         groups=ev["groups"] if groups == "default" else groups, points=POINTS, positions=POSITIONS,
                         seed=seed, n_boot=cfg.n_boot, progress=cfg.progress)


def _rows(report, **tags) -> pd.DataFrame:
    cols = ["point", "layer", "position", "source", "accuracy", "accuracy_lo", "accuracy_hi", "chance",
            "mi_bits", "mi_lo", "mi_hi", "mi_perm_bits", "control_accuracy", "selectivity", "p_value", "p_adjusted", "leaks"]
    t = report.table[[c for c in cols if c in report.table.columns]].copy()
    for k, v in tags.items():
        t[k] = v
    return t
