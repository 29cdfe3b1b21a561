"""Memorised facts and unlearning (MLLMU-Bench, Liu et al.; cross-modal transfer, Wen et al.) in miniature.

A tiny LLaVA is fine-tuned on fictitious profiles (:mod:`probekit.studies.unlearning.profiles`) until it answers
their facts. Then (measures in :mod:`.unlearning_measures`, removal in :mod:`.unlearning_removal`):

- utility per split (forget, retain, transformed-portrait test, never-seen) under probekit's likelihood
  protocols and MLLMU-Bench's generation protocols, asked with the portrait and by name;
- cross-modal transfer (Wen et al.): facts taught only by name asked with the portrait, and the
  reverse, on at least 50 profiles per condition, CIs by profile, the power of a null;
- positive condition: a probe per layer reads the job (4 classes) from the residual stream of
  trained profiles (folds by profile); negative: never-seen profiles and the untrained base;
  membership inference (loss, Min-K%, Min-K%++) trained vs never-seen;
- per forget split: the **retrained reference** (fine-tuned from the same base and seed without the
  forget profiles), the unlearning methods (open-unlearning's GA, GradDiff, KL, NPO and
  MLLMU-Bench's schedule as ``gd_mllmu`` / ``kl_mllmu``; :mod:`.unlearning`) and steering (fitted on
  held-out views, scored through ``evaluate()``), each with utility (``utility_destroyed`` when
  retain accuracy is not above chance), its distance from the reference, membership forget vs
  never-seen (an AUC below 0.5 is itself a signal), the job per layer read by a probe fitted on
  retain profiles and by one fitted on the forget profiles themselves (folds by profile), a
  layer-wise membership probe, and the relearning attack.

``run_study(StudyConfig.small())`` is the CI version (a few minutes); ``StudyConfig()`` the
``docs/results.md`` run (``probekit study unlearning``).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ...errors import InputError, StoreError
from ...files import atomic_dir, check_cache, finite, loads_json, model_bytes, write_manifest
from . import profiles as P
from ...organisms.unlearn import ALL_METHODS, VARIANTS, unlearn
from .measures import facts, layer_membership, mia, probe_job, probe_transfer, transfer, utility
from .removal import STEERING, relearn_attack, retrain_samples, steering, steering_columns
from .sae import SAE_METHODS, sae_steering, study_sae

__all__ = ["StudyConfig", "run_study", "STEERING", "SAE_METHODS", "HOOKED", "DISTANCES"]

#: removers that act through hooks on the running model (no weight change): no relearning attack
HOOKED = STEERING + SAE_METHODS

#: columns compared with the retrained reference (``d_<column>`` = method minus reference)
DISTANCES = ("forget_image", "forget_text", "forget_test_image", "retain_image", "retain_text", "mia_auc")


@dataclass
class StudyConfig:
    out: str = "probekit-unlearning"
    n_profiles: int = 100
    n_unseen: int = 40
    n_transfer: int = 100  # 50 taught by name only, 50 with the portrait only
    n_practice: int = 16  # trained with MLLMU-Bench's question formats too (in no split)
    # 2,480 training samples (transfer and practice profiles added): 4,700 steps keep the ~60 passes over the
    # data that 2,500 steps gave the 1,328 samples of the earlier world; at 2,500 the trained profiles' facts
    # were not learned (forget multiple choice 0.20 / 0.33 after the fine-tune, chance 0.25)
    steps: int = 4700
    batch_size: int = 32
    lr: float = 3e-3
    num_layers: int = 2
    splits: tuple = (5, 10, 15)
    methods: tuple = ALL_METHODS + STEERING + SAE_METHODS
    unlearn_steps: int = 20
    unlearn_lr: float = 1e-3
    mllmu_epochs: int = 1  # the MLLMU-Bench variants run whole forget-then-retain epochs
    relearn_steps: int = 10
    relearn_lr: float = 1e-3
    retrain: bool = True  # the reference fine-tuned without the forget set, per split
    n_eval_retain: int = 40  # retain profiles scored per method (all of them train the retain probe)
    probe_cv: int = 5
    probe_C: float = 0.1  # strong L2: few profiles per job, 64 dims
    n_boot: int = 300
    seed: int = 0
    verbose: bool = True
    rouge: bool = True
    generation: bool = True  # MLLMU-Bench's generation protocols beside the likelihood ones
    # the SAE removers (unlearning_sae.py): one SAE on the last residual layer of the tuned model
    sae_point: str = "last"
    sae_architecture: str = "topk"  # measured on this organism: ReLU/L1 at the same training cost is far denser (docs/results.md)
    sae_expansion: int = 8
    sae_k: int = 16
    sae_l1: float = 1.0
    sae_epochs: float = 20.0
    sae_latents: int = 4  # latents each SAE remover edits

    @classmethod
    def small(cls, **kw: Any) -> "StudyConfig":
        base = dict(out="probekit-unlearning-small", n_profiles=24, n_unseen=24, n_transfer=0, n_practice=0, probe_cv=3,
                    steps=450, batch_size=16, splits=(33,), methods=("npo", "ablate") + SAE_METHODS, n_eval_retain=16,
                    n_boot=200,
                    verbose=False, rouge=True)
        base.update(kw)
        return cls(**base)


def _log(cfg: StudyConfig, t0: float, msg: str) -> None:
    if cfg.verbose:
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)


def _check(cfg: StudyConfig) -> None:
    """Bad settings fail here, before any file is written or any model trained."""
    bad = [m for m in cfg.methods if m not in ALL_METHODS + HOOKED]
    if bad:
        raise InputError(f"unknown unlearning method(s) {bad}", fix=f"choose from {ALL_METHODS + HOOKED}")
    if not cfg.splits or any(not 0 < s < 100 for s in cfg.splits):
        raise InputError(f"forget splits must be percentages in (0, 100), got {cfg.splits}", fix="pass e.g. (5, 10, 15)")
    if min(cfg.n_unseen, cfg.n_profiles) < 4 * cfg.probe_cv:
        raise InputError(f"n_unseen={cfg.n_unseen} is too few for {cfg.probe_cv}-fold probes over 4 jobs",
                         fix=f"use n_unseen >= {4 * cfg.probe_cv}")
    w = P.make_world(cfg.n_profiles, cfg.n_unseen, cfg.n_transfer, seed=cfg.seed, n_practice=cfg.n_practice)  # validates
    few = [s for s in cfg.splits if len(w.forget(s)) < 2]
    if few:
        raise InputError(f"forget split(s) {few}% of {cfg.n_profiles} profiles leave fewer than 2 forget profiles",
                         fix="use larger splits or more profiles (probes and steering folds need 2 forget profiles)")


def _tuned(cfg: StudyConfig, world: P.World, ckpt: Path, samples: Sequence[Any], name: str) -> tuple[Any, list]:
    """Fine-tune from the base at ``ckpt`` on ``samples`` (cached under ``out/<name>-<settings>``)."""

    out = Path(cfg.out)
    d = out / (f"{name}-n{cfg.n_profiles}-u{cfg.n_unseen}-t{cfg.n_transfer}-p{cfg.n_practice}-st{cfg.steps}"
               f"-b{cfg.batch_size}-lr{cfg.lr:g}-L{cfg.num_layers}-s{cfg.seed}")
    if (d / "model.safetensors").exists():  # cached fine-tune (same settings, same seed), checked
        return _cached(d)
    sub = P.World(world.profiles, world.trained, world.text_only, world.image_only, world.unseen, list(samples),
                  world.image_size, world.seed, world.practice)
    model, losses = P.train(sub, ckpt, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                            num_layers=cfg.num_layers, seed=cfg.seed)
    with atomic_dir(d, "fine-tuned checkpoint", needed=lambda: model_bytes(model)) as tmp:
        model.hf.save_pretrained(tmp)
        model.processor.save_pretrained(tmp)
        (tmp / "losses.json").write_text(json.dumps(losses))
        write_manifest(tmp, {"generator": "probekit.studies.unlearning.study"})
    return model, losses


def _steps(method: str, cfg: StudyConfig, n_forget: int, n_retain: int, batch_size: int = 16) -> int:
    """Optimiser steps: ``cfg.unlearn_steps``, or whole MLLMU-Bench epochs (a forget epoch, then a retain epoch)."""
    if method in VARIANTS:
        return cfg.mllmu_epochs * (math.ceil(n_forget / batch_size) + math.ceil(n_retain / batch_size))
    return cfg.unlearn_steps


def _clean(world: P.World) -> list:
    """The clean inputs of the KL cost: never-seen profiles' questions, with the portrait and by name."""
    return facts(world, world.unseen, "image") + facts(world, world.unseen, "text")


def _kl_clean(net, clean: list, ref, cfg) -> dict:
    """KL(tuned || this model) of the next token after each clean question, nats, mean and 95% bootstrap CI."""
    from ..._stats import bootstrap_mean
    from ...steering.outputs import next_token_kl, next_token_logprobs

    lp = next_token_logprobs(net, [s.image for s in clean], [s.question for s in clean], 64)
    kl = next_token_kl(ref, lp)
    m, lo, hi = bootstrap_mean(kl, cfg.seed, cfg.n_boot)
    return {"kl_clean": m, "kl_clean_lo": lo, "kl_clean_hi": hi}


def _measure(net, world, split, method, forget, retain, cfg, main_split, ctx=None, ref=None) -> tuple[dict, list, list, list]:
    """Utility, membership, probes (retain-fitted and forget-fitted), layer-wise membership and the KL on
    clean inputs (``ref``: the tuned model's next-token log-probabilities there) of one model."""
    with ctx if ctx is not None else contextlib.nullcontext():
        kl = _kl_clean(net, _clean(world), ref, cfg) if ref is not None else {}
        u = utility(net, world, forget, retain[:cfg.n_eval_retain], cfg, rouge=cfg.rouge and split == main_split,
                    unseen=False, generation=cfg.generation)
        m = mia(net, world, forget, cfg, split=split, method=method)
        probes = [probe_transfer(net, world, retain[:2 * cfg.n_eval_retain], forget, cfg, split=split, method=method,
                                 fit="retain profiles")]
        if min(sum(world.profile(i).facts["job"] == j for i in forget) for j in P.JOBS) >= 2:
            probes.append(probe_job(net, world, forget, cfg, cv=min(cfg.probe_cv, 3), split=split, method=method,
                                    fit="forget profiles (folds by profile)"))
        lm = [layer_membership(net, world, forget, cfg, split=split, method=method, stage="after removal")]
    loss = next(r for r in m if r["attack"] == "loss")
    u.update(kl)
    u.update({"mia_auc": loss["auc"], "mia_auc_lo": loss["auc_lo"], "mia_auc_hi": loss["auc_hi"],
              "mia_below_half": loss["below_half"], "member_acc": float(lm[0].accuracy.max()),
              "member_detected": int(lm[0].detected.sum())})
    return u, m, probes, lm


def _cached(tuned_dir: Path) -> tuple[Any, list[float]]:
    """The cached fine-tune and its losses, checked: files against the manifest, losses.json's schema."""
    from ...models.loading import load

    fix = f"delete {tuned_dir}; the next run fine-tunes again"
    check_cache(tuned_dir, "cached fine-tune", fix)
    losses = loads_json((tuned_dir / "losses.json").read_bytes(), f"{tuned_dir / 'losses.json'}", fix=fix)
    if not isinstance(losses, list) or not losses or not all(finite(x) for x in losses):
        raise StoreError(f"{tuned_dir / 'losses.json'} is not a non-empty list of finite numbers", fix=fix)
    return load(tuned_dir), [float(x) for x in losses]


def run_study(cfg: StudyConfig | None = None) -> dict:
    """Fine-tune, measure, unlearn; returns tidy DataFrames (every number with a 95% CI).

    Keys: ``train``, ``utility_tuned`` / ``utility_base``, ``probes``, ``mia``, ``transfer``, ``unlearning``
    (one row per split and method, ``retrain`` the reference, ``d_*`` distances from it, relearning
    columns), ``unlearning_mia``, ``unlearning_probes`` (column ``fit``: retain-fitted or forget-fitted),
    ``membership_layers`` (layer-wise membership after removal and after relearning), ``steering_eval``
    (the ``evaluate()`` tables), ``sae`` (the SAE's quality record) and ``sae_sweep`` (the settings the SAE
    removers chose among, on held-out views), ``config``, ``seconds``. Every row of ``unlearning`` has
    ``kl_clean``: KL(tuned || method) of the next token on never-seen profiles' questions.
    """
    from ...models.loading import load

    cfg = cfg or StudyConfig()
    _check(cfg)
    t0 = time.perf_counter()
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    world = P.make_world(cfg.n_profiles, cfg.n_unseen, cfg.n_transfer, seed=cfg.seed, n_practice=cfg.n_practice)
    ckpt = Path(cfg.out) / f"tiny-llava-facts-s{cfg.seed}-L{cfg.num_layers}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tuned, losses = _tuned(cfg, world, ckpt, world.train, "tuned")
        t_train = time.perf_counter() - t0
        _log(cfg, t0, f"fine-tuned {cfg.steps} steps, final loss {np.mean(losses[-20:]):.3f}")
        base = load(ckpt)
        state = {k: v.clone() for k, v in tuned.hf.state_dict().items()}
        main_split = max(cfg.splits)
        forget, retain = world.forget(main_split), world.retain(main_split)
        res: dict[str, Any] = {"config": asdict(cfg), "train": {"final_loss": float(np.mean(losses[-20:])),
                                                                  "seconds": t_train, "samples": len(world.train)}}
        res["utility_tuned"] = utility(tuned, world, forget, retain[:cfg.n_eval_retain], cfg, rouge=cfg.rouge,
                                       generation=cfg.generation)
        res["utility_base"] = utility(base, world, forget, retain[:cfg.n_eval_retain], cfg, rouge=cfg.rouge,
                                      generation=cfg.generation)
        _log(cfg, t0, "utility")
        res["probes"] = pd.concat([probe_job(tuned, world, world.trained, cfg, model="tuned", profiles="trained"),
                                   probe_job(tuned, world, world.unseen, cfg, model="tuned", profiles="never seen"),
                                   probe_job(base, world, world.trained, cfg, model="base", profiles="trained")],
                                  ignore_index=True)
        res["mia"] = pd.DataFrame(mia(tuned, world, world.trained, cfg, model="tuned")
                                  + mia(base, world, world.trained, cfg, model="base"))
        res["transfer"] = transfer(tuned, world, cfg)
        _log(cfg, t0, "probes, MIA, transfer")
        from ...steering.outputs import next_token_logprobs

        clean = _clean(world)
        ref = next_token_logprobs(tuned, [s.image for s in clean], [s.question for s in clean], 64)
        sae = None
        if any(m in SAE_METHODS for m in cfg.methods):
            sae, res["sae"] = study_sae(tuned, world, cfg)
            _log(cfg, t0, f"SAE on {res['sae']['point']}: held-out FVU {res['sae']['heldout_fvu']:.3f}, "
                          f"L0 {res['sae']['heldout_l0']:.1f}, loss recovered {res['sae'].get('loss_recovered', math.nan):.2f}")
        rows, mrows, prows, lrows, srows, sweeps = [], [], [], [], [], []
        for split in cfg.splits:
            forget, retain = world.forget(split), world.retain(split)
            f_s = [s for s in world.train if s.pid in set(forget)]
            r_s = [s for s in world.train if s.pid in set(retain)]
            before = None
            for method in ("none",) + (("retrain",) if cfg.retrain else ()) + tuple(cfg.methods):
                t1 = time.perf_counter()
                net, ctx, extra = tuned, None, {}
                tuned.hf.load_state_dict(state)
                if method == "retrain":
                    net, _ = _tuned(cfg, world, ckpt, retrain_samples(world, forget), f"retrain{split}")
                elif method in ALL_METHODS:
                    unlearn(tuned, f_s, r_s, method, steps=_steps(method, cfg, len(f_s), len(r_s)), batch_size=16,
                            lr=cfg.unlearn_lr, seed=cfg.seed)
                elif method in STEERING:
                    make, report = steering(tuned, world, forget, retain, method, cfg)
                    ctx, extra = make(), steering_columns(report)
                    srows.append(report.table.assign(split=split, method=method))
                elif method in SAE_METHODS:
                    make, report, sweep, info = sae_steering(tuned, sae, world, forget, retain, method, cfg)
                    ctx, extra = make(), {**steering_columns(report), **info}
                    srows.append(report.table.assign(split=split, method=method))
                    sweeps.append(sweep.assign(split=split))
                u, m, probes, lm = _measure(net, world, split, method, forget, retain, cfg, main_split, ctx, ref)
                before = u if method == "none" else before
                if method not in HOOKED:  # relearning edits the weights under a hook: steering is left out
                    back, lm2 = relearn_attack(net, world, forget, r_s, cfg, before, u, split=split, method=method)
                    u.update(back)
                    lm.append(lm2)
                mrows += m
                prows += probes
                lrows += lm
                rows.append({"split": split, "method": method, "forget_profiles": len(forget),
                             "seconds": time.perf_counter() - t1, **u, **extra})
                _log(cfg, t0, f"split {split}% {method}: forget {u['forget_image']:.2f}/{u['forget_text']:.2f}, "
                              f"retain {u['retain_image']:.2f}/{u['retain_text']:.2f}")
        tuned.hf.load_state_dict(state)
    finally:
        torch.set_num_threads(threads)
    res["unlearning"] = _distances(pd.DataFrame(rows))
    res["unlearning_mia"] = pd.DataFrame(mrows)
    res["unlearning_probes"] = _probe_distances(pd.concat(prows, ignore_index=True))
    res["membership_layers"] = pd.concat(lrows, ignore_index=True)
    res["steering_eval"] = pd.concat(srows, ignore_index=True) if srows else pd.DataFrame()
    res["sae_sweep"] = pd.concat(sweeps, ignore_index=True) if sweeps else pd.DataFrame()
    res["seconds"] = time.perf_counter() - t0
    return res


def _distances(u: pd.DataFrame) -> pd.DataFrame:
    """``d_<column>``: each row minus the retrained reference of its split (NaN without a reference)."""
    for col in DISTANCES:
        ref = u[u.method == "retrain"].set_index("split")[col] if (u.method == "retrain").any() else pd.Series(dtype=float)
        u[f"d_{col}"] = u[col] - u.split.map(ref)
    return u


def _probe_distances(t: pd.DataFrame) -> pd.DataFrame:
    keys = ["split", "fit", "features", "point", "position"]
    ref = t[t.method == "retrain"].set_index(keys).accuracy
    t["d_accuracy"] = [r.accuracy - ref.get(tuple(getattr(r, k) for k in keys), np.nan) for r in t.itertuples()]
    return t
