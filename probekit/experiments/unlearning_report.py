"""The unlearning section of ``docs/results.md`` (:func:`write_section`) and its figures.

The section sits between ``<!-- study:unlearning -->`` and ``<!-- /study:unlearning -->``; the rest of
the page is kept as it is (appended at the end the first time).
"""

from __future__ import annotations

import platform
from pathlib import Path

import pandas as pd

from ..files import atomic_write
from ..report.text import ci_text, fmt_ci, where

__all__ = ["save_pngs", "write_section", "verdict_lines", "EMPTY", "MARK"]

#: why a table of :func:`probekit.experiments.unlearning_study.run_study` can be empty (not written then)
EMPTY = {"transfer": "this configuration teaches no profile in one modality only (n_transfer=0; the quick "
                     "--small run skips them), so there is no cross-modal transfer to measure"}

MARK = ("<!-- study:unlearning -->", "<!-- /study:unlearning -->")


def _md(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    for r in df.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(lines) + "\n"


def _ci_style(d: pd.DataFrame) -> dict:
    return dict(yerr=[d.accuracy - d.accuracy_lo, d.accuracy_hi - d.accuracy], marker="o", ms=4, capsize=3)


def save_pngs(res: dict, img_dir: str | Path) -> dict[str, Path]:
    """The section's three figures as matplotlib PNGs in ``img_dir`` (plotly's PNG export needs Chrome,
    absent offline). Returns ``{name: path}``."""
    import numpy as np

    from ..report.figures.png import pyplot, save_png

    plt, img_dir, paths = pyplot(), Path(img_dir), {}

    def save(fig, name: str) -> None:
        paths[name] = save_png(fig, img_dir / f"results-{name}.png")

    pr = res["probes"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, kind, title in zip(axes, ("residual", "lens"), ("raw residual stream", "residual through the logit lens")):
        for (model, prof, pos), d in pr[pr.features == kind].groupby(["model", "profiles", "position"], sort=False):
            d = d.sort_values("layer")
            ax.errorbar(d.point, d.accuracy, label=f"{model}, {prof}, {pos}", **_ci_style(d))
        ax.axhline(float(pr.chance.max()), ls=":", c="k", lw=1)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("job probe accuracy (folds by profile, 95% CI)")
    axes[1].legend(fontsize=7)
    fig.suptitle("Can the job be read per layer? Trained vs never-seen profiles vs untrained base")
    save(fig, "unlearning-probes")

    up = res["unlearning_probes"]
    split = max(up.split)
    d0 = up[(up.split == split) & (up.position == "last")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, kind, title in zip(axes, ("residual", "lens"), ("raw residual", "logit lens")):
        for method, d in d0[d0.features == kind].groupby("method", sort=False):
            ax.errorbar(d.point, d.accuracy, label=method, **_ci_style(d))
        ax.axhline(float(d0.chance.max()), ls=":", c="k", lw=1)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("forget-profile job, probe fitted on retain (95% CI)")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"After unlearning ({split}% forget split, last token): is the fact still in the stream?")
    save(fig, "unlearning-after")

    u = res["unlearning"]
    u = u[u.split == split]
    bars = (("forget_image", "forget (portrait)"), ("forget_text", "forget (name)"),
            ("retain_image", "retain (portrait)"), ("retain_test_image", "retain test portraits"))
    fig, ax = plt.subplots(figsize=(11, 4))
    x, w = np.arange(len(u)), 0.8 / len(bars)
    for i, (key, name) in enumerate(bars):
        ax.bar(x + (i - (len(bars) - 1) / 2) * w, u[key], w, label=name,
               yerr=[u[key] - u[f"{key}_lo"], u[f"{key}_hi"] - u[key]], capsize=2)
    ax.axhline(0.25, ls=":", c="k", lw=1)
    ax.set_xticks(x, u.method)
    ax.set_ylabel("multiple-choice accuracy (95% CI)")
    ax.legend(fontsize=8, ncol=4)
    ax.set_title(f"Multiple-choice accuracy after unlearning ({split}% split; chance 0.25)")
    save(fig, "unlearning-utility")
    return paths


def _detected(g: pd.DataFrame) -> str:
    n = int(g.detected.sum())
    return f"detected at {n} of {len(g)} rows" if n else f"nothing detected at any of {len(g)} rows"


def verdict_lines(res: dict) -> list[str]:
    """What the study found, one line per question; every count is of the rows of the table it names.

    Facts learned (multiple choice), the job read per layer (positive condition and the two
    controls; ``detected`` of ``probes``, Holm within each model/profile set), membership
    inference (``mia``), each unlearning method against no unlearning at the same split
    (``unlearning``; ``unlearning_probes``: the job still read from the forget profiles), and
    cross-modal transfer when the run measured it.
    """
    ut, ub = res["utility_tuned"], res["utility_base"]
    L = [f"Facts learned (multiple choice on trained profiles, chance 0.25): {ci_text(ut, 'retain_image')} with "
         f"the portrait, {ci_text(ut, 'retain_text')} by name; the untrained base {ci_text(ub, 'retain_image')} "
         f"and {ci_text(ub, 'retain_text')}."]
    for (model, profiles), g in res["probes"].groupby(["model", "profiles"], sort=False):
        role = "the finding" if (model, profiles) == ("tuned", "trained") else "a control"
        b = g.loc[g.accuracy.idxmax()]
        L.append(f"The job read from the {model} model on {profiles} profiles ({role}): {_detected(g)} "
                 f"(Holm; best {b.features} {where(b.point, b.position)} "
                 f"{fmt_ci(b.accuracy, b.accuracy_lo, b.accuracy_hi)}, chance {b.chance:.2f}).")
    for model, g in res["mia"].groupby("model", sort=False):
        L.append(f"Membership inference on the {model} model (trained vs never-seen profiles), AUC: "
                 + ", ".join(f"{r.attack} {fmt_ci(r.auc, r.auc_lo, r.auc_hi)}" for r in g.itertuples()) + ".")
    u, up = res["unlearning"], res["unlearning_probes"]
    for r in u[u.method != "none"].to_dict("records"):
        before = u[(u.split == r["split"]) & (u.method == "none")].iloc[0]
        pp = up[(up.split == r["split"]) & (up.method == r["method"])]
        p0 = up[(up.split == r["split"]) & (up.method == "none")]
        L.append(f"{r['method']} at the {r['split']}% split ({r['forget_profiles']} forget profiles): forget multiple "
                 f"choice {before['forget_image']:.2f} → {ci_text(r, 'forget_image')} with the portrait, "
                 f"{before['forget_text']:.2f} → {ci_text(r, 'forget_text')} by name; retain "
                 f"{before['retain_image']:.2f} → {ci_text(r, 'retain_image')}; the job read from the forget "
                 f"profiles: {_detected(pp)} (before: {_detected(p0)}).")
    for r in res["transfer"].itertuples():
        L.append(f"Cross-modal transfer, {r.group} ({r.profiles} profiles): {fmt_ci(r.taught_acc, r.taught_lo, r.taught_hi)} "
                 f"in the taught modality, {fmt_ci(r.other_acc, r.other_lo, r.other_hi)} in the other "
                 f"(gap {fmt_ci(r.gap, r.gap_lo, r.gap_hi)}).")
    return L


def _before(res: dict) -> list[str]:
    cfg, tr, ut, ub = res["config"], res["train"], res["utility_tuned"], res["utility_base"]
    L = [f"Fine-tune: {tr['samples']} QA samples, {cfg['steps']} steps of {cfg['batch_size']}, lr {cfg['lr']}, "
         f"final loss {tr['final_loss']:.3f}, {tr['seconds']:.0f} s (one thread).\n",
         "Multiple choice (4 options, chance 0.25), cloze (fact word in the teacher-forced biography) and ROUGE-L "
         f"(greedy biography), {max(cfg['splits'])}% forget split; 95% CIs:\n"]
    rows = []
    for name, u in (("tuned", ut), ("base (untrained)", ub)):
        rows.append({"model": name, "forget MC (portrait)": ci_text(u, "forget_image"), "forget MC (name)": ci_text(u, "forget_text"),
                     "retain MC (portrait)": ci_text(u, "retain_image"), "retain MC (name)": ci_text(u, "retain_text"),
                     "test portraits (retain)": ci_text(u, "retain_test_image"),
                     "never-seen MC (portrait)": ci_text(u, "unseen_image"),
                     "cloze forget (portrait/name)": f"{ci_text(u, 'cloze_forget_image')} / {ci_text(u, 'cloze_forget_text')}",
                     "ROUGE-L forget (portrait/name)": (f"{ci_text(u, 'rouge_forget_image')} / {ci_text(u, 'rouge_forget_text')}"
                                                        if "rouge_forget_image" in u else "–")})
    L.append(_md(pd.DataFrame(rows)))
    if "rouge_forget_text_example" in ut:
        L.append(f"\nExample generation (tuned, by name): `{ut['rouge_forget_text_example']}`\n")
    return L


def write_section(res: dict, md_path: str | Path = "docs/results.md", img_dir: str | Path = "docs/img",
                  command: str = "probekit study unlearning") -> list[Path]:
    """Write (or replace) the unlearning section of ``md_path`` and its PNG figures."""
    md_path = Path(md_path)
    imgs = save_pngs(res, img_dir)
    written = list(imgs.values())
    rel = lambda p: Path(p).relative_to(md_path.parent) if Path(p).is_relative_to(md_path.parent) else p  # noqa: E731
    cfg = res["config"]
    L = [MARK[0], "\n# Results: memorised facts and unlearning (MLLMU-Bench and Wen et al. in miniature)\n",
         f"Generated by `{command}` on {platform.machine()} CPU (a 2-core machine shared with other jobs), "
         f"study run time {res['seconds'] / 60:.1f} min. Every number below comes from that run.\n",
         f"Organism (`probekit.organisms.profiles`): {cfg['n_profiles']} fictitious profiles trained (name, job, "
         f"birthplace, age; a 4x4 mosaic portrait each; a biography), {cfg['n_transfer']} taught in one modality only, "
         f"{cfg['n_unseen']} never seen. Questions with the portrait (multimodal) or by name with a blank image "
         "(unimodal). Test set: 6 transformed portraits per profile (brightness, shift, noise). Model: tiny LLaVA "
         f"(`probekit.tiny`, {cfg['num_layers']} LM layers, hidden 64, 32 px images of 16 patches), full fine-tuning. "
         "Forget splits are nested prefixes of the trained profiles.\n",
         "## Before unlearning\n"] + _before(res)
    L.append("\n### Positive condition and negative controls: the job per layer (probes, folds by profile)\n")
    L.append("`detected` = the 95% CI-derived one-sided p-value survives Holm's correction across all rows of that "
             "model/profile set. `residual`: the raw stream; `lens`: the same stream read through the model's final "
             "norm and unembedding, log-softmax over the job words (a fixed linear read-out).\n")
    L.append(f"![probes]({rel(imgs['unlearning-probes'])})\n")
    pr = res["probes"]
    L.append(_md(pd.DataFrame({"model": pr.model, "profiles": pr.profiles, "features": pr.features, "point": pr.point,
                               "position": pr.position, "accuracy": [fmt_ci(*r) for r in zip(pr.accuracy, pr.accuracy_lo, pr.accuracy_hi)],
                               "chance": pr.chance.round(2), "Holm p": pr.p.map(lambda v: f"{v:.2g}"),
                               "detected": pr.detected.map({True: "yes", False: "nothing detected"})})))
    L.append("\n### Membership inference: trained vs never-seen profiles (fact and biography answers)\n")
    m = res["mia"]
    L.append(_md(pd.DataFrame({"model": m.model, "attack": m.attack, "AUC": [fmt_ci(*r) for r in zip(m.auc, m.auc_lo, m.auc_hi)],
                               "TPR@1%FPR": [fmt_ci(*r) for r in zip(m.tpr_at_1fpr, m.tpr_lo, m.tpr_hi)],
                               "n (members/non)": m.n_members.astype(str) + "/" + m.n_nonmembers.astype(str)})))
    t = res["transfer"]
    if len(t):
        L.append("\n### Cross-modal transfer (Wen et al.): facts taught in one modality, asked in the other\n")
        L.append(_md(pd.DataFrame({"group": t.group, "profiles": t.profiles,
                                   "taught modality MC": [fmt_ci(*r) for r in zip(t.taught_acc, t.taught_lo, t.taught_hi)],
                                   "other modality MC": [fmt_ci(*r) for r in zip(t.other_acc, t.other_lo, t.other_hi)],
                                   "gap": [fmt_ci(*r) for r in zip(t.gap, t.gap_lo, t.gap_hi)], "chance": t.chance})))
    L.append(f"\n## Unlearning (GA, GD, KL, NPO beta 0.4: {cfg['unlearn_steps']} steps, lr {cfg['unlearn_lr']}; "
             "steering: the job subspace fitted on forget-profile activations — `ablate` difference of means at "
             "every `lm.*.resid`, `leace` LEACE eraser, `orthogonalize` weight edit)\n")
    for key in ("unlearning-utility", "unlearning-after"):
        L.append(f"![{key}]({rel(imgs[key])})\n")
    u, um, up = res["unlearning"], res["unlearning_mia"], res["unlearning_probes"]
    rows = []
    for r in u.to_dict("records"):
        mm = um[(um.split == r["split"]) & (um.method == r["method"])].set_index("attack")
        pp = up[(up.split == r["split"]) & (up.method == r["method"])]
        best = pp.loc[pp.accuracy.idxmax()]
        rows.append({"split": f"{r['split']}% ({r['forget_profiles']})", "method": r["method"],
                     "forget MC portrait / name": f"{ci_text(r, 'forget_image')} / {ci_text(r, 'forget_text')}",
                     "forget test portraits": ci_text(r, "forget_test_image"),
                     "retain MC portrait / name": f"{ci_text(r, 'retain_image')} / {ci_text(r, 'retain_text')}",
                     "retain test": ci_text(r, "retain_test_image"), "cloze forget (name)": ci_text(r, "cloze_forget_text"),
                     "MIA AUC loss / Min-K% / Min-K%++ (forget vs never seen)":
                         " / ".join(f"{mm.loc[a, 'auc']:.2f}" for a in ("loss", "min_k", "min_k_pp")),
                     "TPR@1%FPR (Min-K%++)": f"{mm.loc['min_k_pp', 'tpr_at_1fpr']:.2f}",
                     "best probe on forget (retain-fitted)": f"{fmt_ci(best.accuracy, best.accuracy_lo, best.accuracy_hi)} "
                                                             f"{best.features} {best.point}@{best.position}",
                     "rows detected": f"{int(pp.detected.sum())}/{len(pp)}"})
    L.append(_md(pd.DataFrame(rows)))
    L.append("\nPer layer after unlearning (probe fitted on the retain profiles of the same model, scored on the "
             f"forget profiles; CI: bootstrap over forget profiles; chance: the best constant answer):\n")
    L.append(_md(pd.DataFrame({"split": up.split, "method": up.method, "features": up.features, "point": up.point,
                               "position": up.position, "accuracy": [fmt_ci(*r) for r in zip(up.accuracy, up.accuracy_lo, up.accuracy_hi)],
                               "chance": up.chance.round(2),
                               "detected": up.detected.map({True: "yes", False: "nothing detected"})})))
    L.append(MARK[1])
    section = "\n".join(L) + "\n"
    old = md_path.read_text() if md_path.exists() else ""
    if MARK[0] in old and MARK[1] in old:
        new = old[:old.index(MARK[0])] + section.rstrip("\n") + old[old.index(MARK[1]) + len(MARK[1]):]
    else:
        new = (old.rstrip("\n") + "\n\n" if old else "") + section
    md_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(md_path, new, "results page")
    written.append(md_path)
    return written
