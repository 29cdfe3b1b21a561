"""The memorisation study in miniature (Ju et al., ICML 2025, on a tiny LLaVA on CPU).

For every seed, watermark rate ``p`` and batch size: fine-tune a copy of a tiny LLaVA on the
synthetic shapes task with a fraction ``p`` of training images carrying a username watermark
from pool U1 (seen), while recording the gradient cosine (:mod:`.gradients`). Then, on held-out
images watermarked with U1 (seen) or U2 (unseen) usernames:

- probes per layer, seen vs unseen, folds split by profile (``groups``), base vs fine-tuned
  (:func:`probekit.scan` + :func:`probekit.compare`);
- output-only baselines (:mod:`.membership`): asking "What is the username?" directly, and
  loss / Min-K% (k = 20%) membership scores on the task answer, AUC and TPR@1%FPR with
  bootstrap CIs (U1 vs U2 held-out images; and training images vs fresh images as a reference);
- controls: positive (each colour gets its own watermark profile, p = 1; probes for the
  watermark identity must find it) and negative (p = 0: nothing was planted);
- removal: a difference-of-means "watermark present" direction ablated with
  :mod:`probekit.steering` and scored by :func:`probekit.steering.evaluate` (suppression, cost);
- unlearning baselines (:mod:`.unlearning`: GA, GD, KL, NPO) on the watermarked training images.

``run_memorization(MemorizationConfig())`` is the small setting (minutes);
``MemorizationConfig.full()`` the grid reported in ``docs/results.md`` (:func:`write_results`).

Modules: :mod:`.memorization_setup` (config, image sets), :mod:`.memorization_measures`
(baselines, controls, removal), this one (the run), :mod:`.memorization_writeup` (figures, page).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from ..._stats import t_interval
from ...data.synthetic import make_task
from ...data.watermark import make_profiles
from ... import tiny
from ...models.loading import load
from ...organisms.finetune import finetune, task_accuracy
from ...organisms.gradients import GradientCosine
from .measures import CONTROL_ANSWERS, CONTROL_QUESTION, _direct, _mia, _removal, _unlearning, positive_control
from .setup import POINTS, POSITIONS, MemorizationConfig, _eval_set, _rows, _scan, _train_set  # noqa: F401
from ...report.text import fmt_ci as _fmt  # noqa: F401  (the one "value [lo, hi]"; it was a copy here)
from .writeup import _md, _other_sections, save_pngs, write_results  # noqa: F401

# The study is four modules (setup, measures, this run, the write-up); every name, private ones
# included (tests import _other_sections), stays importable from here.
__all__ = ["MemorizationConfig", "run_memorization", "write_results", "positive_control", "save_pngs",
           "POINTS", "POSITIONS", "CONTROL_QUESTION", "CONTROL_ANSWERS"]


def _log(cfg: MemorizationConfig, t0: float, msg: str) -> None:
    if cfg.verbose:
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)


def run_memorization(cfg: MemorizationConfig | None = None) -> dict:
    """Run the study; returns a dict of tidy DataFrames (every number with a 95% CI) and reports.

    Keys: ``table`` (headline per model: best-layer seen-vs-unseen probe accuracy, direct prompt,
    loss-attack AUC, each with CI), ``gradient_cosine`` (per run) and ``gradient_cosine_summary``
    (per p and batch size, CI over seeds), ``probes`` (every layer, position and model),
    ``direct``, ``mia``, ``task``, ``controls``, ``removal``, ``unlearning``, ``reports``
    (ScanReports), ``comparisons`` (:class:`probekit.report.Comparison`), ``config``, ``seconds``.
    """
    from ...report.comparison import compare

    cfg = cfg or MemorizationConfig()
    t0 = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    gc_rows, probe_rows, direct_rows, mia_rows, task_rows, ctrl_rows = [], [], [], [], [], []
    removal, unlearn_rows = None, []
    reports, comparisons = {}, {}
    keep = None
    for seed in cfg.seeds:
        ckpt = out / f"tiny-llava-s{seed}-L{cfg.num_layers}"
        if not (ckpt / "config.json").exists():
            tiny.build("llava", ckpt, seed=seed, image_size=cfg.image_size, patch_size=12, num_layers=cfg.num_layers,
                       overwrite=True, manifest=True)  # a cache: probekit.load checks it against its manifest
        base = load(ckpt)
        seen, unseen = make_profiles(cfg.n_profiles, 0, seed), make_profiles(cfg.n_profiles, 1, seed)
        ev = _eval_set(cfg, seed, seen, unseen)
        test = make_task(cfg.n_test, size=cfg.image_size, seed=seed + 2000)
        fresh = make_task(cfg.n_eval, size=cfg.image_size, seed=seed + 5000)
        r_base = _scan(base, ev, cfg, seed)
        reports[("base", seed)] = r_base
        probe_rows.append(_rows(r_base, model="base", p=math.nan, seed=seed))
        direct_rows.append(_direct(base, ev, cfg, model="base", p=math.nan, seed=seed))
        acc = task_accuracy(base, test)
        task_rows.append({"model": "base", "p": math.nan, "batch_size": math.nan, "seed": seed, **acc})
        for p in cfg.ps:
            for bs in cfg.batch_sizes:
                tuned = load(ckpt)
                train, clean = _train_set(cfg, seed, p, seen)
                gc = GradientCosine(tuned, train, clean, steps=cfg.steps, batch_size=bs, seed=seed, every=cfg.cos_every)
                t1 = time.perf_counter()
                losses = finetune(tuned, train, steps=cfg.steps, batch_size=bs, lr=cfg.lr, lora=cfg.lora, seed=seed,
                                  progress=cfg.progress, on_step=gc)
                gc_rows.append({"p": p, "batch_size": bs, "seed": seed, **gc.summary(seed=seed),
                                "final_loss": float(np.mean(losses[-5:])), "seconds": time.perf_counter() - t1})
                name = f"p={p:g}"
                _log(cfg, t0, f"seed {seed} p={p:g} bs={bs}: cos {gc_rows[-1]['cos_mean']:.5f}, loss {gc_rows[-1]['final_loss']:.3f}")
                task_rows.append({"model": name, "p": p, "batch_size": bs, "seed": seed, **task_accuracy(tuned, test)})
                if bs != cfg.probe_batch_size:
                    continue
                r = _scan(tuned, ev, cfg, seed)
                reports[(name, seed)] = r
                comparisons[(name, seed)] = compare(r_base, r, names=("base", name))
                probe_rows.append(_rows(r, model=name, p=p, seed=seed))
                direct_rows.append(_direct(tuned, ev, cfg, model=name, p=p, seed=seed))
                members = [s for s in train if s.meta.get("watermark") is not None][: cfg.n_eval] or train[: cfg.n_eval]
                mia_rows += _mia(tuned, ev, members, fresh, cfg, seed, model=name, p=p, seed=seed)
                if p == max(cfg.ps) and seed == cfg.seeds[0]:
                    keep = (tuned, train, ev, test, ckpt, seed)
        mia_rows += _mia(base, ev, train[: cfg.n_eval], fresh, cfg, seed, model="base", p=math.nan, seed=seed)
        if cfg.controls and seed == cfg.seeds[0]:
            rows, rep = positive_control(cfg, seed, ckpt)
            ctrl_rows.append(rows.assign(control="positive: watermark identity (4 profiles, watermark = answer in training)"))
            reports[("positive-control-base", seed)] = rep["base"]
            reports[("positive-control-tuned", seed)] = rep["tuned"]
    if keep is not None and cfg.removal:
        _log(cfg, t0, "removal")
        removal = _removal(cfg, *keep)
    if keep is not None and cfg.unlearning:
        _log(cfg, t0, "unlearning")
        unlearn_rows = _unlearning(cfg, *keep)

    gc = pd.DataFrame(gc_rows)
    summ = []
    for (p, bs), g in gc.groupby(["p", "batch_size"]):
        m, lo, hi = t_interval(g.cos_mean.values)
        v, vlo, vhi = t_interval(g.cos_var.values)
        summ.append({"p": p, "batch_size": bs, "seeds": len(g), "cos_mean": m, "cos_mean_lo": lo, "cos_mean_hi": hi,
                     "cos_var": v, "cos_var_lo": vlo, "cos_var_hi": vhi,
                     "cos_step_lo(seed0)": g.cos_step_lo.iloc[0], "cos_step_hi(seed0)": g.cos_step_hi.iloc[0]})
    probes = pd.concat(probe_rows, ignore_index=True)
    direct, mia = pd.DataFrame(direct_rows), pd.DataFrame(mia_rows)
    res = {
        "gradient_cosine": gc, "gradient_cosine_summary": pd.DataFrame(summ), "probes": probes, "direct": direct,
        "mia": mia, "task": pd.DataFrame(task_rows),
        "controls": pd.concat(ctrl_rows, ignore_index=True) if ctrl_rows else pd.DataFrame(),
        "removal": removal, "unlearning": pd.DataFrame(unlearn_rows), "reports": reports, "comparisons": comparisons,
        "config": asdict(cfg),
    }
    res["table"] = _headline(res)
    res["seconds"] = time.perf_counter() - t0
    return res


def _headline(res: dict) -> pd.DataFrame:
    pr = res["probes"]
    pr = pr[pr.source == "residual"] if "source" in pr.columns else pr
    rows = []
    for (model, seed), g in pr.groupby(["model", "seed"], sort=False):
        best = g.loc[g.accuracy.idxmax()]
        d = res["direct"]
        d = d[(d.model == model) & (d.seed == seed)].iloc[0]
        m = res["mia"]
        m = m[(m.model == model) & (m.seed == seed) & (m.attack == "loss") & m.membership.str.startswith("profile")].iloc[0]
        rows.append({"model": model, "seed": seed, "best_point": best.point, "best_position": best.position,
                     "probe_accuracy": best.accuracy, "probe_accuracy_lo": best.accuracy_lo, "probe_accuracy_hi": best.accuracy_hi,
                     "chance": best.chance, "layers_ci_above_chance": int((g.accuracy_lo > g.chance).sum()), "rows": len(g),
                     # the corrected count (family-wise over the scan's rows, MI above the floor): the finding
                     "layers_leaking": int(g.leaks.sum()) if "leaks" in g.columns else -1,
                     "direct_accuracy": d.accuracy, "direct_accuracy_lo": d.accuracy_lo, "direct_accuracy_hi": d.accuracy_hi,
                     "loss_auc": m.auc, "loss_auc_lo": m.auc_lo, "loss_auc_hi": m.auc_hi})
    return pd.DataFrame(rows)
