"""Static PNG figures for the studies' pages in ``docs/``, drawn with matplotlib.

plotly's own PNG export needs kaleido and a Chrome binary, which an offline machine does not have;
the interactive reports stay plotly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

__all__ = ["pyplot", "save_png", "compare_png"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Lay out, write and close ``fig``; returns the path."""
    import io

    from ...files import atomic_write

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    return atomic_write(path, buf.getvalue(), "figure")  # a temporary name, fsync, rename


def compare_png(table: pd.DataFrame, names: Sequence[str], title: str, path: str | Path) -> Path:
    """Two models' accuracy per point and position, and their difference with its 95% CI.

    ``table`` is :func:`probekit.compare`'s ``.table`` (``accuracy_base``, ``accuracy_tuned``, their
    ``_lo`` / ``_hi``, ``diff``, ``diff_lo``, ``diff_hi``); ``names`` labels the base and the tuned model.
    """
    plt = pyplot()
    fig, (top, bot) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    labels = [f"{p}@{q}" for p, q in zip(table.point, table.position)]
    x = np.arange(len(table))
    for suffix, lab in zip(("base", "tuned"), names):
        a, lo, hi = table[f"accuracy_{suffix}"], table[f"accuracy_lo_{suffix}"], table[f"accuracy_hi_{suffix}"]
        top.errorbar(x, a, yerr=[a - lo, hi - a], marker="o", capsize=3, label=lab)
    top.axhline(0.5, ls=":", c="k")
    top.set_ylabel("seen vs unseen accuracy")
    top.legend(fontsize=7)
    d = table["diff"]
    bot.errorbar(x, d, yerr=[d - table.diff_lo, table.diff_hi - d], marker="o", capsize=3, c="tab:red")
    bot.axhline(0, ls=":", c="k")
    bot.set_ylabel("tuned - base (95% CI)")
    bot.set_xticks(x, labels, rotation=30, fontsize=7)
    fig.suptitle(title, fontsize=10)
    return save_png(fig, path)
