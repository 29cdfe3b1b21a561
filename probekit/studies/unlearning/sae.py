"""The SAE removers of the facts study: Suri et al.'s steering and SAUCE-style clamping, fitted on held-out views.

- :func:`study_sae`: one SAE on the tuned model's last residual layer (``cfg.sae_point``), trained on
  the activations of the model's own training questions at every image token and the last three text
  tokens (:func:`probekit.sae.train_sae`, ``cfg.sae_architecture``), cached in sae-lens's format under
  ``cfg.out`` and checked on load; its quality on held-out test portraits (FVU, L0, dead latents, and
  with it spliced in: the KL of the next token and the answer loss recovered against zero ablation).
- :func:`sae_steering`: per forget split, latents chosen on the forget profiles' *held-out* portrait
  views (:data:`probekit.studies.unlearning.removal.FIT_VIEWS`, never trained on, never scored):

  - ``sae_steer``: the ``cfg.sae_latents`` latents that fire more on the forget profiles' questions
    (memorised) than on never-seen profiles' (standardised mean difference), steered with
    ``a + beta * sum_i alpha_i W_dec,i`` (alpha the latent's mean activation where it fires) at every
    position; ``beta`` from Suri et al.'s sweep :data:`BETAS`;
  - ``sae_clamp``: the latents that carry the job on those views (ANOVA F), clamped to
    ``-c * alpha`` where they fire, the error term kept; ``c`` from :data:`CLAMPS` (0 ablates).

  The setting is chosen on the fitting views alone: the largest drop in forget multiple choice minus
  the drop in retain multiple choice (retain profiles' fitting views), the smaller edit on a tie. Then
  :func:`probekit.steering.evaluate` scores it on the evaluation views and by-name prompts, like the
  other steering removers, and the study measures utility, membership, probes and layer-wise
  membership under it. The sweep is returned for the write-up.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from . import profiles as P
from ...organisms.facts_metrics import mc_accuracy
from .measures import TEST_VIEWS, facts

__all__ = ["SAE_METHODS", "BETAS", "CLAMPS", "study_sae", "sae_steering"]

SAE_METHODS = ("sae_steer", "sae_clamp")
BETAS = (-1.0, -2.0, -5.0, -10.0, -25.0, -50.0, -100.0)  # Suri et al.'s beta, in units of the latents' activation
CLAMPS = (0.0, 1.0, 2.0, 4.0)  # SAUCE-style: clamp to -c * alpha where the latent fires


def _sae_dir(cfg: Any) -> Path:
    return Path(cfg.out) / (f"sae-{cfg.sae_architecture}-{cfg.sae_point}-x{cfg.sae_expansion}-k{cfg.sae_k}"
                            f"-l1{cfg.sae_l1:g}-e{cfg.sae_epochs:g}-n{cfg.n_profiles}-st{cfg.steps}-s{cfg.seed}")


def _point(model: Any, cfg: Any) -> str:
    return cfg.sae_point if cfg.sae_point != "last" else sorted(model.resolve("lm.*.resid"),
                                                                key=lambda p: int(p.split(".")[1]))[-1]


def study_sae(model: Any, world: P.World, cfg: Any) -> tuple[Any, dict]:
    """The study's SAE (trained, or loaded from its cache with every check) and its quality record."""
    from ...hooks.collect import collect
    from ...sae import load_sae, sae_stats, train_sae
    from ...steering.sae import splice_quality

    point = _point(model, cfg)
    d = _sae_dir(cfg)
    t0 = time.perf_counter()
    if (d / "cfg.json").exists():
        sae = load_sae(d)
        trained = False
    else:
        samples = list(world.train)
        store = collect(model, [s.image for s in samples], [s.question for s in samples], points=point,
                        positions=("last", -2, -3, "image"), batch_size=64, progress=False)
        sae = train_sae(store, point, None, architecture=cfg.sae_architecture, expansion=cfg.sae_expansion,
                        k=cfg.sae_k, l1=cfg.sae_l1, epochs=cfg.sae_epochs, seed=cfg.seed)
        sae.position = None
        sae.save(d)
        trained = True
    test = [s for v in TEST_VIEWS[:2] for s in facts(world, world.trained, "image", v)]
    held = collect(model, [s.image for s in test], [s.question for s in test], points=point, positions="last",
                   batch_size=64, progress=False)
    st = {k: v for k, v in sae_stats(sae, held, point, "last").items() if k not in ("fire_rate", "mean_act")}
    sq = splice_quality(model, sae, [s.image for s in test], [s.question for s in test], task_samples=test,
                        positions=None, seed=cfg.seed, n_boot=cfg.n_boot)
    tr = sae.meta.get("train", {})
    rec = {"point": point, "architecture": sae.architecture, "d_in": sae.d_in, "d_sae": sae.d_sae, "k": sae.k,
           "train_rows": tr.get("rows"), "train_steps": tr.get("steps"), "train_seconds": tr.get("seconds"),
           "epochs": tr.get("epochs"), "cached": not trained, "directory": str(d), "held_out_rows": st["n"],
           **{f"heldout_{k}": st[k] for k in ("fvu", "l0", "dead", "dead_fraction", "dense", "cosine")},
           **{k: v for k, v in sq.items() if k not in ("point", "positions")},
           "seconds": time.perf_counter() - t0}
    return sae, rec


def _items(world: P.World, pids: Sequence[int], views: Sequence[int], attribute: str | None = "job") -> list:
    return [s for v in views for s in facts(world, pids, "image", v) if attribute is None or s.attribute == attribute]


def _latents(model: Any, sae: Any, items: list) -> Any:
    from ...hooks.collect import collect
    from ...sae.stats import encode_store

    st = collect(model, [s.image for s in items], [s.question for s in items], points=sae.point, positions="last",
                 batch_size=64, progress=False)
    return encode_store(sae, st, sae.point, "last")


def _score(model: Any, make: Callable[[], Any], f_items: list, r_items: list, cfg: Any) -> tuple[float, float]:
    with make():
        f = mc_accuracy(model, f_items, P.ATTRIBUTES, seed=cfg.seed, n_boot=10)["accuracy"]
        r = mc_accuracy(model, r_items, P.ATTRIBUTES, seed=cfg.seed, n_boot=10)["accuracy"]
    return f, r


def sae_steering(model: Any, sae: Any, world: P.World, forget: Sequence[int], retain: Sequence[int], method: str,
                 cfg: Any) -> tuple[Callable[[], Any], Any, pd.DataFrame, dict]:
    """Choose latents and the setting on held-out views, evaluate through ``evaluate()``; returns
    ``(make_context, EvalReport, sweep, info)`` (see the module docstring)."""
    import contextlib

    from ...sae.select import select_latents
    from ...steering import evaluate
    from ...steering.sae import sae_clamp, sae_steer
    from .removal import FIT_VIEWS

    fit_job = _items(world, forget, FIT_VIEWS)
    f_fit = _items(world, forget, FIT_VIEWS, None)
    r_fit = _items(world, list(retain)[:cfg.n_eval_retain], FIT_VIEWS, None)
    if method == "sae_steer":
        unseen = _items(world, list(world.unseen), FIT_VIEWS, None)
        z = _latents(model, sae, f_fit + unseen)
        sel = select_latents(z, ["memorised"] * len(f_fit) + ["never seen"] * len(unseen), m=cfg.sae_latents,
                             method="diff", positive="memorised")
        grid = [{"beta": b} for b in BETAS]

        def build(s: dict, latents=sel) -> Any:
            return sae_steer(model, sae, latents, beta=s["beta"])
    else:
        z = _latents(model, sae, fit_job)
        sel = select_latents(z, [s.answer for s in fit_job], m=cfg.sae_latents, method="anova")
        grid = [{"clamp": c} for c in CLAMPS]

        def build(s: dict, latents=sel) -> Any:
            return sae_clamp(model, sae, latents, value=[-s["clamp"] * a for a in latents.alpha])
    f0, r0 = _score(model, contextlib.nullcontext, f_fit, r_fit, cfg)
    rows = []
    for s in grid:
        f, r = _score(model, lambda s=s: build(s), f_fit, r_fit, cfg)
        rows.append({**s, "forget_fit": f, "retain_fit": r, "forget_drop": f0 - f, "retain_drop": r0 - r,
                     "gain": (f0 - f) - (r0 - r)})
    sweep = pd.DataFrame(rows).assign(method=method, forget_fit_before=f0, retain_fit_before=r0)
    best = dict(grid[int(np.argmax(np.round(sweep.gain.to_numpy(), 6)))])
    ev = [s for v in (0,) + TEST_VIEWS[:2] for s in facts(world, list(forget) + list(retain[:cfg.n_eval_retain]), "image", v)
          if s.attribute == "job"] + [s for s in facts(world, list(forget) + list(retain[:cfg.n_eval_retain]), "text")
                                      if s.attribute == "job"]
    task = facts(world, retain, "text") + facts(world, retain, "image")
    report = evaluate(model, lambda: build(best), [s.image for s in ev], [s.answer for s in ev],
                      fit_images=[s.image for s in f_fit], prompts=[s.question for s in ev], groups=[s.pid for s in ev],
                      points="lm.*.resid", positions="last", task_samples=task, cv=min(cfg.probe_cv, 3), seed=cfg.seed,
                      n_boot=cfg.n_boot)
    info = {"sae_setting": json.dumps(best), "sae_latents": json.dumps(sel.latents),
            "sae_alpha": json.dumps([round(a, 4) for a in sel.alpha]), "sae_selection": sel.method}
    return (lambda: build(best)), report, sweep, info
