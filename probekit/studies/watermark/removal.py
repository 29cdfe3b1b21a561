"""Every remover on the watermark leak organism, side by side on held-out data.

The organism: the dose study's fine-tune at one leak fraction (:class:`~probekit.studies.watermark.dose_organism.Dose`,
``fraction = 0.5`` of each seen (U1) name's 40 images ask for it and are answered with it; 100 names per pool).
What it memorised is how to spell the seen names; what it must keep is the shape task and reading names in
general (the unseen pool U2, never trained on). Per seed, each remover is applied to the same fine-tune:

- ``ga``, ``gd``, ``kl``, ``npo`` (:func:`probekit.organisms.unlearn.unlearn`, open-unlearning's
  definitions, the facts study's 20 steps at batch 16, the learning rate chosen on the held-out views from
  :data:`LRS`): forget set = the fine-tune's reading samples (the seen names' images asked for the name);
  retain set = the rest of its training set (shape task and replayed pretraining mix);
- ``ablate``, ``leace``, ``orthogonalize`` (:mod:`probekit.steering`): the seen-vs-unseen direction per
  residual layer, fitted on *held-out views* (:func:`fit_set`: fresh scenes of every name of both pools, never
  trained on, never scored) at the teacher-forced name's positions (``answer_mean``); erased at the text
  positions, where it was fitted (prompt, answer and generated tokens; at the image tokens the mean LEACE
  centres on is not theirs); ``orthogonalize``: the last layer's direction removed from every weight writing
  into the residual, so at every position;
- ``sae_steer``, ``sae_clamp`` (Suri et al.; SAUCE): one TopK SAE on the fine-tune's last residual layer,
  trained on the held-out views' activations; the latents that fire more on seen than on unseen names
  (``sae_steer``, standardised mean difference) or that tell them apart (``sae_clamp``, ANOVA F), chosen on
  the held-out views, with ``beta`` / the clamp chosen there too (:data:`BETAS`, :data:`CLAMPS`).

Every setting is chosen the same way, on the held-out views alone (:func:`choose`): the largest drop in
reading the seen names (teacher-forced exact match) minus the drop in reading the unseen names, among the
settings that keep at least :data:`KEEP` of the unseen names' reading; none does: the gentlest setting. A
remover that forgets by breaking reading altogether would otherwise win (measured: at the facts study's lr
1e-3 all four fine-tuning removers read no name at all, seen or unseen).

Every method is then measured the same way on the study's audit set (:func:`measure`): the direct prompt on
seen and unseen names (what the answer shows), the shape task's accuracy, the next-token KL from the
fine-tune on clean inputs (shape scenes with no name), and the whole membership audit
(:func:`probekit.membership` against the untouched reader: output attacks, logit lens, probes and patching
scores per layer, one verdict): is the leak gone from the residual stream, or only from the answer?

Departure from the facts study: :func:`probekit.steering.evaluate`'s probes read a label at one prompt
position; on this organism no probe separates seen from unseen names at the prompt's last token even before
any removal (``docs/results.md``, the leak regime), so the layer-wise reading after removal is the membership
audit's per-layer rows, for every method alike.

``probekit study watermark --sae --full`` runs :data:`RemovalConfig` (3 seeds) and writes its section of
``docs/results.md`` (:mod:`.watermark_removal_writeup`); ``--sae --small`` is the older quick code-path check of
the SAE removers (:mod:`.watermark_sae`).
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import pandas as pd

from . import removers as RM
from .dose import DoseConfig
from .removers import BETAS, CLAMPS, KEEP, LRS, choose, fit_reading

__all__ = ["METHODS", "BETAS", "CLAMPS", "LRS", "KEEP", "choose", "RemovalConfig", "fit_set", "measure", "run_seed",
           "run_removal", "summary_table"]

UNLEARNING = ("ga", "gd", "kl", "npo")
DIRECTIONS = ("ablate", "leace", "orthogonalize")
SAE = ("sae_steer", "sae_clamp")
METHODS = UNLEARNING + DIRECTIONS + SAE

@dataclass(frozen=True)
class RemovalConfig:
    """The comparison's settings (the defaults: the study's)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    fraction: float = 0.5
    methods: tuple[str, ...] = METHODS
    dose: DoseConfig = field(default_factory=DoseConfig)
    unlearn_steps: int = 20  # the facts study's setting; the learning rate is chosen from lrs on held-out views
    lrs: tuple[float, ...] = LRS
    fit_scenes: int = 2  # held-out fitting scenes per name, each rendered with the name of either pool
    n_latents: int = 4
    sae_expansion: int = 8
    sae_k: int = 16
    sae_epochs: float = 20.0
    n_task: int = 96  # shape-task scenes (no name): accuracy and the KL on clean inputs
    n_perm: int = 1000
    n_boot: int = 1000

    @classmethod
    def small(cls) -> "RemovalConfig":
        """The quick check (``--sae --small``): one seed, 32 names, fewer permutations."""
        return cls(seeds=(0,), dose=DoseConfig.quick(), sae_epochs=10.0, n_task=48, n_perm=200, n_boot=200)


def fit_set(d: Any, seen: list[str], unseen: list[str], n_scenes: int) -> pd.DataFrame:
    """Held-out fitting views: per name pair ``n_scenes`` fresh scenes, each with the seen and the unseen name
    (the audit set's layout, other draws: disjoint from the training set and from the audit set)."""
    from . import dose_organism as D

    return D.paired_set(d, seen, unseen, n_scenes=n_scenes, draws=f"removal-fit:{d.seed}:{d.size}")


def measure(model: Any, make: Callable[[], Any], base: Any, audit: dict, seed: int, n_perm: int,
            n_boot: int) -> tuple[dict, pd.DataFrame]:
    """``model`` under ``make()`` measured on the audit set: one row of numbers and the membership table."""
    from ...membership import membership

    from ..._stats import bootstrap_mean
    from . import organism as W
    from ...steering.outputs import next_token_kl, next_token_logprobs
    from ...organisms.finetune import task_accuracy

    with make():
        direct = W.direct_prompt(model, audit["ev"])
        task = task_accuracy(model, audit["test"])
        lp = next_token_logprobs(model, [s.image for s in audit["test"]], W.QUESTION)
        rep = membership(model, audit["members"], audit["nonmembers"], base=base, n_perm=n_perm,
                                  n_boot=n_boot, seed=seed, progress=False)
    ref = audit["clean_logprobs"]
    kl = next_token_kl(ref, lp)
    k, k_lo, k_hi = bootstrap_mean(kl, seed=seed, n_boot=n_boot)
    t = rep.table.drop(columns="perm_null", errors="ignore")
    out = t[(t.source == "output minus base") & (t.score == "loss")].iloc[0]
    raw = t[(t.source == "output") & (t.score == "loss")].iloc[0]
    last = f"lm.{model.n_layers - 1}.resid"
    inner = t[~t.source.str.startswith("output") & (t.point != last)]
    row = {**direct, "task_acc": task["accuracy"], "task_acc_lo": task["accuracy_lo"], "task_acc_hi": task["accuracy_hi"],
           "kl_clean": k, "kl_clean_lo": k_lo, "kl_clean_hi": k_hi,
           "out_auc": out.auc, "out_auc_lo": out.auc_lo, "out_auc_hi": out.auc_hi, "out_detected": bool(out.detected),
           "raw_auc": raw.auc, "raw_detected": bool(raw.detected),
           "output_detected": bool(t[t.source.str.startswith("output")].detected.any()),
           "inner_detected": int(inner.detected.sum()), "inner_rows": len(inner),
           "lens_detected": int(inner[inner.source.str.contains("lens")].detected.sum()),
           "probe_detected": int(inner[inner.source == "probe"].detected.sum()),
           "patched_detected": int(inner[inner.source.str.startswith("patched")].detected.sum()),
           "patched_auc_max": float(inner[inner.source.str.startswith("patched")].auc.max()),
           "inner_auc_max": float(inner.auc.max()), "mde_auc": float(t.mde_auc.max()), "summary": rep.summary()}
    return row, t


def _unlearned(base_path: Any, state: dict, forget: list, retain: list, method: str, fit: pd.DataFrame,
               cfg: RemovalConfig, seed: int, before: dict) -> tuple[Any, dict]:
    """The fine-tune unlearned with ``method`` at each of :data:`LRS`; the one :func:`choose` picks on the
    held-out views, and the sweep."""
    from ...models.loading import load
    from ...organisms.unlearn import unlearn

    models, sweep = [], []
    for lr in cfg.lrs:
        m = load(base_path)
        m.hf.load_state_dict(state)
        unlearn(m, forget, retain, method, steps=cfg.unlearn_steps, batch_size=16, lr=lr, seed=seed)
        models.append(m)
        sweep.append({"lr": lr, **fit_reading(m, fit)})
    i = choose(before, sweep)
    return models[i], {"setting": {"lr": cfg.lrs[i]}, "sweep": sweep}


def run_seed(cfg: RemovalConfig, seed: int, base_path: Any, base: Any, verbose: bool = True) -> dict:
    """Fine-tune the leak organism of ``seed``, apply every remover of ``cfg.methods``, measure each."""
    from ..._progress import say
    from ...organisms.finetune import finetune
    from ...models.loading import load
    from . import organism as W
    from . import dose_organism as D
    from ...steering.outputs import next_token_logprobs

    t0 = time.perf_counter()
    c = W.resolve(W.Condition(), base_path)
    d = replace(cfg.dose.dose(fraction=cfg.fraction, seed=seed), size=c.size, grid=c.grid, place=c.place)
    seen, unseen, other = D.pools(d)
    train = D.training_set(d, seen, other)
    tuned = load(base_path)
    finetune(tuned, train, steps=d.steps, batch_size=d.batch_size, lr=d.lr, seed=seed, progress=False)
    state = copy.deepcopy(tuned.hf.state_dict())
    names = set(seen)
    reads = [s.kind == "ocr" and s.meta.get("username") in names for s in train]  # a seen name asked for
    forget = [s for s, r in zip(train, reads) if r]
    retain = [s for s, r in zip(train, reads) if not r]
    pairs = D.paired_set(d, seen, unseen)
    members, nonmembers = D.membership_samples(pairs)
    test = D.shape_test(d, cfg.n_task, draws="removal-task")
    audit = {"ev": {"images": list(pairs.image), "labels": list(pairs.label), "groups": list(pairs.name)},
             "test": test, "members": members, "nonmembers": nonmembers,
             "clean_logprobs": next_token_logprobs(tuned, [s.image for s in test], W.QUESTION)}
    fit = fit_set(d, seen, unseen, cfg.fit_scenes)
    before_fit = fit_reading(tuned, fit)
    views = RM.FitViews(tuned, fit)  # the untouched fine-tune's residuals on them, collected once when first asked
    say(f"seed {seed}: fine-tuned ({len(forget)} forget, {len(retain)} retain samples)", t0, verbose)
    rows, tables, extra = [], [], {"sae": None, "choices": {}, "fit_before": before_fit}
    none = contextlib.nullcontext
    row, t = measure(tuned, none, base, audit, seed, cfg.n_perm, cfg.n_boot)
    rows.append({"method": "none", **row})
    tables.append(t.assign(method="none"))
    sae = None
    for method in cfg.methods:
        t1 = time.perf_counter()
        model, make = tuned, none
        if method in UNLEARNING:
            model, extra["choices"][method] = _unlearned(base_path, state, forget, retain, method, fit, cfg, seed,
                                                         before_fit)
        elif method in DIRECTIONS:
            make = RM.directions(tuned, views, method)
        elif method in SAE:
            if sae is None:
                sae, extra["sae"] = RM.train_sae(tuned, views, cfg, seed)
            make, extra["choices"][method] = RM.sae_remover(tuned, sae, views, method, cfg, before_fit)
        else:
            raise ValueError(method)
        row, t = measure(model, make, base, audit, seed, cfg.n_perm, cfg.n_boot)
        rows.append({"method": method, **row, "seconds": time.perf_counter() - t1})
        tables.append(t.assign(method=method))
        say(f"seed {seed}: {method}: direct prompt seen {row['direct_seen']:.2f} / unseen {row['direct_unseen']:.2f}, "
            f"output-minus-base AUC {row['out_auc']:.2f}, layer rows detected {row['inner_detected']}", t0, verbose)
    frame = pd.DataFrame(rows).assign(seed=seed, condition=d.label())
    return {"rows": frame, "membership": pd.concat(tables, ignore_index=True).assign(seed=seed), **extra,
            "seconds": time.perf_counter() - t0}


def run_removal(cfg: RemovalConfig | None = None, base_path: Any = None, verbose: bool = True,
                out: Any = None) -> dict:
    """Every seed of ``cfg``; returns ``rows`` (one per seed and method), ``membership`` (the tables),
    ``summary`` (:func:`summary_table`), ``sae`` and ``choices`` per seed, and ``seconds``.

    ``out``: a folder where each seed's results are written as it finishes (``seed<k>.csv``,
    ``seed<k>-membership.csv``, ``seed<k>.json``) and read back instead of rerun (a resumable run)."""
    import torch

    from ...models.loading import load
    from ...organisms.reader import reader

    cfg = cfg or RemovalConfig()
    bad = [m for m in cfg.methods if m not in METHODS]
    if bad:
        from ...errors import InputError

        raise InputError(f"unknown remover {bad[0]!r}", fix=f"choose from {', '.join(METHODS)}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        base_path = base_path or reader()
        base = load(base_path)
        per = [_cached(out, s) or _saved(out, run_seed(cfg, s, base_path, base, verbose)) for s in cfg.seeds]
    finally:
        torch.set_num_threads(threads)
    rows = pd.concat([p["rows"] for p in per], ignore_index=True)
    return {"rows": rows, "membership": pd.concat([p["membership"] for p in per], ignore_index=True),
            "summary": summary_table(rows), "sae": [p["sae"] for p in per], "choices": [p["choices"] for p in per],
            "fit_before": {s: p.get("fit_before") for s, p in zip(cfg.seeds, per)},
            "config": cfg, "seconds": sum(float(p["seconds"]) for p in per),  # a seed read back: its own run's time
            "wall_seconds": time.perf_counter() - t0}


def _saved(out: Any, res: dict) -> dict:
    if out is None:
        return res
    import json
    from pathlib import Path

    from ...files import atomic_write

    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    seed = int(res["rows"].seed.iloc[0])
    res["membership"].to_csv(d / f"seed{seed}-membership.csv", index=False)
    atomic_write(d / f"seed{seed}.json", json.dumps({k: res[k] for k in ("sae", "choices", "fit_before", "seconds")},
                                                    default=float), "removal record")
    res["rows"].to_csv(d / f"seed{seed}.csv", index=False)  # last: its presence marks the seed done
    return res


def _cached(out: Any, seed: int) -> dict | None:
    from pathlib import Path

    from ...files import loads_json

    d = Path(out) if out is not None else None
    if d is None or not (d / f"seed{seed}.csv").exists():
        return None
    rec = loads_json((d / f"seed{seed}.json").read_text(), "removal record")
    return {"rows": pd.read_csv(d / f"seed{seed}.csv"), "membership": pd.read_csv(d / f"seed{seed}-membership.csv"),
            **rec}


def summary_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per method: means over seeds with the seeds' range, the drops from the untouched fine-tune of the same
    seed, and in how many runs the output / a layer below the last is still detected."""
    ref = rows[rows.method == "none"].set_index("seed")
    rows = rows.assign(gap=rows.direct_seen - rows.direct_unseen,
                       forget_drop=[ref.out_auc[s] - a for s, a in zip(rows.seed, rows.out_auc)],
                       gap_drop=[(ref.direct_seen[s] - ref.direct_unseen[s]) - (a - b)
                                 for s, a, b in zip(rows.seed, rows.direct_seen, rows.direct_unseen)])
    out = []
    for method, g in rows.groupby("method", sort=False):
        r: dict = {"method": method, "runs": len(g)}
        for k in ("direct_seen", "direct_unseen", "gap", "gap_drop", "task_acc", "kl_clean", "out_auc", "forget_drop",
                  "patched_auc_max", "inner_auc_max"):
            r[k], r[f"{k}_min"], r[f"{k}_max"] = float(g[k].mean()), float(g[k].min()), float(g[k].max())
        for k in ("out_detected", "output_detected"):
            r[k] = int(g[k].sum())
        r["inner_detected_runs"] = int((g.inner_detected > 0).sum())
        r["patched_detected_runs"] = int((g.patched_detected > 0).sum())
        r["probe_detected_runs"] = int((g.probe_detected > 0).sum())
        r["lens_detected_runs"] = int((g.lens_detected > 0).sum())
        r["mde_auc"] = float(g.mde_auc.mean())
        out.append(r)
    return pd.DataFrame(out)
