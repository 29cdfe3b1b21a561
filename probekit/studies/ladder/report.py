"""The ladder section of ``docs/results.md``: tables over seeds, the figure, the verdict lines.

Every number is a mean over the seeds of :func:`probekit.studies.ladder.organism.run_ladder` with a t
interval over seeds (``summary``: :func:`probekit.studies.ladder.organism.seed_summary`); verdicts count
the seeds in which :func:`probekit.readout.ladder.ladder_verdict` detected a rung.
"""

from __future__ import annotations

import datetime as _dt
import math
import platform
from pathlib import Path

import pandas as pd

from ...report.text import ci_text, fmt_ci, md_table
from .lens import save_png as save_lens_png

__all__ = ["ANSWERS", "headline", "matched_table", "verdict_lines", "section", "write_section"]

ANSWERS = ("Yes", "No")
NAME = "ladder"  # the section's markers in docs/results.md: <!-- ladder --> ... <!-- /ladder -->


def _cell(r) -> str:
    return f"{fmt_ci(r.accuracy, r.acc_lo, r.acc_hi)} ({r.seeds_detected}/{r.n_seeds})"


def _best(d: pd.DataFrame):
    return d.loc[d.accuracy.idxmax()]


def headline(res: dict) -> pd.DataFrame:
    """Per attribute: best residual layer, best tuned-lens layer, each k of the output; mean accuracy
    over seeds [t interval over seeds] (seeds detected / seeds)."""
    rows = []
    s = res["summary"]
    for attr, g in s.groupby("attribute", sort=False):
        row = {"attribute": attr, "chance": round(float(g.chance.iloc[0]), 2)}
        for src in ("residual", "tuned-lens"):
            b = _best(g[g.source == src])
            row[f"{src} (best layer)"] = f"{_cell(b)} @ {int(b.layer)}"
        for r in g[g.source == "logits"].sort_values("k").itertuples():
            row[f"logits k={r.k_label}"] = _cell(r)
        row["verdict"] = res["verdicts"][attr]["all"].split(":")[0]
        rows.append(row)
    return pd.DataFrame(rows)


def matched_table(res: dict) -> pd.DataFrame:
    """Per attribute and k: the output's top k beside the residual's first k principal components and
    the tuned lens's top k (each at its best layer); empty when the run had no matched rungs."""
    s = res["summary"]
    if "residual-pca" not in set(s.source):
        return pd.DataFrame()
    rows = []
    for (attr, k), g in s[s.k.notna()].groupby(["attribute", "k"], sort=False):
        out = g[g.source == "logits"]
        if out.empty or len(g.source.unique()) < 2:
            continue
        row = {"attribute": attr, "k": int(k), "logits top-k": _cell(out.iloc[0]),
               "features (logits)": int(round(out.n_features.iloc[0]))}
        for src, name in (("residual-pca", "residual PCA-k"), ("tuned-lens-topk", "tuned-lens top-k")):
            d = g[g.source == src]
            if len(d):
                b = _best(d)
                row[f"{name} (best layer)"] = f"{_cell(b)} @ {int(b.layer)}"
        rows.append(row)
    return pd.DataFrame(rows)


def verdict_lines(res: dict) -> list[str]:
    """One line per attribute (per seed, the one verdict over every row of its ladder; counted over seeds), then
    the organism's yes/no accuracy pooled over the seeds."""
    acc = res["task_accuracy"]
    return ([f"{attr}: {v['all']}" for attr, v in res["verdicts"].items()]
            + [f"yes/no accuracy {ci_text(acc, 'accuracy', 3)} (n={acc['n']}, pooled over "
               f"{len(res['config']['seeds'])} seeds)"])


def _md(df: pd.DataFrame) -> str:
    return md_table(df, floats=None)


def _save_png(res: dict, path: Path) -> Path:
    """The ladder figure (matplotlib): mean over seeds minus chance, t intervals over seeds."""
    from ...report.figures.png import pyplot, save_png

    plt = pyplot()
    s = res["summary"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True, gridspec_kw={"width_ratios": [1.2, 1]})
    for i, (attr, g) in enumerate(s.groupby("attribute", sort=False)):
        c, ch = f"C{i}", float(g.chance.iloc[0])
        for src, ls in (("residual", "-"), ("tuned-lens", "--")):
            d = g[g.source == src].sort_values("layer")
            a.errorbar(d.layer, d.accuracy - ch, yerr=[d.accuracy - d.acc_lo, d.acc_hi - d.accuracy], color=c,
                       ls=ls, marker="o", ms=4, capsize=2, label=f"{attr} ({src})")
        for src, mk, dx in (("logits", "D", 0.0), ("residual-pca", "s", -0.15), ("tuned-lens-topk", "^", 0.15)):
            d = g[g.source == src]
            if d.empty:
                continue
            d = d.loc[d.groupby("k_label", sort=False).accuracy.idxmax()]  # best layer per k
            order = {lab: j for j, lab in enumerate(dict.fromkeys(g[g.source == "logits"].sort_values("k").k_label))}
            x = [order.get(lab, math.nan) + dx for lab in d.k_label]
            b.errorbar(x, d.accuracy - ch, yerr=[d.accuracy - d.acc_lo, d.acc_hi - d.accuracy], color=c, ls="none",
                       marker=mk, ms=4, capsize=2, label=f"{attr}: {src}" + (f" (chance {ch:.2f})" if src == "logits" else ""))
        labels = list(dict.fromkeys(g[g.source == "logits"].sort_values("k").k_label))
    b.set_xticks(range(len(labels)), labels)
    for ax in (a, b):
        ax.axhline(0.0, color="grey", ls=":", lw=1)
        ax.grid(alpha=0.3)
    a.set_xticks(sorted(s.layer.dropna().unique()))
    a.set_xlabel("layer (lm.{i}.resid; solid: residual, dashed: tuned lens)")
    a.set_ylabel(f"probe accuracy minus chance (mean of {len(res['config']['seeds'])} seeds, 95% t interval)")
    b.set_xlabel("k (2 = the Yes/No tokens); squares: residual PCA-k, triangles: tuned-lens top-k (best layer)")
    a.set_title("residual stream and tuned lens, per layer", fontsize=10)
    b.set_title("top-k output log-probabilities, and matched rungs", fontsize=10)
    b.legend(fontsize=7, loc="upper left")
    fig.suptitle("Leakage ladder on a tiny LLaVA fine-tuned to answer yes/no about the centre object")
    return save_png(fig, path)


def section(res: dict, img: str, command: str) -> str:
    """The markdown of the ladder section, without its ``<!-- ladder -->`` markers (:func:`write_section` adds them)."""
    cfg, acc, un = res["config"], res["task_accuracy"], res["untrained_accuracy"]
    seeds = list(cfg["seeds"])
    task = ("'Is the centre object red?' (one fixed question)" if cfg["ask"] else
            "'Is the centre object red/blue?' (the asked colour varies)")
    L = ["## Leakage from inputs: Apple's ladder in miniature\n",
         f"Generated {_dt.date.today().isoformat()} by `{command}` on {platform.machine()} CPU (1 torch thread, "
         f"a 2-core machine shared with other jobs) in {res['seconds'] / 60:.1f} min. Every number below comes from that run.\n",
         f"**Model.** A tiny LLaVA (`probekit.tiny.build('llava', image_size={cfg['image_size']}, patch_size={cfg['patch_size']}, "
         f"num_layers={cfg['num_layers']})`, hidden 64, random init) fully fine-tuned for {cfg['steps']} steps "
         f"(batch {cfg['batch_size']}, lr {cfg['lr']}) on {cfg['n_train']} CLEVR-like scenes (`probekit.data.scenes`: "
         "3-9 objects on a 3x3 grid, colour, shape, size, rubber/metal texture, half the images blurred or noised) "
         f"to answer {task} with `Yes`/`No`. The target's colour is red or blue, background objects take other colours. "
         f"**{len(seeds)} seeds** ({', '.join(map(str, seeds))}): each its own initialisation, training, test and probe "
         f"scenes. **Held-out yes/no accuracy, pooled over seeds: {fmt_ci(acc['accuracy'], acc['accuracy_lo'], acc['accuracy_hi'], 3)}** "
         f"(n = {acc['n']}, per seed {', '.join(f'{v:.2f}' for v in acc['per_seed'])}; chance 0.5; untrained {un['accuracy']:.2f}).\n",
         f"**Ladder.** Per seed, on {cfg['n_eval']} fresh scenes, at the answer position: linear probes (5-fold) on the residual "
         "stream of each layer, on each layer's tuned-lens projection (log-probabilities over the whole vocabulary; "
         f"`TunedLens.fit`, {cfg['lens_steps']} steps), and on the output log-probabilities cut to the top k: k = 2 are the "
         "fixed `Yes`/`No` tokens (Apple's Yes/No logits), larger k the model's own top k per sample (values and token "
         f"identities), `full` all {res['vocab']} tokens. The residual (64 dimensions) and the tuned lens "
         f"({res['vocab']}) are not the size of a top k, so each k also gets **dimension-matched rungs**: the residual's first "
         "k principal components (PCA without labels) and the tuned lens's own top k, built like the output's. "
         "Cells: mean accuracy over seeds [95% t interval over seeds] (seeds in which the rung was detected / seeds). "
         "Verdict per seed: probekit's one verdict, a permutation test of every row (labels permuted, the cross-validated "
         "statistic recomputed on each), family-wise corrected (step-down maxT) over every row of that attribute and "
         "seed, with the MI floor (`probekit.readout.ladder.ladder_verdict`). "
         "`random` is a coin flip per image that is not in the image: the negative control. The last layer needs no "
         "translator, so its tuned-lens row is the model's own output (the same numbers as k = full).\n",
         f"![leakage ladder]({img})\n", "### Headline (mean over seeds [t interval] (seeds detected); best layer after @)\n",
         _md(headline(res))]
    mt = matched_table(res)
    if len(mt):
        L += ["\n### At matched dimension: the output's top k beside the residual's PCA-k and the tuned lens's top k\n",
              _md(mt)]
    L.append("\n### Verdicts per rung (family-wise within the rung, per seed; counted over seeds)\n")
    v = res["verdicts"]
    L.append(_md(pd.DataFrame([{"attribute": a, **{k: s for k, s in d.items() if k != "all"}} for a, d in v.items()])))
    kl = res["lens_kl"]
    L.append(f"\nKL(final || lens) in nats at the answer position, seed {seeds[0]} (logit lens vs tuned lens): " + "; ".join(
        f"layer {int(r.layer)}: {r.kl:.3f} ({r.lens})" for r in kl.sort_values(["layer", "lens"]).itertuples()) + ".\n")
    return "\n".join(L)


def write_section(res: dict, md_path: str | Path = "docs/results.md", img_dir: str | Path = "docs/img",
                  command: str = "probekit study ladder") -> list[Path]:
    """Write (or replace) the ladder section of ``md_path`` and its figure; the rest of the page is kept (the
    shared :func:`probekit.studies.base.replace_section`, written atomically)."""
    md_path, img_dir = Path(md_path), Path(img_dir)
    png = _save_png(res, img_dir / "results-ladder.png")
    extra = [save_lens_png(res["lens_grid"], img_dir / "lens-grid.png")] if "lens_grid" in res else []
    rel = png.relative_to(md_path.parent) if png.is_relative_to(md_path.parent) else png
    from ..base import replace_section

    replace_section(md_path, NAME, section(res, str(rel), command))  # appended when the page has no such section
    return [png, *extra, md_path]
