"""SAEs on the ladder organism: quality and training time per layer, and the SAE-latent readout of every attribute.

``probekit study ladder --sae [--small]``. The organism is the ladder's (:func:`probekit.studies.ladder.organism.train_organism`,
seed 0); per residual layer one TopK SAE (:func:`probekit.sae.train_sae`) trained on fresh scenes (the
answer position and every image token), its quality on the probe scenes (FVU, L0, dead latents; the KL of
the answer and the answer loss recovered with it spliced in at the answer position), then
:func:`probekit.readout.sae_latents.sae_readout` of each unasked attribute on the probe scenes (the same
scenes and labels as the ladder), beside the plain residual probe of the same rows. The negative control is
the coin flip (``random``). The page it writes (``write_section``) holds the tables, a figure of the
best target-material latents with the scenes they fire on most, and the HTML report path.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd

__all__ = ["run", "summary", "write_section", "MARK", "LIBRARY"]

MARK = ("<!-- sae-ladder -->", "<!-- /sae-ladder -->")
LIBRARY = ("probekit's own trainer (`probekit.sae.train_sae`), chosen over eai-sparsify and sae-lens by the measurement "
           "in \"SAE library\" below.")


def run(small: bool = False, out: str = "probekit-sae-ladder", n_train: int | None = None, epochs: float = 8.0,
        d_sae: int = 512, k: int = 16, verbose: bool = True) -> dict:
    import torch

    from ...hooks.collect import collect
    from ..._progress import say
    from ...data.scenes import make_scenes
    from .organism import LadderConfig, eval_scenes, train_organism
    from ...readout import probe_layers
    from ...readout.sae_latents import sae_readout
    from ...sae import sae_stats, train_sae
    from ...steering.sae import splice_quality

    cfg = LadderConfig.small(out=out) if small else LadderConfig(out=out, progress=False)
    cfg = replace(cfg, seeds=(0,), seed=0)
    n_train = n_train or (800 if small else 4000)
    attrs = ("target_material", "random") if small else tuple(cfg.attributes)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, acc, _, _ = train_organism(cfg)
        t_org = time.perf_counter() - t0
        scenes = make_scenes(n_train, size=cfg.image_size, seed=cfg.seed + 7, ask=cfg.ask)
        st = collect(model, [s.image for s in scenes], [s.question for s in scenes], points="lm.*.resid",
                              positions=("last", "image"), batch_size=64, progress=False)
        ev = eval_scenes(cfg)
        store = collect(model, [s.image for s in ev], [s.question for s in ev], points="lm.*.resid",
                                 positions="last", batch_size=64, progress=False)
        saes, quality = [], []
        for p in st.points:
            sae = train_sae(st, p, None, d_sae=d_sae, k=k, epochs=epochs, seed=cfg.seed)
            sae.position = "last"
            q = {a: b for a, b in sae_stats(sae, store).items() if a not in ("fire_rate", "mean_act")}
            sq = splice_quality(model, sae, [s.image for s in ev], [s.question for s in ev], task_samples=ev,
                                positions="last", n_boot=cfg.n_boot)
            quality.append({**q, **{f"splice_{a}": b for a, b in sq.items() if a not in ("point", "positions", "n")},
                            "train_seconds": sae.meta["train"]["seconds"], "train_rows": sae.meta["train"]["rows"],
                            "train_steps": sae.meta["train"]["steps"]})
            saes.append(sae)
            if verbose:
                say(f"SAE on {p}: FVU {q['fvu']:.4f}, L0 {q['l0']:.1f}, dead {q['dead']}, loss recovered "
                    f"{sq.get('loss_recovered', float('nan')):.3f} ({sae.meta['train']['seconds']:.1f} s)", t0, True)
        readouts, resid = {}, []
        for attr in attrs:
            labels = [str(s.meta[attr]) for s in ev]
            readouts[attr] = sae_readout(store, saes, labels, n_boot=cfg.n_boot, seed=cfg.seed)
            resid.append(probe_layers(store, labels, n_boot=cfg.n_boot, seed=cfg.seed, progress=False).assign(attribute=attr))
    finally:
        torch.set_num_threads(threads)
    return {"config": asdict(cfg), "small": small, "n_train": n_train, "epochs": epochs, "task_accuracy": acc,
            "organism_seconds": t_org, "quality": pd.DataFrame(quality), "readouts": readouts,
            "residual": pd.concat(resid, ignore_index=True), "images": [s.image for s in ev],
            "labels": {a: [str(s.meta[a]) for s in ev] for a in attrs}, "seconds": time.perf_counter() - t0}


def summary(res: dict) -> pd.DataFrame:
    """One row per attribute and layer: the residual probe beside the SAE's sparse probe and its latents."""
    rows = []
    for attr, r in res["readouts"].items():
        rp = res["residual"][res["residual"].attribute == attr].set_index("point")
        for t in r.table.itertuples():
            lat = r.latents[r.latents.point == t.point]
            hit = lat[lat.leaks]
            rows.append({"attribute": attr, "point": t.point,
                         "residual probe": f"{rp.accuracy[t.point]:.2f} [{rp.accuracy_lo[t.point]:.2f}, "
                                           f"{rp.accuracy_hi[t.point]:.2f}]" + (" *" if rp.leaks[t.point] else ""),
                         "SAE sparse probe (k=8)": f"{t.accuracy:.2f} [{t.accuracy_lo:.2f}, {t.accuracy_hi:.2f}]"
                                                   + (" *" if t.leaks else ""),
                         "chance": round(t.chance, 2), "latents detected / live": f"{len(hit)} / {len(lat)}",
                         "best latent": (f"#{int(hit.latent.iloc[0])} {hit.accuracy.iloc[0]:.2f} [{hit.accuracy_lo.iloc[0]:.2f}, "
                                         f"{hit.accuracy_hi.iloc[0]:.2f}]") if len(hit) else "–",
                         "would detect": "–" if t.leaks else f">= {t.mde_accuracy:.2f}"})
    return pd.DataFrame(rows)


def _strips(res: dict, attr: str, n: int = 4, m: int = 8):
    """The ``n`` best latents of ``attr`` at its best layer, each with the ``m`` scenes it fires on most."""
    from ...data.images import to_pil
    from ...report.figures.png import pyplot

    r = res["readouts"][attr]
    best = r.table.loc[r.table.accuracy.idxmax(), "point"]
    lat = r.latents[r.latents.point == best].head(n)
    plt = pyplot()
    fig, axes = plt.subplots(len(lat), m, figsize=(1.3 * m, 1.55 * len(lat)), squeeze=False)
    labels = res["labels"][attr]
    for i, row in enumerate(lat.itertuples()):
        top = r.top.get((best, int(row.latent)), [])
        for j in range(m):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(top):
                ax.imshow(to_pil(res["images"][top[j]]))
                ax.set_title(labels[top[j]], fontsize=7)
        axes[i][0].text(-0.15, 0.5, f"#{int(row.latent)}\nacc {row.accuracy:.2f}", transform=axes[i][0].transAxes,
                        ha="right", va="center", fontsize=8)
    fig.suptitle(f"{attr}: the best latents of the SAE on {best} and the probe scenes they fire on most", fontsize=9)
    return fig


def _md(df: pd.DataFrame) -> str:
    from ...report.text import md_table

    return md_table(df)


def write_section(res: dict, md_path: str | Path, img_dir: str | Path, command: str, html_path: str | Path | None = None,
                  library: str = "") -> list[Path]:
    """Write (or replace) the SAE section of ``md_path`` (between :data:`MARK`), its figure and the HTML report."""
    from ...files import replace_section
    from ...report.figures.png import save_png
    from ...report.sae_report import SAEReport

    md_path, img_dir = Path(md_path), Path(img_dir)
    fig = save_png(_strips(res, "target_material"), img_dir / "results-sae-ladder.png")
    written = [fig]
    if html_path is not None:
        written.append(SAEReport(res["readouts"]["target_material"], res["images"], res["labels"]["target_material"],
                                 title="SAE latents: target material on the ladder organism").save(html_path))
    q = res["quality"]
    qt = pd.DataFrame({"point": q.point, "train rows": q.train_rows, "steps": q.train_steps,
                       "train s": q.train_seconds.round(1), "FVU": q.fvu.round(4), "L0": q.l0.round(1),
                       "dead": q.dead, "answer KL spliced (zero-ablated), nats":
                           [f"{a:.2g} ({b:.2f})" for a, b in zip(q.splice_kl_sae, q.splice_kl_zero)],
                       "loss recovered": [f"{x:.4f}" for x in q.splice_loss_recovered]})
    cfg = res["config"]
    L = [MARK[0], "\n## SAEs on the ladder organism: quality, training time, and which latents carry an attribute\n",
         f"Generated by `{command}` on {platform.machine()} CPU (one torch thread, a 2-core machine shared with other "
         f"jobs) in {res['seconds'] / 60:.1f} min (organism {res['organism_seconds']:.0f} s). The ladder organism of the "
         f"section above (seed 0, {cfg['num_layers']} layers, held-out yes/no accuracy {res['task_accuracy']['accuracy']:.3f}); "
         f"per residual layer one TopK SAE (`probekit.sae.train_sae`, 512 latents, k = 16, {res['epochs']:g} epochs) "
         f"trained on {res['n_train']} fresh scenes (the answer position and the 9 image tokens), measured on the "
         f"{cfg['n_eval']} probe scenes at the answer position. Library: {library}\n", _md(qt),
         "\nRead-out of each unasked attribute from the latents (`probekit.readout.sae_readout`): the sparse probe keeps "
         "the 8 latents with the largest ANOVA F inside each training fold; every live latent (firing on >= 1% of the "
         "scenes) also gets its own probe, all of them corrected family-wise together; `*` = detected by the one "
         "verdict. `random` is the coin flip, the negative control.\n", _md(summary(res)),
         f"\n![sae-ladder](img/{fig.name})\n", MARK[1]]
    section = "\n".join(L) + "\n"
    replace_section(md_path, *MARK, section)
    return written + [md_path]
