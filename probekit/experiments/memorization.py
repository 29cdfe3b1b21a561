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
"""

from __future__ import annotations

import datetime as _dt
import math
import platform
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..data.synthetic import make_task
from ..data.watermark import apply_watermarks, make_profiles, render
from ..models import tiny
from ..models.loading import load
from .finetune import finetune, task_accuracy
from .gradients import GradientCosine
from .membership import answer_logprobs, direct_prompt, loss_score, mia_metrics, min_k_score
from .unlearning import METHODS, unlearn

__all__ = ["MemorizationConfig", "run_memorization", "write_results", "positive_control"]

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


# ----------------------------------------------------------------------------------------- data


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
    import probekit

    return probekit.scan(model, ev["images"], labels=labels or ev["labels"], prompts=cfg.prompt,
                         groups=ev["groups"] if groups == "default" else groups, points=POINTS, positions=POSITIONS,
                         seed=seed, n_boot=cfg.n_boot, progress=cfg.progress)


def _rows(report, **tags) -> pd.DataFrame:
    cols = ["point", "layer", "position", "source", "accuracy", "accuracy_lo", "accuracy_hi", "chance",
            "mi_bits", "mi_lo", "mi_hi", "mi_perm_bits", "control_accuracy", "selectivity", "p_value", "p_adjusted", "leaks"]
    t = report.table[[c for c in cols if c in report.table.columns]].copy()
    for k, v in tags.items():
        t[k] = v
    return t


def _mia(net, ev: dict, members_train: list, nonmembers: list, cfg: MemorizationConfig, rs: int, **tags) -> list[dict]:
    out = []
    seen = np.array([lab == "seen" for lab in ev["labels"]])
    lp_eval = answer_logprobs(net, ev["samples"])
    lp_m, lp_n = answer_logprobs(net, members_train), answer_logprobs(net, nonmembers)
    for attack, fn in (("loss", loss_score), ("min-k 20%", lambda t: min_k_score(t, 0.2))):
        out.append({**tags, "membership": "profile (U1 vs U2 held-out)", "attack": attack,
                    **mia_metrics(fn(lp_eval), seen, n_boot=cfg.n_boot, seed=rs)})
        sc = np.concatenate([fn(lp_m), fn(lp_n)])
        y = np.r_[np.ones(len(lp_m)), np.zeros(len(lp_n))]
        out.append({**tags, "membership": "image (train vs fresh)", "attack": attack,
                    **mia_metrics(sc, y, n_boot=cfg.n_boot, seed=rs)})
    return out


def _direct(net, ev: dict, cfg: MemorizationConfig, **tags) -> dict:
    r = direct_prompt(net, ev["images"], ev["usernames"], [lab == "seen" for lab in ev["labels"]], prompt=cfg.prompt)
    r["examples"] = " | ".join(repr(x) for x in r["examples"][:2])
    return {**tags, **r}


# ------------------------------------------------------------------------------------- controls


CONTROL_QUESTION = "Which tag is written?"
CONTROL_ANSWERS = ("one", "two", "three", "four")


def positive_control(cfg: MemorizationConfig, seed: int, ckpt: Path) -> tuple[pd.DataFrame, dict]:
    """A watermark perfectly tied to the answer in training; probes must find its identity.

    Four U1-style profiles; in training every image carries one of them (p = 1) and the answer to
    ``CONTROL_QUESTION`` is that profile's word (``CONTROL_ANSWERS``), so the watermark is the only
    cue. Held-out images get a profile at random; the probe label is the profile (4 classes,
    chance = majority rate, no groups: the label *is* the profile). Drawn with
    ``cfg.control_mode`` (default ``"pattern"`` with ``cfg.control_cell`` px cells: a 4x4 block
    pattern, which a 96 px image shows far more clearly than 11 px text). Returns the probe rows (base and tuned, plus the tuned
    model's held-out answer accuracy in ``answer_accuracy*``) and the two reports.
    """
    import probekit

    profs = make_profiles(len(CONTROL_ANSWERS), pool=0, seed=seed + 50)

    def samples(n: int, s: int) -> tuple[list, list[int]]:
        task = make_task(n, size=cfg.image_size, seed=s, kinds=("colour",))
        rng = random.Random(s + 1)
        ks = [rng.randrange(len(profs)) for _ in task]
        for t, k in zip(task, ks):
            t.image = render(t.image, profs[k], rng, mode=cfg.control_mode, cell=cfg.control_cell)
            t.question, t.answer = CONTROL_QUESTION, CONTROL_ANSWERS[k]
        return task, ks

    train, _ = samples(cfg.n_train, seed + 60)
    tuned = load(ckpt)
    finetune(tuned, train, steps=cfg.control_steps, batch_size=cfg.probe_batch_size, lr=cfg.control_lr, lora=cfg.lora,
             seed=seed, progress=cfg.progress)
    ev, ks = samples(cfg.control_n_eval, seed + 70)
    acc = task_accuracy(tuned, ev)
    images = [t.image for t in ev]
    kw = dict(labels=[f"profile{k}" for k in ks], prompts=cfg.prompt, points=POINTS, positions=POSITIONS,
              seed=seed, n_boot=cfg.n_boot, progress=cfg.progress)
    rb = probekit.scan(load(ckpt), images, **kw)
    rt = probekit.scan(tuned, images, **kw)
    rows = pd.concat([_rows(rb, model="base", seed=seed),
                      _rows(rt, model="tuned (watermark = answer)", seed=seed).assign(
                          answer_accuracy=acc["accuracy"], answer_accuracy_lo=acc["accuracy_lo"],
                          answer_accuracy_hi=acc["accuracy_hi"])])
    return rows, {"base": rb, "tuned": rt}


# --------------------------------------------------------------------------------- the study


def _log(cfg: MemorizationConfig, t0: float, msg: str) -> None:
    if cfg.verbose:
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)


def _ci_over_seeds(x: np.ndarray) -> tuple[float, float, float]:
    x = np.asarray(x, dtype=float)
    m = float(x.mean())
    if len(x) < 2:
        return m, math.nan, math.nan
    from scipy import stats

    h = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return m, m - h, m + h


def run_memorization(cfg: MemorizationConfig | None = None) -> dict:
    """Run the study; returns a dict of tidy DataFrames (every number with a 95% CI) and reports.

    Keys: ``table`` (headline per model: best-layer seen-vs-unseen probe accuracy, direct prompt,
    loss-attack AUC, each with CI), ``gradient_cosine`` (per run) and ``gradient_cosine_summary``
    (per p and batch size, CI over seeds), ``probes`` (every layer, position and model),
    ``direct``, ``mia``, ``task``, ``controls``, ``removal``, ``unlearning``, ``reports``
    (ScanReports), ``comparisons`` (:class:`probekit.report.Comparison`), ``config``, ``seconds``.
    """
    import probekit

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
                       overwrite=True)
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
                comparisons[(name, seed)] = probekit.compare(r_base, r, names=("base", name))
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
        m, lo, hi = _ci_over_seeds(g.cos_mean.values)
        v, vlo, vhi = _ci_over_seeds(g.cos_var.values)
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
                     # the corrected count (Holm over the scan's rows, MI above the floor): the finding
                     "layers_leaking": int(g.leaks.sum()) if "leaks" in g.columns else -1,
                     "direct_accuracy": d.accuracy, "direct_accuracy_lo": d.accuracy_lo, "direct_accuracy_hi": d.accuracy_hi,
                     "loss_auc": m.auc, "loss_auc_lo": m.auc_lo, "loss_auc_hi": m.auc_hi})
    return pd.DataFrame(rows)


def _removal(cfg: MemorizationConfig, tuned, train, ev, test, ckpt, seed) -> dict:
    """Ablate a difference-of-means 'watermark present' direction; suppression and cost."""
    from ..hooks.collect import collect
    from ..steering import Direction, ablate, evaluate

    seen, unseen = make_profiles(cfg.n_profiles, 0, seed), make_profiles(cfg.n_profiles, 1, seed)
    fit = _eval_set(cfg, seed, seen, unseen, offset=3000)
    imgs = fit["images"] + fit["clean"]
    y = [1] * len(fit["images"]) + [0] * len(fit["clean"])
    store = collect(tuned, imgs, cfg.prompt, points="lm.*.resid", positions="last", progress=False)
    d = Direction.from_means(store, y)
    images = ev["images"] + ev["clean"]
    labels = [1] * len(ev["images"]) + [0] * len(ev["clean"])
    groups = ev["groups"] * 2
    rep = evaluate(tuned, lambda: ablate(tuned, d), images, labels, clean_images=ev["clean"], task_samples=test,
                   prompts=cfg.prompt, clean_prompts=cfg.prompt, points="lm.*.resid", positions=POSITIONS,
                   groups=groups, seed=seed, n_boot=cfg.n_boot)
    rep_su = evaluate(tuned, lambda: ablate(tuned, d), ev["images"], ev["labels"], clean_images=ev["clean"],
                      prompts=cfg.prompt, clean_prompts=cfg.prompt, points="lm.*.resid", positions=POSITIONS,
                      groups=ev["groups"], seed=seed, n_boot=cfg.n_boot)
    return {"presence": rep, "seen_unseen": rep_su, "direction": repr(d)}


def _unlearning(cfg: MemorizationConfig, tuned, train, ev, test, ckpt, seed) -> list[dict]:
    from .._stats import bootstrap_mean
    from ..steering.evaluation import next_token_logprobs

    state = {k: v.clone() for k, v in tuned.hf.state_dict().items()}
    forget = [s for s in train if s.meta.get("watermark") is not None]
    retain = make_task(len(forget), size=cfg.image_size, seed=seed + 4000)
    fresh = make_task(len(forget), size=cfg.image_size, seed=seed + 5000)
    before = next_token_logprobs(tuned, ev["clean"], cfg.prompt)
    rows = []
    for method in ("none",) + tuple(cfg.unlearning):
        m = load(ckpt)
        m.hf.load_state_dict(state)
        if method != "none":
            unlearn(m, forget, retain, method, steps=cfg.unlearn_steps, batch_size=cfg.probe_batch_size,
                    lr=cfg.unlearn_lr, seed=seed)
        after = next_token_logprobs(m, ev["clean"], cfg.prompt)
        kl = (before.exp() * (before - after)).sum(-1).clamp_min(0).numpy()
        klm, kllo, klhi = bootstrap_mean(kl, seed, 2000)
        r = _scan(m, ev, cfg, seed)
        t = r.table[r.table.source == "residual"]
        best = t.loc[t.accuracy.idxmax()]
        lp_f, lp_n = answer_logprobs(m, forget), answer_logprobs(m, fresh)
        sc = np.concatenate([loss_score(lp_f), loss_score(lp_n)])
        mia = mia_metrics(sc, np.r_[np.ones(len(lp_f)), np.zeros(len(lp_n))], n_boot=cfg.n_boot, seed=seed)
        acc = task_accuracy(m, test)
        fl = -loss_score(lp_f)
        rows.append({"method": method, "steps": 0 if method == "none" else cfg.unlearn_steps,
                     "probe_best": best.accuracy, "probe_best_lo": best.accuracy_lo, "probe_best_hi": best.accuracy_hi,
                     "probe_point": f"{best.point}@{best.position}", "chance": best.chance,
                     "task_accuracy": acc["accuracy"], "task_lo": acc["accuracy_lo"], "task_hi": acc["accuracy_hi"],
                     "kl_clean": klm, "kl_lo": kllo, "kl_hi": klhi,
                     "forget_nll": float(fl.mean()), "forget_vs_fresh_auc": mia["auc"], "auc_lo": mia["auc_lo"],
                     "auc_hi": mia["auc_hi"]})
    return rows


# ------------------------------------------------------------------------------------ write-up


def _fmt(v, lo, hi, d=2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if lo is None or (isinstance(lo, float) and math.isnan(lo)):
        return f"{v:.{d}f}"
    return f"{v:.{d}f} [{lo:.{d}f}, {hi:.{d}f}]"


def _md(df: pd.DataFrame) -> str:
    if df is None or len(df) == 0:
        return "(none)\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in df.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(lines) + "\n"


def figures(res: dict) -> dict:
    """Plotly figures of the study (name -> figure)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from .. import plots

    figs = {}
    s, g = res["gradient_cosine_summary"], res["gradient_cosine"]
    g = res["gradient_cosine"]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("mean cos per run", "variance of cos over steps"))
    for p, d in s.groupby("p"):
        d = d.sort_values("batch_size")
        pts = g[g.p == p]
        for col, key in ((1, "cos_mean"), (2, "cos_var")):
            err = (d[f"{key}_hi"] - d[key]).fillna(0)
            fig.add_trace(go.Scatter(x=d.batch_size, y=d[key], error_y=dict(array=err), mode="lines+markers",
                                     name=f"p={p:g}", legendgroup=f"p{p}", showlegend=col == 1), row=1, col=col)
            fig.add_trace(go.Scatter(x=pts.batch_size, y=pts[key], mode="markers", marker=dict(size=5, opacity=0.4),
                                     name=f"p={p:g} seeds", legendgroup=f"p{p}", showlegend=False), row=1, col=col)
    fig.update_xaxes(type="log", title="batch size")
    fig.update_layout(title="Gradient cosine: batch as trained vs the same batch without watermarks (95% CI over seeds)",
                      height=420, width=950)
    figs["gradient-cosine"] = fig

    pr = res["probes"]
    pr = pr[(pr.source == "residual") & (pr.seed == pr.seed.min())]
    fig = make_subplots(rows=1, cols=2, subplot_titles=POSITIONS, shared_yaxes=True)
    order = plots.point_order(pr.point.unique())
    for i, pos in enumerate(POSITIONS, 1):
        for model, d in pr[pr.position == pos].groupby("model", sort=False):
            d = d.set_index("point").loc[[o for o in order if o in set(d.point)]]
            fig.add_trace(go.Scatter(x=list(d.index), y=d.accuracy, mode="lines+markers", name=model, legendgroup=model,
                                     showlegend=i == 1, error_y=dict(type="data", symmetric=False,
                                                                     array=d.accuracy_hi - d.accuracy,
                                                                     arrayminus=d.accuracy - d.accuracy_lo)), row=1, col=i)
        fig.add_hline(y=float(pr.chance.max()), line_dash="dot", row=1, col=i)
    fig.update_yaxes(title="seen vs unseen probe accuracy", range=[0.2, 1.02], row=1, col=1)
    fig.update_layout(title=f"Seen (U1) vs unseen (U2) watermark, probes per layer (folds by profile; seed {int(pr.seed.min())})",
                      height=450, width=1000)
    figs["probes"] = fig

    comps = res["comparisons"]
    if comps:
        key = max(comps, key=lambda k: (float(k[0].split("=")[1]), -k[1]))
        c = comps[key]
        figs["compare"] = plots.compare_curves(c.base.table, c.tuned.table, names=("base", key[0]),
                                               title=f"base vs fine-tuned ({key[0]}, seed {key[1]}): seen vs unseen")

    m = res["mia"]
    if len(m):
        fig = go.Figure()
        for (memb, attack), d in m.groupby(["membership", "attack"], sort=False):
            d = d.groupby("model", sort=False).agg(auc=("auc", "mean"), lo=("auc_lo", "mean"), hi=("auc_hi", "mean")).reset_index()
            fig.add_trace(go.Scatter(x=d.model, y=d.auc, mode="markers", name=f"{memb}, {attack}", marker=dict(size=10),
                                     error_y=dict(type="data", symmetric=False, array=d.hi - d.auc, arrayminus=d.auc - d.lo)))
        fig.add_hline(y=0.5, line_dash="dot")
        fig.update_layout(title="Membership-inference AUC (mean over seeds of AUC and of its bootstrap CI ends)",
                          yaxis_title="AUC", height=420, width=950)
        figs["mia"] = fig
    return figs


_OTHER_STUDIES = ("ladder", "study:unlearning", "watermark-study")


def _other_sections(text: str) -> list[tuple[int, int]]:
    """Character spans of the other studies' ``<!-- name -->`` ... ``<!-- /name -->`` sections."""
    spans = []
    for name in _OTHER_STUDIES:
        start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
        if start in text and end in text:
            spans.append((text.index(start), text.index(end) + len(end)))
    return sorted(spans)


def write_results(res: dict, md_path: str | Path = "docs/results.md", img_dir: str | Path = "docs/img",
                  command: str = "probekit study memorization --full") -> list[Path]:
    """Write the results page and its PNG figures; keeps the text between ``<!-- notes -->`` markers."""
    md_path, img_dir = Path(md_path), Path(img_dir)
    img_dir.mkdir(parents=True, exist_ok=True)
    notes = "<!-- notes -->\n(no reading written yet)\n<!-- /notes -->"
    others = ""  # the other studies' own sections (ladder, unlearning, watermark) are kept as they are
    if md_path.exists():
        old = md_path.read_text()
        others = "".join("\n\n" + old[a:b] + "\n" for a, b in _other_sections(old))
        if "<!-- notes -->" in old and "<!-- /notes -->" in old:
            notes = old[old.index("<!-- notes -->"):old.index("<!-- /notes -->") + len("<!-- /notes -->")]
    written = []
    imgs = {}
    for name, fig in figures(res).items():
        path = img_dir / f"results-{name}.png"
        try:
            fig.write_image(str(path), scale=1.5)
        except Exception as exc:  # kaleido / chromium missing
            print(f"could not export {path}: {exc}")
            continue
        imgs[name] = path
        written.append(path)
    cfg = res["config"]
    rel = lambda p: Path(p).relative_to(md_path.parent) if Path(p).is_relative_to(md_path.parent) else p  # noqa: E731
    L = ["# Results: the memorisation study in miniature\n",
         f"Generated {_dt.date.today().isoformat()} by `{command}` on {platform.machine()} CPU "
         f"({torch.get_num_threads()} torch threads; a 2-core machine shared with other jobs), "
         f"probekit study run time {res['seconds'] / 60:.1f} min. Every table below comes from that run.\n",
         "## Settings\n",
         "```\n" + "\n".join(f"{k} = {v}" for k, v in cfg.items()) + "\n```\n",
         "Model: a tiny random-init LLaVA (`probekit.tiny.build('llava', image_size=96, patch_size=12, "
         f"num_layers={cfg['num_layers']})`, hidden size 64), full fine-tuning (AdamW, cosine schedule), "
         "answer-token loss. Task: synthetic shapes/colours/counts. Watermark: the username line of a fake profile "
         "(`render(mode='username')`), white at 50% opacity at a random position, applied with probability p; "
         "U1 (seen) and U2 (unseen) are disjoint pools of profiles. The same number of steps is used for every batch "
         "size (so larger batches see more images). Probes: `probekit.scan` (logistic regression per point and position, "
         "5-fold `StratifiedGroupKFold` by profile, 95% CIs from a group bootstrap). This is a far smaller model, "
         "shorter training and fewer seeds than Ju et al. (LLaVA-1.5-7B, LoRA, one epoch of ~600k images).\n",
         "## Reading\n", notes + "\n",
         "## Headline per model (best residual layer; CIs are 95%)\n"]
    t = res["table"]
    L.append(_md(pd.DataFrame({
        "model": t.model, "seed": t.seed, "best point @ position": t.best_point + " @ " + t.best_position,
        "probe acc (seen vs unseen)": [_fmt(*r) for r in zip(t.probe_accuracy, t.probe_accuracy_lo, t.probe_accuracy_hi)],
        "chance": t.chance.round(2), "rows with CI above chance": t.layers_ci_above_chance.astype(str) + "/" + t.rows.astype(str),
        "rows leaking (Holm)": t.layers_leaking.astype(str) + "/" + t.rows.astype(str),
        "direct prompt acc": [_fmt(*r) for r in zip(t.direct_accuracy, t.direct_accuracy_lo, t.direct_accuracy_hi)],
        "loss-attack AUC (U1 vs U2)": [_fmt(*r) for r in zip(t.loss_auc, t.loss_auc_lo, t.loss_auc_hi)]})))
    L.append("\n## Gradient cosine similarity\n")
    L.append("Definition: at each step, cos(g(B), g(B_clean)) where g is the gradient of the mean answer-token "
             "cross-entropy with respect to all trainable parameters (flattened), B the mini-batch as trained and "
             "B_clean the same samples with their unwatermarked images; computed in the `on_step` callback with "
             "`torch.autograd.grad` (the optimiser's gradients and the RNG state are untouched; the test checks the "
             "trajectory is bit-identical). Mean and variance over steps per run; CI: t-interval over seeds "
             "(with one seed only the step-bootstrap CI of seed 0 is given).\n")
    s, g = res["gradient_cosine_summary"], res["gradient_cosine"]
    sci = lambda v, lo, hi: (f"{v:.2e}" if isinstance(lo, float) and math.isnan(lo)  # noqa: E731
                             else f"{v:.2e} [{lo:.2e}, {hi:.2e}]")
    L.append(_md(pd.DataFrame({"p": s.p, "batch size": s.batch_size, "seeds": s.seeds,
                               "1 - mean cos": [sci(1 - m, 1 - hi, 1 - lo) for m, lo, hi in zip(s.cos_mean, s.cos_mean_lo, s.cos_mean_hi)],
                               "var of cos over steps": [sci(*r) for r in zip(s.cos_var, s.cos_var_lo, s.cos_var_hi)],
                               "1 - mean cos, step-bootstrap CI (seed 0)": [f"[{1 - b:.2e}, {1 - a:.2e}]" for a, b in
                                                                           zip(s["cos_step_lo(seed0)"], s["cos_step_hi(seed0)"])]})))
    L.append("\nPer run (1 - mean cos over the measured steps, and the fraction of watermarked images per batch):\n")
    L.append(_md(pd.DataFrame({"p": g.p, "batch size": g.batch_size, "seed": g.seed, "1 - mean cos": [f"{1 - v:.2e}" for v in g.cos_mean],
                               "min cos": [f"{v:.6f}" for v in g.cos_min], "var": [f"{v:.2e}" for v in g.cos_var],
                               "watermarked fraction": g.marked_frac.round(2), "steps measured": g.steps,
                               "final loss": g.final_loss.round(3)})))
    if "gradient-cosine" in imgs:
        L.append(f"\n![gradient cosine]({rel(imgs['gradient-cosine'])})\n")
    L.append("\n## Probes per layer: seen vs unseen\n")
    for k in ("probes", "compare"):
        if k in imgs:
            L.append(f"![{k}]({rel(imgs[k])})\n")
    pr = res["probes"]
    pr = pr[pr.source == "residual"]
    L.append(_md(pd.DataFrame({"model": pr.model, "seed": pr.seed, "point": pr.point, "position": pr.position,
                               "accuracy": [_fmt(*r) for r in zip(pr.accuracy, pr.accuracy_lo, pr.accuracy_hi)],
                               "chance": pr.chance.round(2),
                               "MI bits": [_fmt(*r, d=3) for r in zip(pr.mi_bits, pr.mi_lo, pr.mi_hi)],
                               "MI perm floor": pr.mi_perm_bits.round(3)})))
    lg = res["probes"][res["probes"].source != "residual"]
    if len(lg):
        L.append("\nFrom the top-k output logits only (same labels and folds):\n")
        L.append(_md(pd.DataFrame({"model": lg.model, "seed": lg.seed, "position": lg.position, "source": lg.source,
                                   "accuracy": [_fmt(*r) for r in zip(lg.accuracy, lg.accuracy_lo, lg.accuracy_hi)]})))
    L.append("\n## Asking directly (\"What is the username?\", greedy)\n")
    d = res["direct"]
    L.append(_md(pd.DataFrame({"model": d.model, "seed": d.seed,
                               "accuracy seen vs unseen": [_fmt(*r) for r in zip(d.accuracy, d.accuracy_lo, d.accuracy_hi)],
                               "contains username (seen)": [_fmt(*r) for r in zip(d.contains_seen, d.contains_seen_lo, d.contains_seen_hi)],
                               "contains username (unseen)": [_fmt(*r) for r in zip(d.contains_unseen, d.contains_unseen_lo, d.contains_unseen_hi)],
                               "first token hit (seen)": [_fmt(*r) for r in zip(d.first_token_seen, d.first_token_seen_lo, d.first_token_seen_hi)],
                               "example answers": d.examples})))
    L.append("\n## Membership inference (loss, Min-K% k=20%, on the task answer tokens)\n")
    if "mia" in imgs:
        L.append(f"![mia]({rel(imgs['mia'])})\n\nLoss and Min-K% coincide when the answers are single tokens "
                 "(their markers then overlap).\n")
    m = res["mia"]
    L.append(_md(pd.DataFrame({"model": m.model, "seed": m.seed, "membership": m.membership, "attack": m.attack,
                               "AUC": [_fmt(*r) for r in zip(m.auc, m.auc_lo, m.auc_hi)],
                               "TPR@1%FPR": [_fmt(*r) for r in zip(m.tpr_at_1fpr, m.tpr_lo, m.tpr_hi)],
                               "n (members/non)": m.n_members.astype(str) + "/" + m.n_nonmembers.astype(str)})))
    L.append("\n## Task accuracy (held-out, teacher-forced exact match, Wilson CI)\n")
    ta = res["task"]
    L.append(_md(pd.DataFrame({"model": ta.model, "batch size": ta.batch_size, "seed": ta.seed,
                               "accuracy": [_fmt(*r) for r in zip(ta.accuracy, ta.accuracy_lo, ta.accuracy_hi)]})))
    c = res["controls"]
    if len(c):
        L.append(f"\n## Positive control: watermark identity (4 profiles drawn as `{cfg['control_mode']}`; in training "
                 f"the answer to '{CONTROL_QUESTION}' is the profile's word, p = 1, {cfg['control_steps']} steps)\n")
        c = c[c.source == "residual"]
        if "answer_accuracy" in c.columns:
            a = c.dropna(subset=["answer_accuracy"]).iloc[0]
            L.append(f"Tuned model answers the tag question on held-out images with accuracy "
                     f"{_fmt(a.answer_accuracy, a.answer_accuracy_lo, a.answer_accuracy_hi)} (chance 0.25).\n")
        L.append(_md(pd.DataFrame({"model": c.model, "point": c.point, "position": c.position,
                                   "accuracy": [_fmt(*r) for r in zip(c.accuracy, c.accuracy_lo, c.accuracy_hi)],
                                   "chance": c.chance.round(2)})))
    if res.get("removal"):
        L.append("\n## Removal: ablating a 'watermark present' direction (difference of means, lm.*.resid, last token)\n")
        for key, title in (("presence", "label: watermark present vs clean"), ("seen_unseen", "label: seen vs unseen")):
            rep = res["removal"][key]
            sup = rep.suppression
            L.append(f"\n{title} (probes retrained after the ablation):\n")
            L.append(_md(pd.DataFrame({"point": sup.point, "position": sup.position,
                                       "before": [_fmt(*r) for r in zip(sup.accuracy_before, sup.accuracy_before_lo, sup.accuracy_before_hi)],
                                       "after": [_fmt(*r) for r in zip(sup.accuracy_after, sup.accuracy_after_lo, sup.accuracy_after_hi)],
                                       "chance": sup.chance.round(2)})))
            cost = rep.cost
            line = f"Cost: KL on clean inputs {_fmt(cost['kl_mean'], cost['kl_lo'], cost['kl_hi'], 4)} nats"
            if "task_accuracy_before" in cost:
                line += (f"; task accuracy {_fmt(cost['task_accuracy_before'], cost['task_accuracy_before_lo'], cost['task_accuracy_before_hi'])}"
                         f" -> {_fmt(cost['task_accuracy_after'], cost['task_accuracy_after_lo'], cost['task_accuracy_after_hi'])}")
            L.append(line + ".\n")
    u = res["unlearning"]
    if len(u):
        L.append(f"\n## Unlearning baselines (forget set: the watermarked training images of the p={max(cfg['ps']):g} model, "
                 f"{cfg['unlearn_steps']} steps, lr {cfg['unlearn_lr']})\n")
        L.append(_md(pd.DataFrame({"method": u.method,
                                   "seen-vs-unseen probe (best)": [_fmt(*r) for r in zip(u.probe_best, u.probe_best_lo, u.probe_best_hi)],
                                   "at": u.probe_point,
                                   "task accuracy": [_fmt(*r) for r in zip(u.task_accuracy, u.task_lo, u.task_hi)],
                                   "KL clean (nats)": [_fmt(*r, d=4) for r in zip(u.kl_clean, u.kl_lo, u.kl_hi)],
                                   "forget NLL": u.forget_nll.round(3),
                                   "forget-vs-fresh loss AUC": [_fmt(*r) for r in zip(u.forget_vs_fresh_auc, u.auc_lo, u.auc_hi)]})))
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text("\n".join(L) + others)
    written.append(md_path)
    return written
