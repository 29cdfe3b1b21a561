"""``probekit study watermark``: the ProbingPrivacy watermark study on the reader organism.

Runs :func:`probekit.organisms.watermark.run_condition` over a grid of regimes (p, opacity,
steps, LoRA vs full), the two negative controls (base reader, fine-tune at p = 0), the
gradient cosine vs batch size (2, 8, 32) over seeds, and writes the study's section of
``docs/results.md`` (between ``<!-- watermark-study -->`` markers) with its figures.

Example::

    probekit study watermark            # the small grid: prints one verdict line per run, writes table.csv
    probekit study watermark --full     # the grid of docs/results.md, rewrites its section
"""

from __future__ import annotations

import datetime as _dt
import math
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .._progress import say
from ..files import atomic_write
from ..organisms import watermark as W
from ..organisms.reader import ocr_accuracy, reader
from ..report.figures.png import compare_png, pyplot, save_png
from ..report.text import fmt_ci

__all__ = ["grid", "run_study", "gradient_trend", "write_section", "verdict_lines"]

BEGIN, END = "<!-- watermark-study -->", "<!-- /watermark-study -->"


def grid(full: bool = False) -> list[W.Condition]:
    """The regimes searched, each as a p > 0 fine-tune and its matched p = 0 control, over seeds.

    Every regime mixes half of the reader's own pretraining data into the fine-tune
    (``replay=0.5``, as LLaVA-style fine-tunes mix OCR data in): without it every fine-tune lost
    the reader's reading (direct prompt 0.28 -> 0.00 in the first grid). Full: 300 steps at
    lr 3e-4, 600 steps at lr 1e-3 and no replay at lr 1e-3 (the first grid's regime), on seeds
    0-2 (pools, data and weights change with the seed), and a long exposure (3,000 steps over
    4,000 images, opaque text: about 1,000 sightings of each U1 username) on seed 0.

    Then the leak regime, where half of the watermarked images are asked to read their U1 name
    (the loss touches it: 1,500 steps at lr 1e-3 in the full grid), against its matched control
    that reads a third pool U3 instead (:meth:`Condition.control`); in the full grid also through
    LoRA (r = 8 on q/k/v/o, lr 3e-3) in place of full fine-tuning.
    """
    base = W.Condition(p=1.0, opacity=0.5, steps=300 if full else 150, lr=3e-4, replay=0.5,
                       n_eval=384 if full else 192)
    regimes = [base]
    if full:
        regimes += [replace(base, steps=600, lr=1e-3), replace(base, replay=0.0, lr=1e-3)]
    seeds = (0, 1, 2) if full else (0,)
    out = [x for r in regimes for s in seeds for x in (replace(r, seed=s), replace(r, seed=s).control())]
    if full:
        long = replace(base, opacity=1.0, steps=3000, n_train=4000)
        out += [long, long.control()]
    leak = replace(base, leak=0.5, steps=1500 if full else 1000, lr=1e-3)
    leaks = [leak]
    if full:  # LoRA vs full: the same leak through rank-8 adapters on q/k/v/o (adapters want a larger lr)
        leaks.append(replace(leak, lora={"r": 8, "alpha": 16}, lr=3e-3))
    out += [x for r in leaks for s in seeds for x in (replace(r, seed=s), replace(r, seed=s).control())]
    return out


def gradient_trend(base_path: Any, c: W.Condition, batch_sizes=(2, 8, 32), seeds=(0, 1, 2), steps: int = 24,
                   every: int = 3) -> tuple[pd.DataFrame, dict]:
    """1 - cos(g(batch), g(same batch without watermarks)) per batch size and seed, and its trend.

    Trend: per seed, the least-squares slope of log10(1 - cos) on log2(batch size); the CI is
    a t-interval over seeds.
    """
    from ..models.loading import load
    from .finetune import finetune
    from .gradients import GradientCosine

    rows = []
    for seed in seeds:
        cs = W.resolve(replace(c, seed=seed), base_path)  # the reader's image size and text placement
        seen, _ = W.username_pools(cs.n_users, seed)
        train, clean = W.task_samples(cs, seen)
        for bs in batch_sizes:
            m = load(base_path)
            gc = GradientCosine(m, train, clean, steps=steps, batch_size=bs, seed=seed, every=every)
            finetune(m, train, steps=steps, batch_size=bs, lr=c.lr, lora=c.lora, seed=seed, progress=False, on_step=gc)
            s = gc.summary(seed=seed)
            rows.append({"seed": seed, "batch_size": bs, "one_minus_cos": 1 - s["cos_mean"], "cos_var": s["cos_var"],
                         "marked_frac": s["marked_frac"], "steps_measured": s["steps"]})
    df = pd.DataFrame(rows)
    slopes = []
    for _, g in df.groupby("seed"):
        slopes.append(np.polyfit(np.log2(g.batch_size), np.log10(np.maximum(g.one_minus_cos, 1e-12)), 1)[0])
    return df, {"slope": _t_ci(slopes), "per_seed": slopes}


def _t_ci(x) -> tuple[float, float, float]:
    from scipy import stats

    x = np.asarray(x, float)
    m = float(x.mean())
    if len(x) < 2:
        return m, math.nan, math.nan
    h = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return m, m - h, m + h


def run_study(full: bool = False, base_path: Any = None, conditions: list[W.Condition] | None = None,
              gradients: bool = True, verbose: bool = True) -> dict:
    """Run the grid; returns ``table`` (one row per regime, controls included), ``reports``,
    ``gradients`` / ``trend``, ``ocr`` (the reader's OCR accuracy) and wall ``seconds``."""
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    base_path = base_path or reader()
    from ..models.loading import load

    base = load(base_path)  # read from only (OCR, direct prompt, unsplit folds): one copy serves all
    ocr = ocr_accuracy(base, n=200)
    conds = conditions or grid(full)
    rows, reports, bases, mias, protocol = [], {}, {}, {}, []
    for c in conds:
        key = (c.seed, c.opacity, c.place, c.n_users, c.n_eval)  # the held-out set the base is scanned on
        r = W.run_condition(base_path, c, base_report=bases.get(key), base_membership=mias.get(key))
        if key not in bases:
            bases[key], mias[key] = r["base_report"], r["base_membership"]
            b = r["base_verdict"]
            rows.append({"condition": "base reader (not fine-tuned)", "p": math.nan, "seed": c.seed,
                         "opacity": c.opacity, "control": True, "kind": "base", **W.verdict_columns(b),
                         **W.direct_prompt(base, r["eval"]), **r["base_membership"]})
            reports.setdefault("base", r["base_report"])
            if not protocol:  # Ju et al.'s unsplit folds, once, on the first held-out set
                protocol.append({"model": "base reader", **W.stratified(base, r["eval"], c.seed)})
        if not c.is_control and len(protocol) == 1:
            protocol.append({"model": c.label(), **W.stratified(r["tuned"], r["eval"], c.seed)})
        rows.append(r["row"])
        reports.setdefault(c.label(), r["report"])
        say(f"Finished {c.label()}, seed {c.seed} (its verdict is printed at the end).", t0, verbose)
    out = {"table": pd.DataFrame(rows), "reports": reports, "ocr": ocr, "conditions": [asdict(c) for c in conds],
           "full": full, "protocol": pd.DataFrame(protocol)}
    if gradients:
        pos = next((c for c in conds if not c.is_control and not c.leak), conds[-1])
        # at p = 1 every image is marked whatever the batch size; no replay: every sample can carry a mark
        gp = replace(pos, p=0.5, replay=0.0)
        out["gradients"], out["trend"] = gradient_trend(base_path, gp, seeds=(0, 1, 2) if full else (0, 1))
        out["gradient_condition"] = gp.label()
    out["seconds"] = time.perf_counter() - t0
    return out


# ------------------------------------------------------------------------------------ docs


def figures(res: dict, img_dir: Path) -> dict[str, Path]:
    """Matplotlib PNGs: probes per layer (base, p = 0, positive), the grid, gradient trend."""
    plt = pyplot()
    paths = {}
    t = res["table"]
    # the base, the first task-irrelevant fine-tune, the first leak fine-tune and its U3 control
    first = {}
    for r in t[t.kind != "base"].itertuples():
        first.setdefault((r.kind, bool(r.control)), r.condition)
    labels = ["base"] + [first[k] for k in (("task-irrelevant", False), ("leak", False), ("leak", True))
                         if k in first and first[k] in res["reports"]]
    fig, axes = plt.subplots(1, len(W.POSITIONS), figsize=(5 * len(W.POSITIONS), 3.8), sharey=True)
    for ax, pos in zip(axes, W.POSITIONS):
        for name in labels:
            d = res["reports"][name].table
            d = d[d.position == pos]
            x = np.arange(len(d))
            ax.errorbar(x, d.accuracy, yerr=[d.accuracy - d.accuracy_lo, d.accuracy_hi - d.accuracy], marker="o",
                        capsize=3, label=name)
            ax.set_xticks(x, d.point, rotation=30, fontsize=8)
        ax.axhline(0.5, ls=":", c="k")
        ax.set_title(f"position: {pos}")
    axes[0].set_ylabel("seen vs unseen probe accuracy (95% CI)")
    axes[-1].legend(fontsize=7)
    fig.suptitle("Watermark on the reader: probes per layer (folds split by username)")
    paths["probes"] = save_png(fig, img_dir / "watermark-probes.png")

    # the first regime with a detection (else the last one in the grid) against the base
    tuned_rows = t[t.condition.isin([k for k in res["reports"] if k != "base"])]
    hits = tuned_rows[tuned_rows.detected]
    pos_name = (hits if len(hits) else tuned_rows).condition.iloc[0 if len(hits) else -1] if len(tuned_rows) else None
    if pos_name is not None:
        import probekit

        c = probekit.compare(res["reports"]["base"], res["reports"][pos_name], names=("base", pos_name)).table
        paths["compare"] = compare_png(c, ("base reader", pos_name), "Measured: base reader vs watermarked fine-tune "
                                       "(probekit study watermark)", img_dir / "watermark-compare.png")

    fig, ax = plt.subplots(figsize=(8, 0.45 * len(t) + 1.2))
    y = np.arange(len(t))[::-1]
    colours = ["tab:red" if d else "tab:grey" for d in t.detected]
    ax.errorbar(t.probe_acc, y, xerr=[t.probe_acc - t.probe_lo, t.probe_hi - t.probe_acc], fmt="none", ecolor=colours)
    ax.scatter(t.probe_acc, y, c=colours, zorder=3)
    ax.axvline(0.5, ls=":", c="k")
    ax.set_yticks(y, t.condition, fontsize=8)
    ax.set_xlabel("best point: seen vs unseen accuracy or MIA AUC (95% CI); red = detected after Holm correction")
    paths["grid"] = save_png(fig, img_dir / "watermark-grid.png")

    if "gradients" in res:
        g = res["gradients"]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for seed, d in g.groupby("seed"):
            ax.plot(d.batch_size, d.one_minus_cos, "o-", alpha=0.6, label=f"seed {seed}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("1 - cos(g(B), g(B clean))")
        s = res["trend"]["slope"]
        ax.set_title(f"slope per doubling (log10): {fmt_ci(*s)}", fontsize=9)
        ax.legend(fontsize=7)
        paths["gradients"] = save_png(fig, img_dir / "watermark-gradients.png")
    return paths


def _trend_text(s: tuple[float, float, float]) -> str:
    if not (s[2] < 0 or s[1] > 0):
        return "Nothing detected: the CI includes 0."
    if s[2] < 0:
        return ("**Detected**: the CI excludes 0, so the larger the batch, the less the watermarks turn the gradient "
                "(Ju et al.'s direction). Averaging alone gives part of this: if each image's watermark moved the "
                "gradient independently, 1 - cos would fall as 1/B (a slope of -0.30) once the mean gradient "
                "dominates the batch noise, and more slowly before; the watermark is in the gradient of every "
                "batch size, diluted by the batch, not removed.")
    return "**Detected**: the CI excludes 0, and the larger the batch, the more the watermarks turn the gradient."


def verdict_lines(res: dict) -> list[str]:
    """One line per run of the grid, base readers included (Holm over all its points and positions,
    :func:`probekit.organisms.watermark.decide`), then the reader's OCR accuracy."""
    from ..report.text import ci_text

    return ([f"{r.condition}, seed {int(r.seed)}: {r.verdict}" for r in res["table"].itertuples()]
            + [f"reader OCR character accuracy {ci_text(res['ocr'], 'char_accuracy', 3)}"])


def section(res: dict, paths: dict[str, Path], md_dir: Path, command: str) -> str:
    rel = {k: v.relative_to(md_dir) if v.is_relative_to(md_dir) else v for k, v in paths.items()}
    o, t = res["ocr"], res["table"]
    L = [BEGIN, "## Watermark study on the reader organism (ProbingPrivacy in miniature)\n",
         f"Generated {_dt.date.today().isoformat()} by `{command}` on {platform.machine()} CPU (1 torch thread, "
         f"a 2-core machine shared with other jobs) in {res['seconds'] / 60:.1f} min. Every number below is from that run.\n",
         f"Base model: the reader organism (`probekit.organisms.reader()`, a tiny LLaVA pretrained here on rendered "
         f"text and shapes). OCR character accuracy on {o['n']} held-out 4-8 character strings: "
         f"**{fmt_ci(o['char_accuracy'], o['char_accuracy_lo'], o['char_accuracy_hi'], 3)}** (exact match {o['exact_match']:.2f}).\n",
         "Fine-tune: \"Describe the shape.\" -> e.g. \"red circle.\"; with probability p a username from pool U1 "
         f"({t.n_users.dropna().iloc[0]:.0f} random 5-8 character strings) is written over the training image at the given "
         "opacity, where the reader reads (its top-left banner); \"replay 0.5\": half of the fine-tuning set is the "
         "reader's own pretraining mix (reading other strings, naming shapes). Held-out images carry a U1 (seen) or "
         "U2 (unseen, disjoint, same lengths) username; `probekit.scan` probes `projector` and `lm.*.resid` at the "
         "last token of \"What is the username?\" (`prompt_last`), at the image-token mean, and while the model is "
         "teacher-forced to answer with the name on the image (`answer_mean`, `scan(..., answers=)`), and the top-10 "
         "next-token log-probabilities there (how sure the reader is), 5 folds split by username (a probe never sees "
         "a test username in training), 95% group-bootstrap CIs. Verdict per run: Holm correction over all its points "
         "and positions (`probekit.organisms.watermark.decide`). \"MIA\": the loss attack on reading the name, AUC "
         "seen vs unseen, CI resampling usernames. Each task-irrelevant regime runs as a p > 0 fine-tune and its "
         "matched p = 0 control (no username in training: it cannot have memorised U1). In the leak regime half of "
         "the watermarked images are asked \"What is the username?\" and answered with their U1 name, so the loss "
         "touches it; its matched control (\"(U3)\") is the same fine-tune reading names of a third pool, in neither "
         "held-out pool. The leak regime runs as a full fine-tune and through LoRA adapters (rank 8 on q/k/v/o). "
         "All on the seeds listed.\n",
         "| regime | seed | verdict (where) | best residual point | its probe acc (seen vs unseen) | MIA AUC | task acc | direct prompt seen | direct prompt unseen |",
         "|---|---|---|---|---|---|---|---|---|"]
    for r in t.itertuples():
        task = "–" if pd.isna(getattr(r, "task_acc", math.nan)) else f"{r.task_acc:.2f}"
        L.append(f"| {r.condition} | {int(r.seed)} | "
                 f"{'**detected** (' + str(r.n_detected) + '/' + str(r.m) + ': ' + r.hits + ')' if r.detected else 'nothing detected'} "
                 f"| {r.residual_best} | {fmt_ci(r.residual_acc, r.residual_lo, r.residual_hi)} | {fmt_ci(r.mia_auc, r.mia_lo, r.mia_hi)} "
                 f"| {task} | "
                 f"{fmt_ci(r.direct_seen, r.direct_seen_lo, r.direct_seen_hi)} | {fmt_ci(r.direct_unseen, r.direct_unseen_lo, r.direct_unseen_hi)} |")
    tuned = t[t.kind != "base"]
    summary = [f"{cond}: {int(g.detected.sum())} of {len(g)}" for cond, g in tuned.groupby("condition", sort=False)]
    L.append("\nRuns with a detection, per regime (seeds): " + "; ".join(summary) + "; base reader: "
             f"{int(t[t.kind == 'base'].detected.sum())} of {int((t.kind == 'base').sum())}.\n")
    base_hit = bool(t[t.kind == "base"].detected.any())
    for kind, what in (("task-irrelevant", "watermarked fine-tunes (the loss never touches the name)"),
                       ("leak", "leak fine-tunes (half the watermarked images ask for their U1 name)")):
        of_kind = tuned[tuned.kind == kind]
        by_lora = of_kind.lora.astype(bool)
        for lora, runs in of_kind.groupby(by_lora, sort=False):  # LoRA and full fine-tunes are read apart
            name = kind.capitalize() + ((" (LoRA)" if lora else " (full fine-tune)") if by_lora.nunique() > 1 else "")
            pos, neg = runs[~runs.control.astype(bool)], runs[runs.control.astype(bool)]
            ctrl = "matched p = 0 controls" if kind == "task-irrelevant" else "matched U3 controls (the same reading on a third pool)"
            if len(pos) and pos.detected.mean() > 0.5 and not neg.detected.any() and not base_hit:
                L.append(f"**{name}: detected** in {int(pos.detected.sum())} of {len(pos)} {what} and in none of "
                         f"the {len(neg)} {ctrl} nor the base reader (at: "
                         f"{'; '.join(sorted(set(', '.join(pos.hits).split(', ')) - {''}))}). The residual stream alone: "
                         f"detected in {int(pos.residual_detected.sum())} of {len(pos)} runs and "
                         f"{int(neg.residual_detected.sum())} of {len(neg)} controls. Membership inference (loss attack) AUC, mean over runs: "
                         f"{pos.mia_auc.mean():.2f} with U1 read in training, {neg.mia_auc.mean():.2f} in the controls; "
                         "direct prompt, seen minus unseen exact match: "
                         f"{float((pos.direct_seen - pos.direct_unseen).mean()):+.2f} and "
                         f"{float((neg.direct_seen - neg.direct_unseen).mean()):+.2f}.\n")
                continue
            why = ("a detection is no more frequent than in the controls" if pos.detected.sum() <= neg.detected.sum()
                   else "the detections do not replicate across seeds" if pos.detected.mean() <= 0.5
                   else "a control is detected too")
            gap = lambda d: float((d.direct_unseen - d.direct_seen).mean())  # noqa: E731
            L.append(f"**{name}: nothing detected**: {int(pos.detected.sum())} of {len(pos)} {what} and "
                     f"{int(neg.detected.sum())} of {len(neg)} {ctrl} show a Holm-corrected signal, so {why}. "
                     "On this organism a fine-tune-induced seen-vs-unseen signal did not appear here: a null, not evidence "
                     "of absence in larger models. Direct prompt, unseen minus seen exact match, mean over runs: "
                     f"{gap(pos):+.2f} in these fine-tunes, {gap(neg):+.2f} in their controls, "
                     f"{gap(t[t.kind == 'base']):+.2f} for the base reader (each pool has only a dozen names, so which "
                     f"names it holds moves this); loss-attack AUC {pos.mia_auc.mean():.2f} and {neg.mia_auc.mean():.2f}.\n")
    pr = res.get("protocol")
    if pr is not None and len(pr):
        L.append("**Ju et al.'s protocol (folds not split by username) on the same held-out set.** A test image then "
                 "shares its username with training images, so a probe can recognise the name and look up its pool:")
        L.append("\n| model | verdict | best point | probe acc |\n|---|---|---|---|")
        L += [f"| {r.model} | {'**detected** (' + str(r.n_detected) + '/' + str(r.m) + ')' if r.detected else 'nothing detected'} "
              f"| {r.best_point}@{r.best_position} | {fmt_ci(r.best_accuracy, r.best_lo, r.best_hi)} |" for r in pr.itertuples()]
        L.append("\nThe base reader, which never saw either pool, is \"detected\" under it: that protocol measures "
                 "whether the text is legible, not whether it was memorised, which is why probekit splits folds "
                 "by username.\n")
    for k in ("grid", "probes", "compare"):
        if k in rel:
            L.append(f"![{k}]({rel[k]})\n")
    if "gradients" in res:
        g, s = res["gradients"], res["trend"]["slope"]
        L.append(f"### Gradient cosine vs batch size ({res['gradient_condition']}, {g.seed.nunique()} seeds)\n")
        L.append("1 - cos(g(B), g(B without watermarks)) over the first steps; the trend is the per-seed slope of "
                 "log10(1 - cos) per doubling of the batch, t-CI over seeds: "
                 f"**{fmt_ci(*s)}**. {_trend_text(s)}\n")
        summ = g.groupby("batch_size").one_minus_cos.agg(["mean", "min", "max"]).reset_index()
        L.append("| batch size | 1 - cos, mean over seeds | min | max |\n|---|---|---|---|")
        L += [f"| {int(r.batch_size)} | {r.mean:.2e} | {r.min:.2e} | {r.max:.2e} |" for r in summ.itertuples()]
        if "gradients" in rel:
            L.append(f"\n![gradient cosine]({rel['gradients']})\n")
    L.append(END)
    return "\n".join(L) + "\n"


def write_section(res: dict, md_path: str | Path = "docs/results.md", img_dir: str | Path = "docs/img",
                  command: str = "probekit study watermark --full") -> list[Path]:
    """Replace (or add, after the title) the study's section of ``md_path``; other text is kept."""
    md_path, img_dir = Path(md_path), Path(img_dir)
    paths = figures(res, img_dir)
    text = md_path.read_text() if md_path.exists() else "# Results\n"
    new = section(res, paths, md_path.parent, command)
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + new + text[text.index(END) + len(END) + 1:]
    else:
        head, _, rest = text.partition("\n")
        text = f"{head}\n\n{new}\n{rest}"
    md_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(md_path, text, "results page")
    return [*paths.values(), md_path]
