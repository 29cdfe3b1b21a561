"""The removers' settings of the watermark comparison (:mod:`.watermark_removal`): the choice rule on the
held-out views, the seen-vs-unseen directions and the SAE removers, each fitted and set on those views only."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd

__all__ = ["BETAS", "CLAMPS", "LRS", "KEEP", "fit_reading", "choose", "directions", "train_sae", "sae_remover"]

BETAS = (-1.0, -2.0, -5.0, -10.0, -25.0, -50.0, -100.0)  # Suri et al.'s sweep, in units of the latents' activation
CLAMPS = (0.0, 1.0, 2.0, 4.0)  # SAUCE-style: clamp to -c * alpha where the latent fires
LRS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)  # the fine-tuning removers' learning rates (20 steps each)
KEEP = 0.9  # a setting must keep this share of the unseen names' reading on the held-out views


def fit_reading(model: Any, fit: pd.DataFrame) -> dict:
    """Teacher-forced exact match of the name on the held-out views, seen and unseen names apart."""
    from ..data.synthetic import Sample
    from ..organisms.reader import USERNAME
    from .finetune import task_accuracy

    out = {}
    for lab in ("seen", "unseen"):
        part = fit[fit.label == lab]
        out[lab] = task_accuracy(model, [Sample(im, USERNAME, n + ".", "ocr") for im, n in zip(part.image, part.name)])["accuracy"]
    return out


def choose(before: dict, sweep: list[dict]) -> int:
    """Index of the chosen setting: ``sweep[i]`` holds ``seen`` and ``unseen`` reading after setting i; the
    largest (seen drop - unseen drop) among settings keeping :data:`KEEP` of the unseen reading, else 0
    (the gentlest, listed first)."""
    ok = [i for i, r in enumerate(sweep) if r["unseen"] >= KEEP * before["unseen"]]
    if not ok:
        return 0
    gain = [round((before["seen"] - sweep[i]["seen"]) - (before["unseen"] - sweep[i]["unseen"]), 6) for i in ok]
    return ok[int(np.argmax(gain))]


def directions(tuned: Any, fit: pd.DataFrame, method: str) -> Callable[[], Any]:
    from ..hooks.collect import collect
    from ..organisms.reader import USERNAME
    from ..steering import Direction, ablate
    from .unlearning_removal import _lazy_orthogonalize

    store = collect(tuned, list(fit.image), USERNAME, points="lm.*.resid", positions="answer_mean",
                    answers=[n + "." for n in fit.name], batch_size=64, progress=False)
    labels = list(fit.label)
    # shrinkage: 400 rows against the residual's width; without it the eraser's whitening blew up directions of
    # little variance at the answer and broke reading altogether (measured on --small: 0.00 / 0.00 read)
    d = Direction.leace(store, labels, shrinkage=True) if method == "leace" else Direction.from_means(store, labels)
    if method == "orthogonalize":
        last = sorted(tuned.resolve("lm.*.resid"), key=lambda p: int(p.split(".")[1]))[-1]
        return lambda: _lazy_orthogonalize(tuned, d, last)
    return lambda: ablate(tuned, d, points="lm.*.resid", positions="text")


def train_sae(tuned: Any, fit: pd.DataFrame, cfg: Any, seed: int) -> tuple[Any, dict]:
    """The SAE on the last residual layer, trained on the held-out views (every position of the reading
    sequence, the name teacher-forced), and its quality on the views' answer positions."""
    from ..hooks.collect import collect
    from ..organisms.reader import USERNAME
    from ..sae import sae_stats, train_sae

    point = sorted(tuned.resolve("lm.*.resid"), key=lambda p: int(p.split(".")[1]))[-1]
    answers = [n + "." for n in fit.name]
    store = collect(tuned, list(fit.image), USERNAME, points=point, positions=("image", "prompt_last", "answer_mean"),
                    answers=answers,
                    batch_size=64, progress=False)
    sae = train_sae(store, point, None, architecture="topk", expansion=cfg.sae_expansion, k=cfg.sae_k,
                    epochs=cfg.sae_epochs, seed=seed)
    sae.position = None
    held = collect(tuned, list(fit.image), USERNAME, points=point, positions="answer_mean", answers=answers,
                   batch_size=64, progress=False)
    st = {k: v for k, v in sae_stats(sae, held, point, "answer_mean").items() if k not in ("fire_rate", "mean_act")}
    tr = sae.meta.get("train", {})
    return sae, {"point": point, "d_sae": sae.d_sae, "k": sae.k, "train_rows": tr.get("rows"),
                 "train_seconds": tr.get("seconds"), **{f"fit_{k}": st[k] for k in ("fvu", "l0", "dead")}}


def sae_remover(tuned: Any, sae: Any, fit: pd.DataFrame, method: str, cfg: Any) -> tuple[Callable, dict]:
    """Latents and setting chosen on the held-out views (module docstring); returns the context maker and the
    choice with its sweep."""
    from ..hooks.collect import collect
    from ..organisms.reader import USERNAME
    from ..sae.select import select_latents
    from ..sae.stats import encode_store
    from ..steering.sae import sae_clamp, sae_steer

    st = collect(tuned, list(fit.image), USERNAME, points=sae.point, positions="answer_mean",
                 answers=[n + "." for n in fit.name], batch_size=64, progress=False)
    z = encode_store(sae, st, sae.point, "answer_mean")
    labels = list(fit.label)
    if method == "sae_steer":
        sel = select_latents(z, labels, m=cfg.n_latents, method="diff", positive="seen")
        grid = [{"beta": b} for b in BETAS]

        def build(s: dict) -> Any:
            return sae_steer(tuned, sae, sel, beta=s["beta"])
    else:
        sel = select_latents(z, labels, m=cfg.n_latents, method="anova")
        grid = [{"clamp": c} for c in CLAMPS]

        def build(s: dict) -> Any:
            return sae_clamp(tuned, sae, sel, value=[-s["clamp"] * a for a in sel.alpha])
    before = fit_reading(tuned, fit)
    sweep = []
    for s in grid:
        with build(s):
            sweep.append({**s, **fit_reading(tuned, fit)})
    best = grid[choose(before, sweep)]
    return (lambda: build(best)), {"setting": best, "latents": list(sel.latents), "sweep": sweep}
