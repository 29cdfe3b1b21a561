"""The removers' settings of the watermark comparison (:mod:`.watermark_removal`): the choice rule on the
held-out views, the seen-vs-unseen directions and the SAE removers, each fitted and set on those views only."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd

__all__ = ["BETAS", "CLAMPS", "LRS", "KEEP", "fit_reading", "choose", "FitViews", "directions", "train_sae",
           "sae_remover"]

BETAS = (-1.0, -2.0, -5.0, -10.0, -25.0, -50.0, -100.0)  # Suri et al.'s sweep, in units of the latents' activation
CLAMPS = (0.0, 1.0, 2.0, 4.0)  # SAUCE-style: clamp to -c * alpha where the latent fires
LRS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)  # the fine-tuning removers' learning rates (20 steps each)
KEEP = 0.9  # a setting must keep this share of the unseen names' reading on the held-out views


def fit_reading(model: Any, fit: pd.DataFrame) -> dict:
    """Teacher-forced exact match of the name on the held-out views, seen and unseen names apart."""
    from ...data.synthetic import Sample
    from ...organisms.reader import USERNAME
    from ...organisms.finetune import task_accuracy

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


class FitViews:
    """The held-out views (:func:`~probekit.studies.watermark.removal.fit_set`) with the untouched
    fine-tune's residual at every layer at the name's positions (``answer_mean``), collected on first use
    and shared by the directions, the SAE's quality and the latent choice (one pass, not five)."""

    def __init__(self, tuned: Any, fit: pd.DataFrame) -> None:
        self.tuned, self.frame, self._store = tuned, fit, None
        self.labels, self.answers = list(fit.label), [n + "." for n in fit.name]

    @property
    def store(self) -> Any:
        if self._store is None:
            from ...hooks.collect import collect
            from ...organisms.reader import USERNAME

            self._store = collect(self.tuned, list(self.frame.image), USERNAME, points="lm.*.resid",
                                  positions="answer_mean", answers=self.answers, batch_size=64, progress=False)
        return self._store


def directions(tuned: Any, views: FitViews, method: str) -> Callable[[], Any]:
    """The seen-vs-unseen direction per residual layer, fitted on the views; the intervention maker."""
    from ...steering import Direction, ablate
    from ...steering.weights import orthogonalized

    store, labels = views.store, views.labels
    # shrinkage: 400 rows against the residual's width; without it the eraser's whitening blew up directions of
    # little variance at the answer and broke reading altogether (measured on --small: 0.00 / 0.00 read)
    d = Direction.leace(store, labels, shrinkage=True) if method == "leace" else Direction.from_means(store, labels)
    if method == "orthogonalize":
        last = sorted(tuned.resolve("lm.*.resid"), key=lambda p: int(p.split(".")[1]))[-1]
        return lambda: orthogonalized(tuned, d, last)
    return lambda: ablate(tuned, d, points="lm.*.resid", positions="text")


def train_sae(tuned: Any, views: FitViews, cfg: Any, seed: int) -> tuple[Any, dict]:
    """The SAE on the last residual layer, trained on the held-out views (the image tokens, the prompt's last
    token and the name's positions, the name teacher-forced), and its quality on the views' answer positions."""
    from ...hooks.collect import collect
    from ...organisms.reader import USERNAME
    from ...sae import sae_stats, train_sae

    point = sorted(tuned.resolve("lm.*.resid"), key=lambda p: int(p.split(".")[1]))[-1]
    store = collect(tuned, list(views.frame.image), USERNAME, points=point,
                    positions=("image", "prompt_last", "answer_mean"), answers=views.answers, batch_size=64,
                    progress=False)
    sae = train_sae(store, point, None, architecture="topk", expansion=cfg.sae_expansion, k=cfg.sae_k,
                    epochs=cfg.sae_epochs, seed=seed)
    sae.position = None
    st = {k: v for k, v in sae_stats(sae, views.store, point, "answer_mean").items()
          if k not in ("fire_rate", "mean_act")}
    tr = sae.meta.get("train", {})
    return sae, {"point": point, "d_sae": sae.d_sae, "k": sae.k, "train_rows": tr.get("rows"),
                 "train_seconds": tr.get("seconds"), **{f"fit_{k}": st[k] for k in ("fvu", "l0", "dead")}}


def sae_remover(tuned: Any, sae: Any, views: FitViews, method: str, cfg: Any,
                before: dict) -> tuple[Callable, dict]:
    """Latents and setting chosen on the held-out views (module docstring; ``before``: the untouched model's
    :func:`fit_reading` of them); returns the context maker and the choice with its sweep."""
    from ...sae.select import select_latents
    from ...sae.stats import encode_store
    from ...steering.sae import sae_clamp, sae_steer

    z = encode_store(sae, views.store, sae.point, "answer_mean")
    labels, fit = views.labels, views.frame
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
    sweep = []
    for s in grid:
        with build(s):
            sweep.append({**s, **fit_reading(tuned, fit)})
    best = grid[choose(before, sweep)]
    return (lambda: build(best)), {"setting": best, "latents": list(sel.latents), "sweep": sweep}
