"""The memorisation study's write-up: its figures and the results page (``docs/results.md``)."""

from __future__ import annotations

import datetime as _dt
import math
import platform
from pathlib import Path

import pandas as pd
import torch

from ...files import atomic_write
from ...report.text import fmt_ci, md_table
from .measures import CONTROL_QUESTION
from .setup import POSITIONS

__all__ = ["save_pngs", "write_results", "verdict_lines", "EMPTY"]

#: why a table of :func:`probekit.studies.memorization.study.run_memorization` can be empty (not written then)
EMPTY = {"unlearning": "this configuration runs no unlearning method (--full runs them)",
         "controls": "this configuration runs no positive control"}


def _md(df: pd.DataFrame) -> str:
    return md_table(df, empty="(none)\n")


def _who(name: str) -> str:
    if name == "base":
        return "base model (not fine-tuned)"
    if name.startswith("p="):
        return f"fine-tuned, watermark on a fraction {name[2:]} of training images"
    return name.replace("-", " ")


def verdict_lines(res: dict) -> list[str]:
    """One line per scanned model and seed: the scan's own verdict (:func:`probekit.report.verdicts.verdict`,
    family-wise over every point, position and source of its table)."""
    from ...report.verdicts import verdict

    return [f"{_who(name)}, seed {seed}: {verdict(rep.table)}" for (name, seed), rep in res["reports"].items()]


def save_pngs(res: dict, img_dir: str | Path) -> dict[str, Path]:
    """The page's figures as matplotlib PNGs ``results-<name>.png`` in ``img_dir`` (offline: no kaleido)."""
    from ...report.figures.png import compare_png, pyplot, save_png
    from ...report.order import point_order

    plt, img_dir, paths = pyplot(), Path(img_dir), {}
    s, g = res["gradient_cosine_summary"], res["gradient_cosine"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, title in zip(axes, ("cos_mean", "cos_var"), ("mean cos per run", "variance of cos over steps")):
        for p, d in s.groupby("p"):
            d = d.sort_values("batch_size")
            line = ax.errorbar(d.batch_size, d[key], yerr=(d[f"{key}_hi"] - d[key]).fillna(0), marker="o", capsize=3,
                               label=f"p={p:g}")
            pts = g[g.p == p]
            ax.scatter(pts.batch_size, pts[key], s=12, alpha=0.4, color=line[0].get_color())
        ax.set_xscale("log", base=2)
        ax.ticklabel_format(axis="y", useOffset=False)  # cos sits a hair below 1: show it as it is
        ax.set_xlabel("batch size")
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=7)
    fig.suptitle("Gradient cosine: batch as trained vs the same batch without watermarks (95% CI over seeds)", fontsize=10)
    paths["gradient-cosine"] = save_png(fig, img_dir / "results-gradient-cosine.png")

    pr = res["probes"]
    pr = pr[(pr.source == "residual") & (pr.seed == pr.seed.min())]
    order = point_order(pr.point.unique())
    fig, axes = plt.subplots(1, len(POSITIONS), figsize=(10, 4), sharey=True)
    for ax, pos in zip(axes, POSITIONS):
        for model, d in pr[pr.position == pos].groupby("model", sort=False):
            d = d.set_index("point").loc[[o for o in order if o in set(d.point)]]
            ax.errorbar(list(d.index), d.accuracy, yerr=[d.accuracy - d.accuracy_lo, d.accuracy_hi - d.accuracy],
                        marker="o", capsize=3, label=model)
        ax.axhline(float(pr.chance.max()), ls=":", c="k")
        ax.set_title(pos, fontsize=10)
        ax.tick_params(axis="x", rotation=30, labelsize=7)
    axes[0].set_ylabel("seen vs unseen probe accuracy")
    axes[-1].legend(fontsize=7)
    fig.suptitle(f"Seen (U1) vs unseen (U2) watermark, probes per layer (folds by profile; seed {int(pr.seed.min())})",
                 fontsize=10)
    paths["probes"] = save_png(fig, img_dir / "results-probes.png")

    comps = res["comparisons"]
    if comps:
        key = max(comps, key=lambda k: (float(k[0].split("=")[1]), -k[1]))
        paths["compare"] = compare_png(comps[key].table, ("base", key[0]),
                                       f"base vs fine-tuned ({key[0]}, seed {key[1]}): seen vs unseen",
                                       img_dir / "results-compare.png")

    m = res["mia"]
    if len(m):
        fig, ax = plt.subplots(figsize=(9, 3.8))
        for (memb, attack), d in m.groupby(["membership", "attack"], sort=False):
            d = d.groupby("model", sort=False).agg(auc=("auc", "mean"), lo=("auc_lo", "mean"), hi=("auc_hi", "mean"))
            ax.errorbar(list(d.index), d.auc, yerr=[d.auc - d.lo, d.hi - d.auc], fmt="o", capsize=3,
                        label=f"{memb}, {attack}")
        ax.axhline(0.5, ls=":", c="k")
        ax.set_ylabel("AUC")
        ax.tick_params(axis="x", rotation=20, labelsize=7)
        ax.legend(fontsize=7)
        ax.set_title("Membership-inference AUC (mean over seeds of AUC and of its bootstrap CI ends)", fontsize=10)
        paths["mia"] = save_png(fig, img_dir / "results-mia.png")
    return paths


_OTHER_STUDIES = ("reader", "watermark-study", "watermark-notes", "ladder", "study:unlearning")


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
    imgs = save_pngs(res, img_dir)
    written = list(imgs.values())
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
        "probe acc (seen vs unseen)": [fmt_ci(*r) for r in zip(t.probe_accuracy, t.probe_accuracy_lo, t.probe_accuracy_hi)],
        "chance": t.chance.round(2), "rows with CI above chance": t.layers_ci_above_chance.astype(str) + "/" + t.rows.astype(str),
        "rows leaking (family-wise)": t.layers_leaking.astype(str) + "/" + t.rows.astype(str),
        "direct prompt acc": [fmt_ci(*r) for r in zip(t.direct_accuracy, t.direct_accuracy_lo, t.direct_accuracy_hi)],
        "loss-attack AUC (U1 vs U2)": [fmt_ci(*r) for r in zip(t.loss_auc, t.loss_auc_lo, t.loss_auc_hi)]})))
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
                               "accuracy": [fmt_ci(*r) for r in zip(pr.accuracy, pr.accuracy_lo, pr.accuracy_hi)],
                               "chance": pr.chance.round(2),
                               "MI bits": [fmt_ci(*r, 3) for r in zip(pr.mi_bits, pr.mi_lo, pr.mi_hi)],
                               "MI perm floor": pr.mi_perm_bits.round(3)})))
    lg = res["probes"][res["probes"].source != "residual"]
    if len(lg):
        L.append("\nFrom the top-k output logits only (same labels and folds):\n")
        L.append(_md(pd.DataFrame({"model": lg.model, "seed": lg.seed, "position": lg.position, "source": lg.source,
                                   "accuracy": [fmt_ci(*r) for r in zip(lg.accuracy, lg.accuracy_lo, lg.accuracy_hi)]})))
    L.append("\n## Asking directly (\"What is the username?\", greedy)\n")
    d = res["direct"]
    L.append(_md(pd.DataFrame({"model": d.model, "seed": d.seed,
                               "accuracy seen vs unseen": [fmt_ci(*r) for r in zip(d.accuracy, d.accuracy_lo, d.accuracy_hi)],
                               "contains username (seen)": [fmt_ci(*r) for r in zip(d.contains_seen, d.contains_seen_lo, d.contains_seen_hi)],
                               "contains username (unseen)": [fmt_ci(*r) for r in zip(d.contains_unseen, d.contains_unseen_lo, d.contains_unseen_hi)],
                               "first token hit (seen)": [fmt_ci(*r) for r in zip(d.first_token_seen, d.first_token_seen_lo, d.first_token_seen_hi)],
                               "example answers": d.examples})))
    L.append("\n## Membership inference (loss, Min-K% k=20%, on the task answer tokens)\n")
    if "mia" in imgs:
        L.append(f"![mia]({rel(imgs['mia'])})\n\nLoss and Min-K% coincide when the answers are single tokens "
                 "(their markers then overlap).\n")
    m = res["mia"]
    L.append(_md(pd.DataFrame({"model": m.model, "seed": m.seed, "membership": m.membership, "attack": m.attack,
                               "AUC": [fmt_ci(*r) for r in zip(m.auc, m.auc_lo, m.auc_hi)],
                               "TPR@1%FPR": [fmt_ci(*r) for r in zip(m.tpr_at_1fpr, m.tpr_lo, m.tpr_hi)],
                               "n (members/non)": m.n_members.astype(str) + "/" + m.n_nonmembers.astype(str)})))
    L.append("\n## Task accuracy (held-out, teacher-forced exact match, Wilson CI)\n")
    ta = res["task"]
    L.append(_md(pd.DataFrame({"model": ta.model, "batch size": ta.batch_size, "seed": ta.seed,
                               "accuracy": [fmt_ci(*r) for r in zip(ta.accuracy, ta.accuracy_lo, ta.accuracy_hi)]})))
    c = res["controls"]
    if len(c):
        L.append(f"\n## Positive control: watermark identity (4 profiles drawn as `{cfg['control_mode']}`; in training "
                 f"the answer to '{CONTROL_QUESTION}' is the profile's word, p = 1, {cfg['control_steps']} steps)\n")
        c = c[c.source == "residual"]
        if "answer_accuracy" in c.columns:
            a = c.dropna(subset=["answer_accuracy"]).iloc[0]
            L.append(f"Tuned model answers the tag question on held-out images with accuracy "
                     f"{fmt_ci(a.answer_accuracy, a.answer_accuracy_lo, a.answer_accuracy_hi)} (chance 0.25).\n")
        L.append(_md(pd.DataFrame({"model": c.model, "point": c.point, "position": c.position,
                                   "accuracy": [fmt_ci(*r) for r in zip(c.accuracy, c.accuracy_lo, c.accuracy_hi)],
                                   "chance": c.chance.round(2)})))
    if res.get("removal"):
        L.append("\n## Removal: ablating a 'watermark present' direction (difference of means, lm.*.resid, last token)\n")
        for key, title in (("presence", "label: watermark present vs clean"), ("seen_unseen", "label: seen vs unseen")):
            rep = res["removal"][key]
            sup = rep.suppression
            L.append(f"\n{title} (probes retrained after the ablation):\n")
            L.append(_md(pd.DataFrame({"point": sup.point, "position": sup.position,
                                       "before": [fmt_ci(*r) for r in zip(sup.accuracy_before, sup.accuracy_before_lo, sup.accuracy_before_hi)],
                                       "after": [fmt_ci(*r) for r in zip(sup.accuracy_after, sup.accuracy_after_lo, sup.accuracy_after_hi)],
                                       "chance": sup.chance.round(2)})))
            cost = rep.cost
            line = f"Cost: KL on clean inputs {fmt_ci(cost['kl_mean'], cost['kl_lo'], cost['kl_hi'], 4)} nats"
            if "task_accuracy_before" in cost:
                line += (f"; task accuracy {fmt_ci(cost['task_accuracy_before'], cost['task_accuracy_before_lo'], cost['task_accuracy_before_hi'])}"
                         f" -> {fmt_ci(cost['task_accuracy_after'], cost['task_accuracy_after_lo'], cost['task_accuracy_after_hi'])}")
            L.append(line + ".\n")
    u = res["unlearning"]
    if len(u):
        L.append(f"\n## Unlearning baselines (forget set: the watermarked training images of the p={max(cfg['ps']):g} model, "
                 f"{cfg['unlearn_steps']} steps, lr {cfg['unlearn_lr']})\n")
        L.append(_md(pd.DataFrame({"method": u.method,
                                   "seen-vs-unseen probe (best)": [fmt_ci(*r) for r in zip(u.probe_best, u.probe_best_lo, u.probe_best_hi)],
                                   "at": u.probe_point,
                                   "task accuracy": [fmt_ci(*r) for r in zip(u.task_accuracy, u.task_lo, u.task_hi)],
                                   "KL clean (nats)": [fmt_ci(*r, 4) for r in zip(u.kl_clean, u.kl_lo, u.kl_hi)],
                                   "forget NLL": u.forget_nll.round(3),
                                   "forget-vs-fresh loss AUC": [fmt_ci(*r) for r in zip(u.forget_vs_fresh_auc, u.auc_lo, u.auc_hi)]})))
    md_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(md_path, "\n".join(L) + others, "results page")
    written.append(md_path)
    return written
