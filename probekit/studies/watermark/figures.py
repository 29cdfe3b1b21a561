"""The dose study's figures, drawn with matplotlib from its result: the detection rate per method along the
dose (Wilson intervals), the mean membership AUC per layer, and the paired differences at fraction 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...report.figures.png import pyplot, save_png
from .writeup import SHOWN, _order, _row_name

__all__ = ["figures"]


def figures(res: dict, img_dir: Path) -> dict[str, Path]:
    """``dose``: detection rate per method against the fraction (Wilson CIs); ``layers``: mean membership AUC
    per layer for every kind of run; ``paired``: the paired differences in differences with their CIs."""
    plt = pyplot()
    paths = {}
    dt = res["dose"]
    leak = dt[dt.kind.isin(["leak", "task-irrelevant"])]
    ctrl = [k for k in ("p=0 control", "U3 control") if k in set(dt.runs)]  # drawn to the right of the dose
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    fr = sorted(leak.fraction.unique())
    for j, name in enumerate(m for m in SHOWN if m in set(leak.method)):
        d = pd.concat([leak[leak.method == name].sort_values("fraction")]
                      + [dt[(dt.runs == k) & (dt.method == name)] for k in ctrl])
        x = np.arange(len(d)) + (j - 3) * 0.04 + np.r_[np.zeros(len(fr)), np.full(len(d) - len(fr), 0.5)]
        ax.errorbar(x[:len(fr)], d.rate[:len(fr)], yerr=[(d.rate - d.rate_lo)[:len(fr)], (d.rate_hi - d.rate)[:len(fr)]],
                    marker="o", capsize=2, label=name, color=f"C{j}")
        ax.errorbar(x[len(fr):], d.rate[len(fr):], yerr=[(d.rate - d.rate_lo)[len(fr):], (d.rate_hi - d.rate)[len(fr):]],
                    marker="s", capsize=2, ls="none", color=f"C{j}")
    reads = leak.drop_duplicates("fraction").sort_values("fraction").readings
    ax.axvline(len(fr) - 0.25, c="grey", lw=0.8)
    ax.set_xticks(np.r_[np.arange(len(fr)), len(fr) + 0.5 + np.arange(len(ctrl))],
                  [f"{f:g}\n({r} reads)" for f, r in zip(fr, reads)] + [k.replace(" control", "\ncontrol") for k in ctrl])
    ax.set_xlabel("fraction of each name's images that ask for it (readings per name); matched controls")
    ax.set_ylabel("runs detected (Wilson 95% CI)")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(f"Leak dose-response on the reader ({int(leak.n.max())} seeds per fraction)", fontsize=10)
    paths["dose"] = save_png(fig, img_dir / "watermark-dose.png")

    lt = res["layers"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    for ax, (src, score) in zip(axes, (("logit-lens", "loss"), ("logit-lens minus base", "loss"), ("probe", "features"))):
        for key in _order(lt.runs.unique()):
            d = lt[(lt.runs == key) & (lt.source == src) & (lt.score == score)]
            if not len(d):
                continue
            x = np.arange(len(d))
            ax.errorbar(x, d.auc, yerr=[d.auc - d.auc_min, d.auc_max - d.auc], marker="o", capsize=2, label=key)
            ax.set_xticks(x, d.point, fontsize=8)
        ax.axhline(0.5, ls=":", c="k")
        ax.set_title(f"{src}, {score}", fontsize=9)
    axes[0].set_ylabel("AUC: mean over seeds, bars: range")
    fig.suptitle("Membership AUC per layer (seen vs unseen names), per kind of run", fontsize=10)
    axes[-1].legend(fontsize=7)
    paths["layers"] = save_png(fig, img_dir / "watermark-layers.png")

    pt = res["paired"]
    if len(pt):
        fig, ax = plt.subplots(figsize=(8, 0.32 * pt.groupby("fraction").size().max() + 2.2))
        labels = list(dict.fromkeys(_row_name(r) for r in pt.itertuples()))
        y = {lab: i for i, lab in enumerate(labels[::-1])}
        fracs = sorted(pt.fraction.unique())
        for j, f in enumerate(fracs):
            d = pt[pt.fraction == f]
            yy = np.array([y[_row_name(r)] for r in d.itertuples()]) + (j - len(fracs) / 2) * 0.12
            ax.errorbar(d.estimate, yy, xerr=[d.estimate - d.lo, d.hi - d.estimate], fmt="o", ms=3, capsize=2,
                        label=f"fraction {f:g}")
        ax.axvline(0, ls=":", c="k")
        ax.set_yticks(list(y.values()), list(y.keys()), fontsize=7)
        ax.set_xlabel("(seen - unseen) in the fine-tune - in its p=0 control, mean over name pairs, 95% CI", fontsize=8)
        ax.legend(fontsize=7)
        paths["paired"] = save_png(fig, img_dir / "watermark-paired.png")
    return paths
