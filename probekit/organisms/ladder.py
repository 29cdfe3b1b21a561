"""Leakage from inputs, Apple's ladder in miniature (arXiv 2604.09885) on a tiny VLM that learned a yes/no task.

1. Build a tiny LLaVA (60x60 images, 9 patches of 20 pixels, 4 LM layers, hidden 64) and
   fine-tune it on CLEVR-like scenes (:mod:`probekit.data.scenes`) to answer "Is the centre
   object <colour>?" with one word, ``Yes`` or ``No`` (measured held-out accuracy in the result).
2. On fresh scenes, record the residual stream and the output logits at the answer position
   and fit a tuned lens on the residuals.
3. For every unasked attribute (the target's size, material and shape, whether the scene has
   many objects, whether the image was blurred or noised) and for the negative control (a coin
   flip per image, not in the image), run :func:`probekit.readout.ladder.leakage_ladder`:
   the same probes on the residual stream and the tuned lens per layer and on the top-k output
   log-probabilities for k = 2 (the Yes/No tokens), 5, 10, 50 and the full vocabulary.
4. Decide with :func:`probekit.readout.ladder.holm_verdict` (Holm over every rung tested).

``run_ladder(LadderConfig())`` is the study of ``docs/results.md`` (a few minutes on 2 cores);
``LadderConfig.small()`` the CI version (one fixed question colour, fewer steps and scenes).

Example (the CI version, about half a minute; ``tests/test_ladder.py`` runs it)::

    res = run_ladder(LadderConfig.small(out=tempfile.mkdtemp()))
    res["task_accuracy"]["accuracy"]                 # 0.99 on 100 held-out scenes
    res["verdicts"]["target_material"]["residual"]   # 'detected in 2 of 2 rows (Holm-corrected, alpha 0.05): ...'
    res["verdicts"]["random"]["all"]                 # 'nothing detected in 9 rows (Holm-corrected, alpha 0.05)'
"""

from __future__ import annotations

import datetime as _dt
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..data.scenes import ATTRIBUTES, make_scenes
from ..errors import InputError
from ..models import tiny
from ..models.loading import load
from ..report.text import ci_text, fmt_ci
from .ladder_lens import save_png as save_lens_png

__all__ = ["LadderConfig", "run_ladder", "train_organism", "eval_scenes", "write_section", "verdict_lines", "ANSWERS"]

ANSWERS = ("Yes", "No")
_START, _END = "<!-- ladder -->", "<!-- /ladder -->"


@dataclass
class LadderConfig:
    out: str = "probekit-ladder"
    seed: int = 0
    image_size: int = 60
    patch_size: int = 20
    num_layers: int = 4
    ask: str | None = "red"  # None: the question's colour varies (red or blue); a colour fixes it
    n_train: int = 2000
    steps: int = 400
    batch_size: int = 16
    lr: float = 3e-3
    n_test: int = 200
    n_eval: int = 600
    ks: tuple = (2, 5, 10, 50, None)
    attributes: tuple = ATTRIBUTES
    lens_steps: int = 300
    n_boot: int = 500
    alpha: float = 0.05
    progress: bool = True

    @classmethod
    def small(cls, **kw: Any) -> "LadderConfig":
        """The CI version: one question ("Is the centre object red?"), 160 steps, 320 scenes probed."""
        base = dict(out="probekit-ladder-small", ask="red", num_layers=2, n_train=640, steps=160, lr=3e-3,
                    n_test=100, n_eval=320, lens_steps=100, n_boot=200, progress=False,
                    attributes=("target_material", "random"))
        return cls(**{**base, **kw})


def _check(cfg: LadderConfig) -> None:
    bad = [a for a in cfg.attributes if a not in ATTRIBUTES]
    if bad or not cfg.attributes:
        raise InputError(f"unknown attributes {bad or list(cfg.attributes)}", fix=f"choose from {list(ATTRIBUTES)}")
    for name in ("n_train", "steps", "batch_size", "n_test", "n_eval", "lens_steps"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{name} must be a positive int, got {v!r}", fix=f"e.g. {name}={getattr(LadderConfig, name)}")
    if cfg.n_eval < 50:
        raise InputError(f"n_eval={cfg.n_eval} is too few scenes for 5-fold probes with CIs", fix="use n_eval >= 50")


def _log(cfg: LadderConfig, t0: float, msg: str) -> None:
    """A progress line in words (:func:`probekit._progress.say`); the verdicts are printed once, by the caller."""
    from .._progress import say

    say(msg, t0, cfg.progress)


@torch.no_grad()
def yes_no_accuracy(model: Any, scenes: list, batch_size: int = 64) -> dict:
    """Held-out accuracy of the answer the model would give: argmax over the whole vocabulary
    at the answer position must be the right one of ``Yes``/``No`` (Wilson 95% CI)."""
    from ..experiments.finetune import task_accuracy

    return task_accuracy(model, scenes, batch_size=batch_size)


def eval_scenes(cfg: LadderConfig) -> list:
    """The ``cfg.n_eval`` fresh scenes the probes read (never used in fine-tuning or testing)."""
    return make_scenes(cfg.n_eval, size=cfg.image_size, seed=cfg.seed + 2, ask=cfg.ask)


def train_organism(cfg: LadderConfig, t0: float | None = None) -> tuple[Any, dict, dict, list[float]]:
    """Build the tiny LLaVA of ``cfg`` and fine-tune it on the yes/no task.

    Returns the model, its held-out yes/no accuracy after and before fine-tuning
    (:func:`yes_no_accuracy`) and the training losses.
    """
    from ..experiments.finetune import finetune

    _check(cfg)
    t0 = time.perf_counter() if t0 is None else t0
    ckpt = Path(cfg.out) / "tiny-llava"
    _log(cfg, t0, f"Building a tiny LLaVA offline ({cfg.num_layers} language layers, {cfg.image_size}-pixel images)...")
    tiny.build("llava", ckpt, seed=cfg.seed, image_size=cfg.image_size, patch_size=cfg.patch_size,
               num_layers=cfg.num_layers, overwrite=True)
    model = load(ckpt)
    train = make_scenes(cfg.n_train, size=cfg.image_size, seed=cfg.seed, ask=cfg.ask)
    test = make_scenes(cfg.n_test, size=cfg.image_size, seed=cfg.seed + 1, ask=cfg.ask)
    _log(cfg, t0, f"Fine-tuning the tiny model to answer yes/no about the centre object "
                  f"({cfg.steps} steps on {len(train)} scenes)...")
    base_acc = yes_no_accuracy(model, test)
    losses = finetune(model, train, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
                      progress=cfg.progress)
    acc = yes_no_accuracy(model, test)
    _log(cfg, t0, f"Fine-tuned: it answers {acc['accuracy']:.0%} of {acc['n']} held-out questions correctly "
                  f"(untrained {base_acc['accuracy']:.0%}).")
    return model, acc, base_acc, losses


def run_ladder(cfg: LadderConfig | None = None) -> dict:
    """Train the organism, run the ladder for every attribute, decide; returns tables and verdicts."""
    import probekit
    from ..readout.ladder import check_ladder, holm_verdict, leakage_ladder
    from ..readout.lens import LogitLens, TunedLens
    from .ladder_lens import lens_grid

    cfg = cfg or LadderConfig()
    _check(cfg)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: one thread is as fast and leaves the other core free
    try:
        model, acc, base_acc, losses = train_organism(cfg, t0)
        answer_ids = check_ladder(model, cfg.ks, ANSWERS, ["last"])
        ev = eval_scenes(cfg)
        _log(cfg, t0, f"Recording every layer and the output logits on {len(ev)} fresh scenes...")
        acts = probekit.collect(model, [s.image for s in ev], [s.question for s in ev], points=["lm.*.resid", "logits"],
                                positions="last", batch_size=64, progress=cfg.progress)
        _log(cfg, t0, f"Fitting a tuned lens to read each layer as an output ({cfg.lens_steps} steps)...")
        tl = TunedLens.fit(model, acts, steps=cfg.lens_steps, seed=cfg.seed, progress=cfg.progress)
        kl = LogitLens(model, tuned=tl).kl_to_final(acts).assign(lens="tuned")
        kl = pd.concat([LogitLens(model).kl_to_final(acts).assign(lens="logit"), kl], ignore_index=True)
        lens = LogitLens(model, tuned=tl)
        frames, verdicts = [], {}
        for attr in cfg.attributes:
            _log(cfg, t0, f"Probing {attr}: every layer, the tuned lens and the top-k output logits...")
            labels = [str(s.meta[attr]) for s in ev]
            tab = leakage_ladder(acts, labels, lens=lens, ks=cfg.ks, answer_ids=answer_ids, position="last",
                                 seed=cfg.seed, n_boot=cfg.n_boot, progress=False)
            tab, overall = holm_verdict(tab, alpha=cfg.alpha)
            verdicts[attr] = {"all": overall}
            for src in ("residual", "tuned-lens", "logits"):
                verdicts[attr][src] = holm_verdict(tab[tab.source == src], alpha=cfg.alpha)[1]
            k2 = tab[(tab.source == "logits") & (tab.k == len(ANSWERS))]
            verdicts[attr]["yes/no logits"] = holm_verdict(k2, alpha=cfg.alpha)[1]
            frames.append(tab.assign(attribute=attr))
        table = pd.concat(frames, ignore_index=True)
        grid = lens_grid(model, ev)
    finally:
        torch.set_num_threads(threads)
    return {"config": asdict(cfg), "task_accuracy": acc, "untrained_accuracy": base_acc, "final_loss": losses[-1],
            "table": table, "verdicts": verdicts, "lens_kl": kl, "seconds": time.perf_counter() - t0,
            "vocab": int(acts.info("logits")["shape"][-1]), "lens_grid": grid}


# ---------------------------------------------------------------- docs/results.md


def headline(res: dict) -> pd.DataFrame:
    """Per attribute: best residual layer, best tuned-lens layer, each k; accuracy [95% CI]."""
    rows = []
    t = res["table"]
    for attr, g in t.groupby("attribute", sort=False):
        row = {"attribute": attr, "chance": round(float(g.chance.iloc[0]), 2)}
        for src in ("residual", "tuned-lens"):
            d = g[g.source == src]
            b = d.loc[d.accuracy.idxmax()]
            row[f"{src} (best layer)"] = f"{fmt_ci(b.accuracy, b.accuracy_lo, b.accuracy_hi)} @ {int(b.layer)}"
        for r in g[g.source == "logits"].sort_values("k").itertuples():
            row[f"logits k={r.k_label}"] = fmt_ci(r.accuracy, r.accuracy_lo, r.accuracy_hi)
        row["verdict"] = res["verdicts"][attr]["all"].split(":")[0]
        rows.append(row)
    return pd.DataFrame(rows)


def verdict_lines(res: dict) -> list[str]:
    """One line per attribute (Holm over every row of its ladder; rows named as in :func:`headline`,
    ``logits k=full`` for the whole vocabulary), then the organism's yes/no accuracy."""
    acc = res["task_accuracy"]
    return ([f"{attr}: {v['all']}" for attr, v in res["verdicts"].items()]
            + [f"yes/no accuracy {ci_text(acc, 'accuracy', 3)} (n={acc['n']})"])


def _md(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _save_png(res: dict, path: Path) -> Path | None:
    """The ladder figure as a PNG with matplotlib (plotly's PNG export needs Chrome, absent offline)."""
    from ..report.figures.png import pyplot, save_png

    plt = pyplot()

    t = res["table"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True, gridspec_kw={"width_ratios": [1.2, 1]})
    for i, (attr, g) in enumerate(t.groupby("attribute", sort=False)):
        c, ch = f"C{i}", float(g.chance.iloc[0])  # chance differs per label: plot the accuracy above it
        for src, ls in (("residual", "-"), ("tuned-lens", "--")):
            d = g[g.source == src].sort_values("layer")
            a.errorbar(d.layer, d.accuracy - ch, yerr=[d.accuracy - d.accuracy_lo, d.accuracy_hi - d.accuracy], color=c,
                       ls=ls, marker="o", ms=4, capsize=2, label=f"{attr} ({src})")
        d = g[g.source == "logits"].sort_values("k")
        b.errorbar(d.k_label.tolist(), d.accuracy - ch, yerr=[d.accuracy - d.accuracy_lo, d.accuracy_hi - d.accuracy],
                   color=c, marker="D", ms=4, capsize=2, label=f"{attr} (chance {ch:.2f})")
    for ax in (a, b):
        ax.axhline(0.0, color="grey", ls=":", lw=1)
        ax.grid(alpha=0.3)
    a.set_xticks(sorted(t.layer.dropna().unique()))
    a.set_xlabel("layer (lm.{i}.resid; solid: residual, dashed: tuned lens)")
    a.set_ylabel("held-out probe accuracy minus chance (95% CI)")
    b.set_xlabel("k of the output log-probabilities (2 = the Yes/No tokens)")
    a.set_title("residual stream and tuned lens, per layer", fontsize=10)
    b.set_title("output only: top-k log-probabilities", fontsize=10)
    b.legend(fontsize=8, loc="upper left")
    fig.suptitle("Leakage ladder on a tiny LLaVA fine-tuned to answer yes/no about the centre object")
    return save_png(fig, path)


def section(res: dict, img: str, command: str) -> str:
    """The markdown of the ladder section (between the ``<!-- ladder -->`` markers).

    ``write_section`` also writes the logit-lens grid of ``docs/concepts.md`` (``lens-grid.png``).
    """
    cfg, acc, un = res["config"], res["task_accuracy"], res["untrained_accuracy"]
    task = ("'Is the centre object red?' (one fixed question)" if cfg["ask"] else
            "'Is the centre object red/blue?' (the asked colour varies)")
    L = [_START, "## Leakage from inputs: Apple's ladder in miniature\n",
         f"Generated {_dt.date.today().isoformat()} by `{command}` on {platform.machine()} CPU (1 torch thread, "
         f"a 2-core machine shared with other jobs) in {res['seconds'] / 60:.1f} min. Every number below comes from that run.\n",
         f"**Model.** A tiny LLaVA (`probekit.tiny.build('llava', image_size={cfg['image_size']}, patch_size={cfg['patch_size']}, "
         f"num_layers={cfg['num_layers']})`, hidden 64, random init) fully fine-tuned for {cfg['steps']} steps "
         f"(batch {cfg['batch_size']}, lr {cfg['lr']}) on {cfg['n_train']} CLEVR-like scenes (`probekit.data.scenes`: "
         "3-9 objects on a 3x3 grid, colour, shape, size, rubber/metal texture, half the images blurred or noised) "
         f"to answer {task} with `Yes`/`No`. The target's colour is red or blue, background objects take other colours. "
         f"**Held-out yes/no accuracy: {fmt_ci(acc['accuracy'], acc['accuracy_lo'], acc['accuracy_hi'], 3)}** "
         f"(n = {acc['n']}, chance 0.5; untrained {un['accuracy']:.2f}).\n",
         f"**Ladder.** On {cfg['n_eval']} fresh scenes, at the answer position: linear probes (5-fold, 95% CIs) on the residual "
         "stream of each layer, on each layer's tuned-lens projection (log-probabilities over the whole vocabulary; "
         f"`TunedLens.fit`, {cfg['lens_steps']} steps), and on the output log-probabilities cut to the top k: k = 2 are the "
         "fixed `Yes`/`No` tokens (Apple's Yes/No logits), larger k the model's own top k per sample (values and token "
         f"identities), `full` all {res['vocab']} tokens. Verdict: one-sided exact binomial test of each row's accuracy "
         "against chance, Holm-corrected over every row of that attribute (`probekit.readout.ladder.holm_verdict`). "
         "`random` is a coin flip per image that is not in the image: the negative control. The last layer needs no "
         "translator, so its tuned-lens row is the model's own output (the same numbers as k = full).\n",
         f"![leakage ladder]({img})\n", "### Headline (accuracy [95% CI]; best layer after @)\n", _md(headline(res)),
         "\n### Verdicts per rung (Holm within the rung)\n"]
    v = res["verdicts"]
    L.append(_md(pd.DataFrame([{"attribute": a, **{k: s for k, s in d.items() if k != "all"}} for a, d in v.items()])))
    kl = res["lens_kl"]
    L.append("\nKL(final || lens) in nats at the answer position (logit lens vs tuned lens): " + "; ".join(
        f"layer {int(r.layer)}: {r.kl:.3f} ({r.lens})" for r in kl.sort_values(["layer", "lens"]).itertuples()) + ".\n")
    L.append(_END)
    return "\n".join(L)


def write_section(res: dict, md_path: str | Path = "docs/results.md", img_dir: str | Path = "docs/img",
                  command: str = "probekit study ladder") -> list[Path]:
    """Write (or replace) the ladder section of ``md_path`` and its figure; the rest of the page is kept."""
    md_path, img_dir = Path(md_path), Path(img_dir)
    png = _save_png(res, img_dir / "results-ladder.png")
    extra = [save_lens_png(res["lens_grid"], img_dir / "lens-grid.png")] if "lens_grid" in res else []
    rel = png.relative_to(md_path.parent) if png.is_relative_to(md_path.parent) else png
    text = section(res, str(rel), command)
    old = md_path.read_text() if md_path.exists() else ""
    if _START in old and _END in old:
        new = old[:old.index(_START)] + text + old[old.index(_END) + len(_END):]
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + text + "\n"
    from ..files import atomic_write

    atomic_write(md_path, new, "results page")
    return [png, *extra, md_path]
