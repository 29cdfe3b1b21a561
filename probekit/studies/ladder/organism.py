"""Leakage from inputs, Apple's ladder in miniature (arXiv 2604.09885) on a tiny VLM that learned a yes/no task.

1. Build a tiny LLaVA (60x60 images, 9 patches of 20 pixels, 4 LM layers, hidden 64) and
   fine-tune it on CLEVR-like scenes (:mod:`probekit.data.scenes`) to answer "Is the centre
   object <colour>?" with one word, ``Yes`` or ``No`` (measured held-out accuracy in the result).
2. On fresh scenes, record the residual stream and the output logits at the answer position
   and fit a tuned lens on the residuals.
3. For every unasked attribute (the target's size, material and shape, whether the scene has
   many objects, whether the image was blurred or noised) and for the negative control (a coin
   flip per image, not in the image), run :func:`probekit.readout.ladder.leakage_ladder`:
   the same probes on the residual stream and the tuned lens per layer and on the top-k output
   log-probabilities for k = 2 (the Yes/No tokens), 5, 10, 50 and the full vocabulary.
   With ``matched=True`` also the dimension-matched rungs beside each top k: the residual's first
   k principal components and the tuned lens's own top k (:mod:`probekit.readout.ladder`).
4. Decide per seed with :func:`probekit.readout.ladder.ladder_verdict` (probekit's one verdict, a
   permutation test family-wise corrected over every rung of that seed, with its power).
5. Repeat 1-4 for every seed of ``cfg.seeds`` (a new initialisation, training set, test and
   probe scenes per seed) and summarise across seeds (:func:`seed_summary`: mean accuracy with a
   t interval over seeds, and in how many seeds each rung was detected).

``run_ladder(LadderConfig())`` is the study of ``docs/results.md`` (5 seeds, about 6 minutes a seed
on 2 cores); ``LadderConfig.small()`` the CI version (2 seeds, one fixed question colour, fewer
steps and scenes).

Example (the CI version, about a minute; ``tests/test_ladder.py`` runs it)::

    res = run_ladder(LadderConfig.small(out=tempfile.mkdtemp()))
    res["task_accuracy"]["accuracy"]                 # 0.99, pooled over the seeds' held-out scenes
    res["verdicts"]["target_material"]["residual"]   # 'detected in 2 of 2 seeds (family-wise per seed, ...'
    res["verdicts"]["random"]["all"]                 # 'nothing detected in any of 2 seeds (...)'
    res["summary"]                                   # one row per rung: mean over seeds, t interval, seeds detected
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..._stats import t_half_width, wilson
from ...data.scenes import ATTRIBUTES, make_scenes
from ...errors import InputError, check_int
from ... import tiny
from ...models.loading import load
from .report import ANSWERS, headline, matched_table, verdict_lines, write_section

__all__ = ["LadderConfig", "run_ladder", "run_seed", "seed_summary", "train_organism", "eval_scenes", "write_section",
           "verdict_lines", "headline", "matched_table", "ANSWERS"]


@dataclass
class LadderConfig:
    out: str = "probekit-ladder"
    seed: int = 0
    image_size: int = 60
    patch_size: int = 20
    num_layers: int = 4
    ask: str | None = "red"  # None: the question's colour varies (red or blue); a colour fixes it
    n_train: int = 2000
    steps: int = 400
    batch_size: int = 16
    lr: float = 3e-3
    n_test: int = 200
    n_eval: int = 600
    ks: tuple = (2, 5, 10, 50, None)
    attributes: tuple = ATTRIBUTES
    lens_steps: int = 300
    n_boot: int = 500
    alpha: float = 0.05
    progress: bool = True
    seeds: tuple = (0, 1, 2, 3, 4)  # each: its own initialisation, training, test and probe scenes
    matched: bool = True  # the dimension-matched rungs (PCA-k of the residual, top-k of the tuned lens)

    @classmethod
    def small(cls, **kw: Any) -> "LadderConfig":
        """The CI version: 2 seeds, one question ("Is the centre object red?"), 160 steps, 320 scenes probed."""
        base = dict(out="probekit-ladder-small", ask="red", num_layers=2, n_train=640, steps=160, lr=3e-3,
                    n_test=100, n_eval=320, lens_steps=100, n_boot=200, progress=False,
                    attributes=("target_material", "random"), seeds=(0, 1))
        return cls(**{**base, **kw})


def _check(cfg: LadderConfig) -> None:
    bad = [a for a in cfg.attributes if a not in ATTRIBUTES]
    if bad or not cfg.attributes:
        raise InputError(f"unknown attributes {bad or list(cfg.attributes)}", fix=f"choose from {list(ATTRIBUTES)}")
    for name in ("n_train", "steps", "batch_size", "n_test", "n_eval", "lens_steps"):
        setattr(cfg, name, check_int(getattr(cfg, name), name, low=1, example=getattr(LadderConfig, name)))
    if cfg.n_eval < 50:
        raise InputError(f"n_eval={cfg.n_eval} is too few scenes for 5-fold probes with CIs", fix="use n_eval >= 50")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds) or not all(isinstance(s, int) for s in cfg.seeds):
        raise InputError(f"seeds must be distinct ints, got {cfg.seeds!r}", fix="e.g. seeds=(0, 1, 2, 3, 4)")


def _log(cfg: LadderConfig, t0: float, msg: str) -> None:
    """A progress line in words (:func:`probekit._progress.say`); the verdicts are printed once, by the caller."""
    from ..._progress import say

    say(msg, t0, cfg.progress)


@torch.no_grad()
def yes_no_accuracy(model: Any, scenes: list, batch_size: int = 64) -> dict:
    """Held-out accuracy of the answer the model would give: argmax over the whole vocabulary
    at the answer position must be the right one of ``Yes``/``No`` (Wilson 95% CI)."""
    from ...organisms.finetune import task_accuracy

    return task_accuracy(model, scenes, batch_size=batch_size)


def eval_scenes(cfg: LadderConfig) -> list:
    """The ``cfg.n_eval`` fresh scenes the probes read (never used in fine-tuning or testing)."""
    return make_scenes(cfg.n_eval, size=cfg.image_size, seed=cfg.seed + 2, ask=cfg.ask)


def train_organism(cfg: LadderConfig, t0: float | None = None) -> tuple[Any, dict, dict, list[float]]:
    """Build the tiny LLaVA of ``cfg`` and fine-tune it on the yes/no task.

    Returns the model, its held-out yes/no accuracy after and before fine-tuning
    (:func:`yes_no_accuracy`) and the training losses.
    """
    from ...organisms.finetune import finetune

    _check(cfg)
    t0 = time.perf_counter() if t0 is None else t0
    ckpt = Path(cfg.out) / "tiny-llava"
    _log(cfg, t0, f"Building a tiny LLaVA offline ({cfg.num_layers} language layers, {cfg.image_size}-pixel images)...")
    tiny.build("llava", ckpt, seed=cfg.seed, image_size=cfg.image_size, patch_size=cfg.patch_size,
               num_layers=cfg.num_layers, overwrite=True)
    model = load(ckpt)
    train = make_scenes(cfg.n_train, size=cfg.image_size, seed=cfg.seed, ask=cfg.ask)
    test = make_scenes(cfg.n_test, size=cfg.image_size, seed=cfg.seed + 1, ask=cfg.ask)
    _log(cfg, t0, f"Fine-tuning the tiny model to answer yes/no about the centre object "
                  f"({cfg.steps} steps on {len(train)} scenes)...")
    base_acc = yes_no_accuracy(model, test)
    losses = finetune(model, train, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
                      progress=cfg.progress)
    acc = yes_no_accuracy(model, test)
    _log(cfg, t0, f"Fine-tuned: it answers {acc['accuracy']:.0%} of {acc['n']} held-out questions correctly "
                  f"(untrained {base_acc['accuracy']:.0%}).")
    return model, acc, base_acc, losses


def run_seed(cfg: LadderConfig, t0: float | None = None) -> dict:
    """One seed (``cfg.seed``): train the organism, run the ladder for every attribute, decide per attribute."""
    from ...hooks.collect import collect
    from ...readout.ladder import check_ladder, ladder_verdict, leakage_ladder
    from ...readout.lens import LogitLens, TunedLens

    t0 = time.perf_counter() if t0 is None else t0
    model, acc, base_acc, losses = train_organism(cfg, t0)
    answer_ids = check_ladder(model, cfg.ks, ANSWERS, ["last"])
    ev = eval_scenes(cfg)
    _log(cfg, t0, f"Recording every layer and the output logits on {len(ev)} fresh scenes...")
    acts = collect(model, [s.image for s in ev], [s.question for s in ev], points=["lm.*.resid", "logits"],
                            positions="last", batch_size=64, progress=cfg.progress)
    _log(cfg, t0, f"Fitting a tuned lens to read each layer as an output ({cfg.lens_steps} steps)...")
    tl = TunedLens.fit(model, acts, steps=cfg.lens_steps, seed=cfg.seed, progress=cfg.progress)
    kl = LogitLens(model, tuned=tl).kl_to_final(acts).assign(lens="tuned")
    kl = pd.concat([LogitLens(model).kl_to_final(acts).assign(lens="logit"), kl], ignore_index=True)
    lens = LogitLens(model, tuned=tl)
    frames, verdicts = [], {}
    for attr in cfg.attributes:
        _log(cfg, t0, f"Probing {attr}: every layer, the tuned lens and the top-k output logits...")
        labels = [str(s.meta[attr]) for s in ev]
        tab = leakage_ladder(acts, labels, lens=lens, ks=cfg.ks, answer_ids=answer_ids, position="last",
                             seed=cfg.seed, n_boot=cfg.n_boot, progress=False, matched=cfg.matched)
        tab, verdicts[attr] = ladder_verdict(tab, alpha=cfg.alpha)
        frames.append(tab.assign(attribute=attr, seed=cfg.seed))
    return {"table": pd.concat(frames, ignore_index=True), "verdicts": verdicts, "task_accuracy": acc,
            "untrained_accuracy": base_acc, "final_loss": losses[-1], "lens_kl": kl,
            "vocab": int(acts.info("logits")["shape"][-1]), "model": model, "eval": ev}


def seed_summary(table: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """One row per attribute and rung: accuracy mean over seeds, sd, a t interval over seeds
    (``acc_lo`` / ``acc_hi``, clipped to [0, 1]; the seed is the unit), chance, and ``seeds_detected`` of ``n_seeds``."""
    keys = ["attribute", "source", "point", "layer", "k", "k_label"]
    t = table.assign(k=table.k.fillna(-1), layer=table.layer.fillna(-1))
    g = t.groupby(keys, sort=False)
    out = g.agg(accuracy=("accuracy", "mean"), sd=("accuracy", "std"), n_seeds=("seed", "nunique"),
                chance=("chance", "mean"), seeds_detected=("detected", "sum"), n_features=("n_features", "mean"),
                mi_bits=("mi_bits", "mean")).reset_index()
    half = t_half_width(out.sd.fillna(0), out.n_seeds, level)
    out["acc_lo"], out["acc_hi"] = (out.accuracy - half).clip(0, 1), (out.accuracy + half).clip(0, 1)
    out["k"] = out.k.where(out.k >= 0)
    out["layer"] = out.layer.where(out.layer >= 0)
    out["seeds_detected"] = out.seeds_detected.astype(int)
    return out


def _across(lines: list[tuple[pd.DataFrame, str]], alpha: float) -> str:
    """One verdict line over seeds from each seed's :func:`ladder_verdict` rows (``detected``)."""
    from ...readout.ladder import _rung

    n, m = len(lines), len(lines[0][0])
    hits = [t[t.detected] for t, _ in lines]
    if not any(len(h) for h in hits):
        mde = max(float(t.mde_accuracy.max()) for t, _ in lines)
        power = "; could have detected nothing" if mde >= 1 else f"; would have detected accuracy >= {mde:.2f} at 80% power"
        return f"nothing detected in any of {n} seeds ({m} rows each, family-wise per seed, alpha {alpha:g}{power})"
    count: dict[str, int] = {}
    for h in hits:
        for r in h.itertuples():
            count[_rung(r)] = count.get(_rung(r), 0) + 1
    where = ", ".join(f"{k} ({v}/{n})" for k, v in count.items())
    return (f"detected in {sum(len(h) > 0 for h in hits)} of {n} seeds (family-wise per seed over {m} rows, "
            f"alpha {alpha:g}): {where}")


def _pooled(accs: list[dict]) -> dict:
    k, n = sum(round(a["accuracy"] * a["n"]) for a in accs), sum(a["n"] for a in accs)
    lo, hi = wilson(k, n)
    return {"accuracy": k / n, "accuracy_lo": lo, "accuracy_hi": hi, "n": n,
            "per_seed": [a["accuracy"] for a in accs]}


def run_ladder(cfg: LadderConfig | None = None) -> dict:
    """Every seed of ``cfg.seeds`` (:func:`run_seed`), then the summary over seeds; returns tables and verdicts.

    ``table``: every row of every seed (column ``seed``); ``summary``: :func:`seed_summary`;
    ``verdicts[attribute][rung]``: a line over seeds (``"all"``, ``"residual"``, ``"tuned-lens"``,
    ``"logits"``, ``"yes/no logits"`` and, with matched rungs, ``"residual-pca"``, ``"tuned-lens-topk"``);
    ``task_accuracy`` / ``untrained_accuracy`` pooled over the seeds' held-out scenes (Wilson CI);
    the logit-lens grid and the lens KL of the first seed.
    """
    from ...readout.ladder import ladder_verdict
    from .lens import lens_grid

    cfg = cfg or LadderConfig()
    _check(cfg)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: one thread is as fast and leaves the other core free
    runs = []
    try:
        for s in cfg.seeds:
            _log(cfg, t0, f"Seed {s} ({len(runs) + 1} of {len(cfg.seeds)})...")
            one = replace(cfg, seed=s, out=str(Path(cfg.out) / f"seed{s}"))
            runs.append(run_seed(one, t0))
            if len(runs) == 1:
                grid = lens_grid(runs[0]["model"], runs[0]["eval"])
            runs[-1].pop("model"), runs[-1].pop("eval")
    finally:
        torch.set_num_threads(threads)
    table = pd.concat([r["table"] for r in runs], ignore_index=True)
    verdicts = {}
    for attr in cfg.attributes:
        per = [(r["table"][r["table"].attribute == attr], "") for r in runs]
        verdicts[attr] = {"all": _across(per, cfg.alpha)}
        for src in ("residual", "tuned-lens", "logits") + (("residual-pca", "tuned-lens-topk") if cfg.matched else ()):
            verdicts[attr][src] = _across([ladder_verdict(t[t.source == src], cfg.alpha) for t, _ in per], cfg.alpha)
        verdicts[attr]["yes/no logits"] = _across(
            [ladder_verdict(t[(t.source == "logits") & (t.k == len(ANSWERS))], cfg.alpha) for t, _ in per], cfg.alpha)
    return {"config": asdict(cfg), "task_accuracy": _pooled([r["task_accuracy"] for r in runs]),
            "untrained_accuracy": _pooled([r["untrained_accuracy"] for r in runs]),
            "final_loss": float(np.mean([r["final_loss"] for r in runs])), "table": table,
            "summary": seed_summary(table), "verdicts": verdicts, "lens_kl": runs[0]["lens_kl"],
            "seconds": time.perf_counter() - t0, "vocab": runs[0]["vocab"], "lens_grid": grid,
            "seed_verdicts": [r["verdicts"] for r in runs]}
