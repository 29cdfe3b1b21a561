"""Does the verdict hold its level, and does its power statement hold? (``probekit study calibration [--small]``)

The organism here is the verdict itself, on synthetic activations of the designs probekit's readouts meet:
grouped samples (24 groups x 16, the label constant within a group, samples of a group alike) and small n
(40 samples at width 64, more features than training rows). Conditions:

- **null** (the negative control): nothing carries the label. A draw is a family-wise false positive when
  any row of its table is ``leaks`` (corrected over the table); the per-row rate counts a row's own
  uncorrected p below 0.05. Both must stay near the nominal 0.05.
- **planted** (the positive condition): the grouped design with the label added to one feature of each
  group's mean in the upper half of the points (``shift`` = 3 within-group sds). The detection rate of those
  rows is the test's power there; beside it the rows' accuracy and the minimal detectable accuracy the
  verdict states for a null of that design (80% power): a power statement that holds puts the detection
  rate near 0.8 where the accuracy is near that figure.

Every number is :func:`probekit.readout.probe_layers`'s own output (the one verdict,
:func:`probekit.readout.significance.add_verdicts`): the code a user calls, not a copy of it. Full size
(200 draws) rewrites the "Calibration of the verdict" section of ``docs/results.md``; ``--small`` runs 40.

Example:
    >>> import numpy as np
    >>> acts, labels, groups = grouped_design(np.random.default_rng(0), 6, 2, points=2, width=3)
    >>> sorted(acts), acts["lm.0.resid"].shape, labels.tolist()[:4], groups.tolist()[:4]
    (['lm.0.resid', 'lm.1.resid'], torch.Size([12, 3]), [0, 0, 0, 0], [0, 0, 1, 1])
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from .base import Options, Outcome, Study, replace_section

__all__ = ["grouped_design", "small_design", "STUDY"]

ALPHA = 0.05
SHIFT = 3.0  # the planted label, in within-group sds: rows near the stated minimal detectable accuracy


def grouped_design(rng: np.random.Generator, n_groups: int, per_group: int, points: int = 8, width: int = 16,
                   within: float = 2.0, shift: float = 0.0) -> tuple[dict, np.ndarray, np.ndarray]:
    """``(acts, labels, groups)``: one label per group, half the groups each, samples of a group alike
    (group means ``within`` sds apart); ``shift`` > 0 adds the label (+-shift) to feature 0 of the group
    means at the upper half of the points."""
    import torch

    groups = np.repeat(np.arange(n_groups), per_group)
    glab = rng.permutation(np.arange(n_groups) % 2)
    acts = {}
    for p in range(points):
        means = rng.normal(size=(n_groups, width)) * within
        if shift and p >= points // 2:
            means[:, 0] += shift * (2 * glab - 1)
        acts[f"lm.{p}.resid"] = torch.from_numpy((means[groups] + rng.normal(size=(len(groups), width))).astype(np.float32))
    return acts, np.repeat(glab, per_group), groups


def small_design(rng: np.random.Generator, n: int = 40, width: int = 64, points: int = 6) -> tuple[dict, np.ndarray, None]:
    """``(acts, labels, None)``: ``n`` samples of noise at ``width``, balanced labels, nothing carries them."""
    import torch

    labels = rng.permutation(np.arange(n) % 2)
    acts = {f"lm.{p}.resid": torch.from_numpy(rng.normal(size=(n, width)).astype(np.float32)) for p in range(points)}
    return acts, labels, None


def _draws(make: Any, draws: int, seed: int, progress: Any) -> list[pd.DataFrame]:
    from ..readout import probe_layers

    rng = np.random.default_rng(seed)
    out = []
    for d in range(draws):
        acts, labels, groups = make(rng)
        out.append(probe_layers(acts, labels, groups, n_perm=200, n_boot=0, progress=False, seed=d))
        progress.update(1)
    return out


def _row(design: str, condition: str, tables: list[pd.DataFrame], rows: slice = slice(None)) -> dict:
    from .._stats import wilson

    n = len(tables)
    fam = sum(bool(t.leaks.values[rows].any()) for t in tables)
    per_row = np.array([t.p_value.values[rows] < ALPHA for t in tables])
    detected = np.array([t.leaks.values[rows] for t in tables])
    lo, hi = wilson(fam, n)
    d_lo, d_hi = wilson(int(detected.sum()), detected.size)
    mde = np.concatenate([t.mde_accuracy.values for t in tables])
    return {"design": design, "condition": condition, "draws": n, "rows": int(per_row.shape[1]),
            "family_rate": fam / n, "family_lo": lo, "family_hi": hi, "row_rate": float(per_row.mean()),
            "detection_rate": float(detected.mean()), "detection_lo": d_lo, "detection_hi": d_hi,
            "accuracy": float(np.mean([t.accuracy.values[rows].mean() for t in tables])),
            "stated_mde": float(np.nanmedian(mde)) if np.isfinite(mde).any() else np.nan}


def calibrate(draws: int = 200, seed: int = 0) -> pd.DataFrame:
    """The table: per design and condition, draws, family-wise and per-row rates (Wilson CIs), the planted
    rows' detection rate, mean accuracy and the stated minimal detectable accuracy."""
    from .._progress import progress_bar

    designs = [("24 groups x 16, 8 points", "null", lambda r: grouped_design(r, 24, 16), slice(None)),
               ("n = 40 at width 64, 6 points", "null", lambda r: small_design(r), slice(None)),
               ("24 groups x 16, 8 points", "planted (points 4-7)", lambda r: grouped_design(r, 24, 16, shift=SHIFT),
                slice(4, None))]
    rows = []
    with progress_bar(total=draws * len(designs), desc="calibration draws") as bar:
        for i, (name, cond, make, part) in enumerate(designs):
            tables = _draws(make, draws, seed + i, bar)
            rows.append(_row(name, cond, tables, part))
            if cond.startswith("planted"):  # the points the label was not planted at are the null of this draw
                rows.append(_row(name, "null rows of the planted draws (points 0-3)", tables, slice(0, 4)))
    return pd.DataFrame(rows)


def verdict_lines(table: pd.DataFrame) -> list[str]:
    """One line per condition: the rate with its CI against the nominal level, or the power beside the MDE."""
    out = []
    for r in table.itertuples():
        if r.condition.startswith("planted"):
            out.append(f"{r.design}, {r.condition}: detected in {r.detection_rate:.2f} [{r.detection_lo:.2f}, "
                       f"{r.detection_hi:.2f}] of rows at mean accuracy {r.accuracy:.2f}; the verdict states 80% "
                       f"power at accuracy >= {r.stated_mde:.2f} for nulls of this design")
        else:
            holds = "holds its level" if r.family_lo <= ALPHA else "does NOT hold its level"
            out.append(f"{r.design}, {r.condition}: family-wise false positives {r.family_rate:.3f} [{r.family_lo:.3f}, "
                       f"{r.family_hi:.3f}], per row {r.row_rate:.3f}, at nominal {ALPHA}: {holds}")
    return out


def section(table: pd.DataFrame, command: str, seconds: float) -> str:
    cols = ["design", "condition", "draws", "rows", "family_rate", "family_lo", "family_hi", "row_rate",
            "detection_rate", "accuracy", "stated_mde"]
    from ..report.text import md_table

    md = md_table(table[cols], floats=".3f")
    return (f"## Calibration of the verdict\n\nGenerated by `{command}` in {seconds / 60:.1f} min "
            f"({int(table.draws.iloc[0])} draws per condition). Null designs: nothing carries the label; a draw is a "
            f"family-wise false positive when any row leaks after correction; the per-row rate counts uncorrected "
            f"p < 0.05. Planted: the label added to one feature of the group means at points 4-7 "
            f"({SHIFT:g} within-group sds): the detection rate there is the test's power, beside the accuracy the "
            f"verdict states it detects with 80% power.\n\n" + md + "\n\n" + "\n".join(f"- {x}" for x in verdict_lines(table)))


def _run(o: Options) -> Outcome:
    t0 = time.perf_counter()
    draws = 40 if o.small else 200
    table = calibrate(draws)
    seconds = time.perf_counter() - t0
    docs = None if o.small else (lambda md, img: [replace_section(
        md, "study:calibration", section(table, "probekit study calibration", seconds))])
    return Outcome(verdict_lines(table), {"calibration": table}, seconds, STUDY.out(o), write_docs=docs)


STUDY = Study("calibration", "the verdict's false-positive rate on null designs and its power on a planted one", _run,
              lambda o: "probekit-calibration-small" if o.small else "probekit-calibration", what="tables",
              docs="Calibration of the verdict")
