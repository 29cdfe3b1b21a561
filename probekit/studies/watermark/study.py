"""``probekit study watermark``: the ProbingPrivacy watermark study on the reader organism, with dose and power.

Runs the dose study (:mod:`probekit.studies.watermark.dose`: leak fractions over seeds with their
``p = 0`` controls, the membership audit of every run, the guard on a shifted split, the paired
task-irrelevant test), Ju et al.'s unsplit-fold protocol once, and the gradient cosine vs batch size over
seeds, and writes the study's section of ``docs/results.md`` (between ``<!-- watermark-study -->`` markers)
with its figures (:mod:`probekit.studies.watermark.writeup`).

Example::

    probekit study watermark            # the quick version (fractions 0 and 0.5, one seed, 32 names): tables only
    probekit study watermark --full     # the grid of docs/results.md, rewrites its section
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..._stats import t_interval
from ...files import atomic_write
from . import organism as W
from ...organisms.reader import ocr_accuracy, reader
from ...report.figures.png import compare_png, pyplot, save_png
from ...report.text import fmt_ci
from . import dose as WD
from . import figures as WF, writeup as WW

__all__ = ["run_study", "gradient_trend", "write_section", "verdict_lines", "analyse", "tables", "reload"]

BEGIN, END = WW.BEGIN, WW.END


def gradient_trend(base_path: Any, c: W.Condition, batch_sizes=(2, 8, 32), seeds=(0, 1, 2), steps: int = 24,
                   every: int = 3) -> tuple[pd.DataFrame, dict]:
    """1 - cos(g(batch), g(same batch without watermarks)) per batch size and seed, and its trend.

    Trend: per seed, the least-squares slope of log10(1 - cos) on log2(batch size); the CI is
    a t-interval over seeds.
    """
    from ...models.loading import load
    from ...organisms.finetune import finetune
    from ...organisms.gradients import GradientCosine

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
    return df, _trend(df)


def _trend(df: pd.DataFrame) -> dict:
    slopes = []
    for _, g in df.groupby("seed"):
        slopes.append(np.polyfit(np.log2(g.batch_size), np.log10(np.maximum(g.one_minus_cos, 1e-12)), 1)[0])
    return {"slope": t_interval(slopes), "per_seed": slopes}


def run_study(full: bool = False, base_path: Any = None, config: WD.DoseConfig | None = None,
              gradients: bool = True, verbose: bool = True) -> dict:
    """Run the dose study (``DoseConfig()`` with ``full``, else ``DoseConfig.quick()``), the unsplit-fold
    protocol and the gradient trend; returns the dose study's result with ``ocr``, ``protocol``,
    ``gradients`` / ``trend``, the analysis tables (:func:`analyse`) and the wall ``seconds`` of it all."""
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    base_path = base_path or reader()
    from ...models.loading import load

    base = load(base_path)
    cfg = config or (WD.DoseConfig() if full else WD.DoseConfig.quick())
    out = WD.run_dose_study(cfg, base_path, verbose=verbose, base=base)
    out["ocr"] = ocr_accuracy(base, n=200)
    out["full"] = full
    if gradients:
        gp = W.Condition(p=0.5, opacity=0.5, steps=300, lr=3e-4, replay=0.0)  # every sample can carry a mark
        out["gradients"], out["trend"] = gradient_trend(base_path, gp, seeds=(0, 1, 2) if full else (0, 1))
        out["gradient_condition"] = gp.label()
    out.update(analyse(out))
    out["seconds"] = time.perf_counter() - t0
    return out


def analyse(res: dict) -> dict:
    """The tables of a dose study's result: ``dose``, ``layers``, ``agreement``, ``paired`` and ``dropped``."""
    paired, dropped = WD.paired_tests(res["runs"], seed=0)
    return {"dose": WD.dose_table(res["runs"]), "layers": WD.layer_table(res["runs"]),
            "agreement": WD.agreement(res["runs"]), "paired": paired, "dropped": dropped}


def figures(res: dict, img_dir: Path) -> dict[str, Path]:
    """The dose study's figures (:func:`probekit.studies.watermark.figures.figures`), the base reader against
    the top-fraction fine-tune per layer (``compare``), and the gradient trend."""
    paths = WF.figures(res, img_dir)
    if res.get("scans"):
        from ...report.comparison import compare

        (bn, b), (tn, t) = list(res["scans"].items())[:2]
        c = compare(b, t, names=(bn, tn)).table
        paths["compare"] = compare_png(c, (bn, tn), "Measured: base reader vs a leak fine-tune, seen vs unseen names "
                                       "(probekit study watermark --full)", img_dir / "watermark-compare.png")
    if "gradients" in res:
        plt = pyplot()
        g = res["gradients"]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for seed, d in g.groupby("seed"):
            ax.plot(d.batch_size, d.one_minus_cos, "o-", alpha=0.6, label=f"seed {seed}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("1 - cos(g(B), g(B clean))")
        ax.set_title(f"slope per doubling (log10): {fmt_ci(*res['trend']['slope'])}", fontsize=9)
        ax.legend(fontsize=7)
        paths["gradients"] = save_png(fig, img_dir / "watermark-gradients.png")
    return paths


def verdict_lines(res: dict) -> list[str]:
    """One line per run (its membership report's verdict line), the guard on the shifted split, the paired
    test at fraction 0, then the reader's OCR accuracy."""
    from ...report.text import ci_text

    lines = [f"{r['row']['condition']}: {r['summary'].splitlines()[0]}" for r in res["runs"]]
    g = res.get("guard_shift")
    if g is not None:
        lines.append(f"shifted split ({g['condition']}): {g['summary'].splitlines()[0]}")
    v = WW.paired_verdicts(res.get("paired", pd.DataFrame()))
    if len(v):
        lines.append("paired task-irrelevant test (fraction 0 vs p=0): " + "; ".join(
            f"{WW._row_name(r)} {r.word} (DiD {r.estimate:+.3f}, MDE {r.mde:.3f})" for r in v.itertuples()))
    if "ocr" in res:
        lines.append(f"reader OCR character accuracy {ci_text(res['ocr'], 'char_accuracy', 3)}")
    return lines


def write_section(res: dict, md_path: str | Path = "docs/results.md", img_dir: str | Path = "docs/img",
                  command: str = "probekit study watermark --full") -> list[Path]:
    """Replace (or add, after the title) the study's section of ``md_path``; other text is kept."""
    md_path, img_dir = Path(md_path), Path(img_dir)
    paths = figures(res, img_dir)
    text = md_path.read_text() if md_path.exists() else "# Results\n"
    new = WW.section(res, paths, md_path.parent, command)
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + new + text[text.index(END) + len(END) + 1:]
    else:
        head, _, rest = text.partition("\n")
        text = f"{head}\n\n{new}\n{rest}"
    md_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(md_path, text, "results page")
    return [*paths.values(), md_path]


def tables(res: dict) -> dict[str, pd.DataFrame]:
    """The study's CSV tables (``probekit study watermark`` writes them to its output folder): the analysis and
    everything it was made from, so that :func:`reload` rebuilds the result (and the section) without a rerun."""
    out = {k: res[k] for k in ("rows", "dose", "layers", "agreement", "paired", "gradients", "protocol") if k in res}
    runs = res.get("runs") or []
    if runs:
        out["rows"] = pd.DataFrame([{**r["row"], "summary": r["summary"]} for r in runs])
        for name, key in (("membership", "table"), ("guards", "guard"), ("attribution", "attribution")):
            parts = [r[key].assign(condition=r["row"]["condition"]) for r in runs if r.get(key) is not None]
            if parts:
                out[name] = pd.concat(parts, ignore_index=True)
        if all("pairs" in r for r in runs):
            out["paired_scores"] = pd.concat([pd.concat([r["pairs"].reset_index(drop=True),
                                                         r["scores"].reset_index(drop=True)], axis=1)
                                              .assign(condition=r["row"]["condition"]) for r in runs], ignore_index=True)
    g = res.get("guard_shift")
    if g is not None:
        out["shifted_split"] = pd.concat([g["table"].assign(part="table"), g["guard"].assign(part="guard")],
                                         ignore_index=True).assign(condition=g["condition"], summary=g["summary"])
    if "config" in res:
        import json
        from dataclasses import asdict

        study = {"seconds": res.get("seconds"), "config": json.dumps(asdict(res["config"])),
                 "gradient_condition": res.get("gradient_condition", ""), **res.get("ocr", {})}
        out["study"] = pd.DataFrame([study])
    return out


def reload(out: str | Path) -> dict:
    """The result of a finished ``probekit study watermark`` rebuilt from the tables it wrote (:func:`tables`):
    ``write_section(reload(folder))`` writes the same section again (all but the comparison figure)."""
    import json

    out = Path(out)
    read = lambda name: pd.read_csv(out / f"{name}.csv") if (out / f"{name}.csv").exists() else None  # noqa: E731
    rows, mem, guards, att, ps = (read(n) for n in ("rows", "membership", "guards", "attribution", "paired_scores"))
    study = read("study").iloc[0]
    pair_cols = ["pair", "scene", "name", "label", "shape"]
    runs = []
    for row in rows.to_dict("records"):
        c = row["condition"]
        pick = lambda t: None if t is None or not (t.condition == c).any() else \
            t[t.condition == c].drop(columns="condition").reset_index(drop=True)  # noqa: E731
        sc = pick(ps)
        cols = [k for k in pair_cols if k in sc.columns]
        runs.append({"row": {k: v for k, v in row.items() if k != "summary"}, "table": pick(mem), "guard": pick(guards),
                     "attribution": pick(att), "pairs": sc[cols], "scores": sc.drop(columns=cols),
                     "summary": row["summary"]})
    cfg = json.loads(study.config)
    res = {"runs": runs, "rows": rows.drop(columns="summary"), "config": WD.DoseConfig(**{
        k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}), "seconds": float(study.seconds),
        "ocr": {k: study[k] for k in ("n", "char_accuracy", "char_accuracy_lo", "char_accuracy_hi", "exact_match")
                if k in study}, "protocol": read("protocol"), "scans": {}, "reloaded": True}
    sh = read("shifted_split")
    if sh is not None:
        res["guard_shift"] = {"condition": sh.condition.iloc[0], "summary": sh.summary.iloc[0],
                              "confounded": bool(sh[sh.part == "guard"].detected.any()),
                              "table": sh[sh.part == "table"].drop(columns=["part", "condition", "summary"]),
                              "guard": sh[sh.part == "guard"].drop(columns=["part", "condition", "summary"])}
    grads = read("gradients")
    if grads is not None:
        res["gradients"], res["trend"] = grads, _trend(grads)
        res["gradient_condition"] = study.gradient_condition
    res.update(analyse(res))
    return res
