"""The figures of the unlearning section (matplotlib PNGs: plotly's PNG export needs Chrome, absent offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["save_pngs", "NAMES"]

NAMES = ("unlearning-probes", "unlearning-after", "unlearning-utility", "unlearning-relearn", "unlearning-pareto")


def _ci_style(d: pd.DataFrame) -> dict:
    return dict(yerr=[d.accuracy - d.accuracy_lo, d.accuracy_hi - d.accuracy], marker="o", ms=4, capsize=3)


def _probes(plt, pr: pd.DataFrame):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, kind, title in zip(axes, ("residual", "lens"), ("raw residual stream", "residual through the logit lens")):
        for (model, prof, pos), d in pr[pr.features == kind].groupby(["model", "profiles", "position"], sort=False):
            d = d.sort_values("layer")
            ax.errorbar(d.point, d.accuracy, label=f"{model}, {prof}, {pos}", **_ci_style(d))
        ax.axhline(float(pr.chance.max()), ls=":", c="k", lw=1)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("job probe accuracy (folds by profile, 95% CI by profile)")
    axes[1].legend(fontsize=7)
    fig.suptitle("Can the job be read per layer? Trained vs never-seen profiles vs untrained base")
    return fig


def _after(plt, up: pd.DataFrame, split: int):
    d0 = up[(up.split == split) & (up.position == "last") & (up.features == "residual")]
    fits = list(dict.fromkeys(d0.fit))
    fig, axes = plt.subplots(1, len(fits), figsize=(5.5 * len(fits), 4.2), sharey=True, squeeze=False)
    for ax, fit in zip(axes[0], fits):
        d1 = d0[d0.fit == fit]
        for method, d in d1.groupby("method", sort=False):
            ax.errorbar(d.point, d.accuracy, label=method, **_ci_style(d))
        ax.axhline(float(d1.chance.max()), ls=":", c="k", lw=1)
        ax.set_title(f"probe fitted on {fit}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("forget-profile job, residual @ last (95% CI by profile)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"After removal ({split}% forget split): is the fact still in the stream?")
    return fig


def _utility(plt, u: pd.DataFrame, split: int):
    u = u[u.split == split]
    bars = (("forget_image", "forget (portrait)"), ("forget_text", "forget (name)"),
            ("retain_image", "retain (portrait)"), ("retain_test_image", "retain test portraits"))
    fig, ax = plt.subplots(figsize=(12, 4))
    x, w = np.arange(len(u)), 0.8 / len(bars)
    for i, (key, name) in enumerate(bars):
        ax.bar(x + (i - (len(bars) - 1) / 2) * w, u[key], w, label=name,
               yerr=[u[key] - u[f"{key}_lo"], u[f"{key}_hi"] - u[key]], capsize=2)
    ax.axhline(0.25, ls=":", c="k", lw=1)
    ax.set_xticks(x, [f"{m}\n(utility destroyed)" if d else m for m, d in zip(u.method, u.utility_destroyed)], fontsize=8)
    ax.set_ylabel("multiple choice, likelihood (95% CI)")
    ax.legend(fontsize=8, ncol=4)
    ax.set_title(f"Multiple-choice accuracy after removal ({split}% split; chance 0.25; 'retrain': the reference)")
    return fig


def _relearn(plt, u: pd.DataFrame, split: int):
    u = u[(u.split == split) & u.relearn_forget_image.notna()] if "relearn_forget_image" in u else u.iloc[:0]
    fig, ax = plt.subplots(figsize=(11, 4))
    x = np.arange(len(u))
    for i, (key, name) in enumerate((("forget_image", "after removal"), ("relearn_forget_image", "after relearning"))):
        ax.bar(x + (i - 0.5) * 0.38, u[key], 0.38, label=name,
               yerr=[u[key] - u[f"{key}_lo"], u[f"{key}_hi"] - u[key]], capsize=2)
    ref = u[u.method == "retrain"]
    if len(ref):
        ax.axhline(float(ref.relearn_forget_image.iloc[0]), ls="--", c="grey", lw=1, label="reference after relearning")
    ax.axhline(0.25, ls=":", c="k", lw=1)
    ax.set_xticks(x, list(u.method))
    ax.set_ylabel("forget multiple choice, portrait (95% CI)")
    ax.legend(fontsize=8)
    ax.set_title(f"Relearning attack ({split}% split): a few steps of fine-tuning on retain data")
    return fig


def save_pngs(res: dict, img_dir: str | Path) -> dict[str, Path]:
    """The section's figures (:data:`NAMES`) as PNGs in ``img_dir``; returns ``{name: path}``."""
    from ...report.figures.png import pyplot, save_png
    from .compare import comparison, pareto

    plt, img_dir = pyplot(), Path(img_dir)
    u, up = res["unlearning"], res["unlearning_probes"]
    split = max(up.split)
    figs = {"unlearning-probes": _probes(plt, res["probes"]), "unlearning-after": _after(plt, up, split),
            "unlearning-utility": _utility(plt, u, split), "unlearning-relearn": _relearn(plt, u, split),
            "unlearning-pareto": pareto(plt, comparison(res), split)}
    return {name: save_png(fig, img_dir / f"results-{name}.png") for name, fig in figs.items()}
