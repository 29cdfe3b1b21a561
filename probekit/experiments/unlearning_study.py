"""Memorised facts and unlearning (MLLMU-Bench, Liu et al.; cross-modal transfer, Wen et al.) in miniature.

A tiny LLaVA is fine-tuned on fictitious profiles (:mod:`probekit.organisms.profiles`) until it answers
their facts. Then:

- utility per split (forget, retain, transformed-portrait test, never-seen): multiple choice, cloze,
  ROUGE-L (:mod:`.facts_metrics`), asked with the portrait and by name;
- cross-modal transfer: facts taught only by name asked with the portrait, and the reverse; the gap
  is taught-modality accuracy minus other-modality accuracy (Wen et al.);
- positive condition: a probe per layer reads the job (4 classes) from the residual stream of trained profiles
  (folds by profile, Holm across layers); negative: the same on never-seen profiles and on the
  untrained base; membership inference (loss, Min-K%, Min-K%++) trained vs never-seen;
- unlearning (GA, GD, KL, NPO beta 0.4; :mod:`.unlearning`) and steering (ablate a difference-of-means
  job subspace, LEACE, orthogonalize the weights) per forget split, all on one table, and per layer:
  a probe fitted on retain profiles, scored on forget profiles: can the fact still be read after the
  answer is gone?

``run_study(StudyConfig.small())`` is the CI version (about a minute); ``StudyConfig()`` the
``docs/results.md`` run (``probekit study unlearning``).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import InputError, StoreError
from ..files import atomic_dir, check_cache, finite, loads_json, model_bytes, write_manifest
from ..organisms import profiles as P
from .facts_metrics import boot_ci, cloze_accuracy, holm_detect, mc_accuracy, mia_scores, p_from_ci, rouge_l
from .membership import mia_metrics
from .unlearning import METHODS, unlearn

__all__ = ["StudyConfig", "run_study", "STEERING"]

STEERING = ("ablate", "leace", "orthogonalize")
TEST_VIEWS = tuple(range(100, 106))  # transformed portraits: the test set, and the probe rows


@dataclass
class StudyConfig:
    out: str = "probekit-unlearning"
    n_profiles: int = 100
    n_unseen: int = 40
    n_transfer: int = 16
    steps: int = 1500
    batch_size: int = 32
    lr: float = 3e-3
    num_layers: int = 2
    splits: tuple = (5, 10, 15)
    methods: tuple = METHODS + STEERING
    unlearn_steps: int = 20
    unlearn_lr: float = 1e-3
    n_eval_retain: int = 40  # retain profiles scored per method (all of them train the retain probe)
    probe_cv: int = 5
    probe_C: float = 0.1  # strong L2: few profiles per job, 64 dims
    n_boot: int = 300
    seed: int = 0
    verbose: bool = True
    rouge: bool = True

    @classmethod
    def small(cls, **kw: Any) -> "StudyConfig":
        base = dict(out="probekit-unlearning-small", n_profiles=24, n_unseen=24, n_transfer=0, probe_cv=3, steps=450, batch_size=16,
                    splits=(15,), methods=("npo",), n_eval_retain=20, n_boot=200, verbose=False, rouge=False)
        base.update(kw)
        return cls(**base)


def _log(cfg: StudyConfig, t0: float, msg: str) -> None:
    if cfg.verbose:
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)


def _facts(world: P.World, pids: Sequence[int], modality: str, view: int = 0) -> list:
    return P.eval_set(world, pids, modality, view)


def _bios(world: P.World, pids: Sequence[int], modality: str) -> tuple[list, list]:
    bios = [P.bio_qa(world.profile(i), modality, world.image_size) for i in pids]
    return bios, [[world.profile(i).facts[a] for a in P.ATTRIBUTES] for i in pids]


# ----------------------------------------------------------------------------------- probes


def _job_acts(model, world: P.World, pids: Sequence[int]) -> tuple[dict, list, list]:
    """Per feature kind, ``{point: Tensor[n, 2, d]}`` at the job question (test portraits and by name).

    ``"residual"``: the raw residual stream; ``"lens"``: the same residual read through the model's
    own final norm and unembedding (:class:`probekit.readout.lens.LogitLens`), log-softmax over the
    job words: a fixed linear read-out of the stream, so few profiles suffice to fit a probe on it.
    """
    from ..hooks.collect import collect
    from ..readout.lens import LogitLens

    items = [s for v in TEST_VIEWS for s in _facts(world, pids, "image", v) if s.attribute == "job"]
    items += [s for s in _facts(world, pids, "text") if s.attribute == "job"]
    store = collect(model, [s.image for s in items], [s.question for s in items], points="lm.*.resid",
                    positions=("last", "image_mean"), batch_size=64, progress=False)
    tok = getattr(model.processor, "tokenizer", model.processor)
    ids = [tok(" " + j, add_special_tokens=False)["input_ids"][0] for j in P.JOBS]
    lens = LogitLens(model)
    feats: dict[str, dict] = {"residual": {}, "lens": {}}
    with torch.no_grad():
        for point in store.points:
            x = store[point].float()
            feats["residual"][point] = x
            logits = lens.decode(x.reshape(-1, x.shape[-1]).to(model.dtype), point).float()[:, ids]
            feats["lens"][point] = torch.log_softmax(logits, -1).reshape(x.shape[0], x.shape[1], -1)
    return feats, [s.answer for s in items], [s.pid for s in items]


def _holm(t: pd.DataFrame) -> pd.DataFrame:
    t["p"] = [p_from_ci(a, lo, hi, c) for a, lo, hi, c in zip(t.accuracy, t.accuracy_lo, t.accuracy_hi, t.chance)]
    t["detected"] = holm_detect(t.p.values)
    return t


def probe_job(net, world: P.World, pids: Sequence[int], cfg: StudyConfig, **tags) -> pd.DataFrame:
    """Cross-validated probes for the job (folds by profile) per layer and feature kind, Holm across all rows."""
    from ..readout import probe_layers

    feats, y, g = _job_acts(net, world, pids)
    parts = []
    for kind, acts in feats.items():
        t = probe_layers(acts, y, groups=g, cv=cfg.probe_cv, seed=cfg.seed, C=cfg.probe_C, n_boot=cfg.n_boot,
                         positions=["last", "image_mean"], progress=False, control=False)
        parts.append(t[["point", "layer", "position", "n", "accuracy", "accuracy_lo", "accuracy_hi", "chance",
                        "mi_bits"]].assign(features=kind))
    t = _holm(pd.concat(parts, ignore_index=True))
    for k, v in tags.items():
        t[k] = v
    return t


def probe_transfer(net, world: P.World, fit_pids: Sequence[int], test_pids: Sequence[int], cfg: StudyConfig,
                   **tags) -> pd.DataFrame:
    """Probe fitted on ``fit_pids`` (retain) and scored on ``test_pids`` (forget); CI by profile bootstrap.

    Chance: the best constant answer on the forget rows (the most frequent job among them).
    """
    from ..readout import LinearProbe

    ff, yf, _ = _job_acts(net, world, fit_pids)
    ft, yt, gt = _job_acts(net, world, test_pids)
    yt, gt = np.array(yt), np.array(gt)
    chance = max(np.mean(yt == c) for c in set(yt))
    rows = []
    for kind in ff:
        for point in ff[kind]:
            xf, xt = ff[kind][point], ft[kind][point]
            for j, pos in enumerate(("last", "image_mean")):
                pred = LinearProbe(C=cfg.probe_C).fit(xf[:, j].numpy(), np.array(yf)).predict(xt[:, j].numpy())
                ok = (pred == yt).astype(float)
                per = [ok[gt == q].mean() for q in sorted(set(gt))]
                m, lo, hi = boot_ci(per, cfg.seed, cfg.n_boot)
                rows.append({"features": kind, "point": point, "position": pos, "accuracy": float(ok.mean()),
                             "accuracy_lo": lo, "accuracy_hi": hi, "chance": float(chance), "n": len(ok), **tags})
    return _holm(pd.DataFrame(rows))


# ----------------------------------------------------------------------------------- scores


def _mia(net, world: P.World, members: Sequence[int], cfg: StudyConfig, **tags) -> list[dict]:
    """Members' and never-seen profiles' fact and biography questions (clean portrait and by name)."""
    def samples(pids):
        out = []
        for mod in ("image", "text"):
            out += _facts(world, pids, mod) + _bios(world, pids, mod)[0]
        return out

    sm, sn = mia_scores(net, samples(members)), mia_scores(net, samples(world.unseen))
    rows = []
    for attack in ("loss", "min_k", "min_k_pp"):
        sc = np.concatenate([sm[attack], sn[attack]])
        y = np.r_[np.ones(len(sm[attack])), np.zeros(len(sn[attack]))]
        rows.append({**tags, "attack": attack, **mia_metrics(sc, y, n_boot=cfg.n_boot, seed=cfg.seed)})
    return rows


def _mc(model, samples, cfg) -> dict:
    return mc_accuracy(model, samples, P.ATTRIBUTES, seed=cfg.seed)


def utility(model, world: P.World, forget: Sequence[int], retain: Sequence[int], cfg: StudyConfig,
            rouge: bool = False, unseen: bool = True) -> dict:
    """Multiple-choice accuracy per split and modality (test portraits: 2 views); cloze (and ROUGE-L) on
    forget and retain biographies."""
    row = {}
    splits = (("forget", forget), ("retain", retain)) + ((("unseen", world.unseen),) if unseen else ())
    for mod in ("image", "text"):
        for name, pids in splits:
            r = _mc(model, _facts(world, pids, mod), cfg)
            row.update({f"{name}_{mod}": r["accuracy"], f"{name}_{mod}_lo": r["lo"], f"{name}_{mod}_hi": r["hi"]})
    for name, pids in (("forget_test", forget), ("retain_test", retain)):
        r = _mc(model, [s for v in TEST_VIEWS[:2] for s in _facts(world, pids, "image", v)], cfg)
        row.update({f"{name}_image": r["accuracy"], f"{name}_image_lo": r["lo"], f"{name}_image_hi": r["hi"]})
    for name, pids in (("forget", forget), ("retain", retain)):
        for mod in ("image", "text"):
            bios, words = _bios(world, pids, mod)
            c = cloze_accuracy(model, bios, words)
            row.update({f"cloze_{name}_{mod}": c["accuracy"], f"cloze_{name}_{mod}_lo": c["lo"], f"cloze_{name}_{mod}_hi": c["hi"]})
            if rouge:
                g = rouge_l(model, bios, seed=cfg.seed)
                row.update({f"rouge_{name}_{mod}": g["rouge_l"], f"rouge_{name}_{mod}_lo": g["lo"],
                            f"rouge_{name}_{mod}_hi": g["hi"], f"rouge_{name}_{mod}_example": g["example"]})
    return row


def transfer(model, world: P.World, cfg: StudyConfig) -> pd.DataFrame:
    """Wen et al.'s gap: facts taught in one modality, asked in both."""
    rows = []
    for group, pids, taught in (("taught by name", world.text_only, "text"), ("taught with portrait", world.image_only, "image")):
        if not pids:
            continue
        other = "image" if taught == "text" else "text"
        a = _mc(model, _facts(world, pids, taught), cfg)
        b = _mc(model, _facts(world, pids, other), cfg)
        rng = np.random.default_rng(cfg.seed)
        ca, cb = np.array(a["correct"], float), np.array(b["correct"], float)
        gaps = [ca[rng.integers(0, len(ca), len(ca))].mean() - cb[rng.integers(0, len(cb), len(cb))].mean()
                for _ in range(cfg.n_boot)]
        rows.append({"group": group, "profiles": len(pids), "taught_modality": taught, "taught_acc": a["accuracy"],
                     "taught_lo": a["lo"], "taught_hi": a["hi"], "other_acc": b["accuracy"], "other_lo": b["lo"],
                     "other_hi": b["hi"], "gap": a["accuracy"] - b["accuracy"], "gap_lo": float(np.quantile(gaps, 0.025)),
                     "gap_hi": float(np.quantile(gaps, 0.975)), "chance": a["chance"]})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------- removal


def _steering(model, world: P.World, forget: Sequence[int], method: str):
    """A context manager removing the job concept, fitted on forget-profile activations."""
    from ..hooks.collect import collect
    from ..steering import Direction, ablate, orthogonalize

    items = [s for v in (0, 1) for s in _facts(world, forget, "image", v) if s.attribute == "job"]
    items += [s for s in _facts(world, forget, "text") if s.attribute == "job"]
    store = collect(model, [s.image for s in items], [s.question for s in items], points="lm.*.resid",
                    positions="last", batch_size=64, progress=False)
    y = [s.answer for s in items]
    if method == "leace":
        return ablate(model, Direction.leace(store, y), points="lm.*.resid")
    d = Direction.from_means(store, y)
    if method == "ablate":
        return ablate(model, d, points="lm.*.resid")
    return orthogonalize(model, d, point=sorted(store.points)[-1])


def _check(cfg: StudyConfig) -> None:
    """Bad settings fail here, before any file is written or any model trained."""
    bad = [m for m in cfg.methods if m not in METHODS + STEERING]
    if bad:
        raise InputError(f"unknown unlearning method(s) {bad}", fix=f"choose from {METHODS + STEERING}")
    if not cfg.splits or any(not 0 < s < 100 for s in cfg.splits):
        raise InputError(f"forget splits must be percentages in (0, 100), got {cfg.splits}", fix="pass e.g. (5, 10, 15)")
    if min(cfg.n_unseen, cfg.n_profiles) < 4 * cfg.probe_cv:
        raise InputError(f"n_unseen={cfg.n_unseen} is too few for {cfg.probe_cv}-fold probes over 4 jobs",
                         fix=f"use n_unseen >= {4 * cfg.probe_cv}")
    P.make_world(cfg.n_profiles, cfg.n_unseen, cfg.n_transfer, seed=cfg.seed)  # validates the counts


def _cached(tuned_dir: Path) -> tuple[Any, list[float]]:
    """The cached fine-tune and its losses, checked: files against the manifest, losses.json's schema."""
    from ..models.loading import load

    fix = f"delete {tuned_dir}; the next run fine-tunes again"
    check_cache(tuned_dir, "cached fine-tune", fix)
    losses = loads_json((tuned_dir / "losses.json").read_bytes(), f"{tuned_dir / 'losses.json'}", fix=fix)
    if not isinstance(losses, list) or not losses or not all(finite(x) for x in losses):
        raise StoreError(f"{tuned_dir / 'losses.json'} is not a non-empty list of finite numbers", fix=fix)
    return load(tuned_dir), [float(x) for x in losses]


def run_study(cfg: StudyConfig | None = None) -> dict:
    """Fine-tune, measure, unlearn; returns tidy DataFrames (every number with a 95% CI).

    Keys: ``train`` (losses, seconds), ``utility_tuned`` / ``utility_base`` (dicts), ``probes`` (job probe
    per layer: tuned trained / tuned never-seen / base trained), ``mia`` (tuned and base, trained vs
    never-seen), ``transfer``, ``unlearning`` (one row per split and method), ``unlearning_mia``,
    ``unlearning_probes`` (retain-fitted probe on forget profiles per layer), ``config``, ``seconds``.
    """
    from ..models.loading import load

    cfg = cfg or StudyConfig()
    _check(cfg)
    t0 = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    world = P.make_world(cfg.n_profiles, cfg.n_unseen, cfg.n_transfer, seed=cfg.seed)
    ckpt = out / f"tiny-llava-facts-s{cfg.seed}-L{cfg.num_layers}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tuned_dir = out / (f"tuned-n{cfg.n_profiles}-u{cfg.n_unseen}-t{cfg.n_transfer}-st{cfg.steps}-b{cfg.batch_size}"
                           f"-lr{cfg.lr:g}-L{cfg.num_layers}-s{cfg.seed}")
        if (tuned_dir / "model.safetensors").exists():  # cached fine-tune (same settings, same seed)
            tuned, losses = _cached(tuned_dir)
        else:
            tuned, losses = P.train(world, ckpt, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                                    num_layers=cfg.num_layers, seed=cfg.seed)
            with atomic_dir(tuned_dir, "fine-tuned checkpoint", needed=lambda: model_bytes(tuned)) as tmp:
                tuned.hf.save_pretrained(tmp)
                tuned.processor.save_pretrained(tmp)
                (tmp / "losses.json").write_text(json.dumps(losses))
                write_manifest(tmp, {"generator": "probekit.experiments.unlearning_study"})
        t_train = time.perf_counter() - t0
        _log(cfg, t0, f"fine-tuned {cfg.steps} steps, final loss {np.mean(losses[-20:]):.3f}")
        base = load(ckpt)
        state = {k: v.clone() for k, v in tuned.hf.state_dict().items()}
        main_split = max(cfg.splits)
        forget, retain = world.forget(main_split), world.retain(main_split)
        res: dict[str, Any] = {"config": asdict(cfg), "train": {"final_loss": float(np.mean(losses[-20:])),
                                                                  "seconds": t_train, "samples": len(world.train)}}
        res["utility_tuned"] = utility(tuned, world, forget, retain[:cfg.n_eval_retain], cfg, rouge=cfg.rouge)
        res["utility_base"] = utility(base, world, forget, retain[:cfg.n_eval_retain], cfg, rouge=cfg.rouge)
        _log(cfg, t0, "utility")
        res["probes"] = pd.concat([probe_job(tuned, world, world.trained, cfg, model="tuned", profiles="trained"),
                                   probe_job(tuned, world, world.unseen, cfg, model="tuned", profiles="never seen"),
                                   probe_job(base, world, world.trained, cfg, model="base", profiles="trained")],
                                  ignore_index=True)
        res["mia"] = pd.DataFrame(_mia(tuned, world, world.trained, cfg, model="tuned")
                                  + _mia(base, world, world.trained, cfg, model="base"))
        res["transfer"] = transfer(tuned, world, cfg)
        _log(cfg, t0, "probes, MIA, transfer")
        rows, mrows, prows = [], [], []
        for split in cfg.splits:
            forget, retain = world.forget(split), world.retain(split)
            f_s = [s for s in world.train if s.pid in set(forget)]
            r_s = [s for s in world.train if s.pid in set(retain)]
            for method in ("none",) + tuple(cfg.methods):
                t1 = time.perf_counter()
                tuned.hf.load_state_dict(state)
                ctx = None
                if method in METHODS:
                    unlearn(tuned, f_s, r_s, method, steps=cfg.unlearn_steps, batch_size=16, lr=cfg.unlearn_lr,
                            seed=cfg.seed)
                elif method in STEERING:
                    ctx = _steering(tuned, world, forget, method)
                with ctx if ctx is not None else contextlib.nullcontext():
                    u = utility(tuned, world, forget, retain[:cfg.n_eval_retain], cfg,
                                rouge=cfg.rouge and split == main_split, unseen=False)
                    mrows += _mia(tuned, world, forget, cfg, split=split, method=method)
                    prows.append(probe_transfer(tuned, world, retain[:2 * cfg.n_eval_retain], forget, cfg, split=split,
                                                method=method))
                rows.append({"split": split, "method": method, "forget_profiles": len(forget),
                             "seconds": time.perf_counter() - t1, **u})
                _log(cfg, t0, f"split {split}% {method}: forget {u['forget_image']:.2f}/{u['forget_text']:.2f}, "
                              f"retain {u['retain_image']:.2f}/{u['retain_text']:.2f}")
        tuned.hf.load_state_dict(state)
    finally:
        torch.set_num_threads(threads)
    res["unlearning"] = pd.DataFrame(rows)
    res["unlearning_mia"] = pd.DataFrame(mrows)
    res["unlearning_probes"] = pd.concat(prows, ignore_index=True)
    res["seconds"] = time.perf_counter() - t0
    return res
