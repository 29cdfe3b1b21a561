"""The watermark dose organism read through a tuned lens per layer, minus the base reader's own tuned lens.

The dose study (``probekit study watermark --full``) read each layer through the logit lens only. Here each
run of that study's design (:class:`probekit.studies.watermark.dose.DoseConfig` at its full settings:
100 names per pool, 40 sightings, lr 1e-3, replay 0.25, 1,000 permutations) is fine-tuned again (the same
:func:`probekit.studies.watermark.dose_organism.training_set`, the same ``finetune`` call and seed, so the same
fine-tune as the study's run), then a :class:`probekit.TunedLens` is fitted on the fine-tuned model and one
on the untouched reader, both on the same lens-fitting data, disjoint from the audit:

- reading samples of the third pool U3 (``pools(d)[2]``: names in neither audited pool, never shown at
  fraction 0.5 or 0): ``lens_scenes`` fresh scenes per U3 name, the name written as in the study, asked
  "What is the username?" and answered with it;
- as many samples of the reader's own pretraining mix (``pretraining_data(50_000 + seed)``: rendered strings
  and shapes; the fine-tune replays draws of ``10_000 + seed``).

Every non-padding position of the teacher-forced sequences (image, prompt and answer tokens) is a lens
training row; 20% of the samples are held out to report each lens' KL to the model's own output. Then
``probekit.membership(tuned, members, nonmembers, base=reader, tuned_lens=tl, base_tuned_lens=base_tl)``
on the study's held-out pairs (members: the seen names' scenes asked for the name; non-members: the
unseen names'; groups = names); one verdict over the whole table of a run (logit lens, tuned lens, each
minus the base's, the membership probe, the output attacks).

    python benchmarks/watermark_tuned_lens.py --out OUT                       # fractions 0.5 and 0, seeds 0-4
    python benchmarks/watermark_tuned_lens.py --out OUT --p0                  # and the p = 0 controls
    python benchmarks/watermark_tuned_lens.py --out OUT --table               # the tables from OUT/*.csv
    python benchmarks/watermark_tuned_lens.py --out OUT --patch-positions --seeds 0   # where the gap lives

``--patch-positions``: the untouched reader's residual patched into the fine-tune at ``lm.0`` / ``lm.1`` at all
positions (as :func:`probekit.membership`'s attribution does), at the image tokens only, or at the text tokens
only, and the share of the member / non-member loss gap each removes: whether what the lens cannot read at
the answer positions is held at the image tokens.

Each run writes ``OUT/<kind>-s<seed>.csv`` (its membership table) and ``.json`` (lens fits, timings,
summary) as it finishes; runs already written are skipped, so the command can be resumed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's probekit, not an installed one


def lens_samples(d, other: list[str], n_scenes: int, holdout: float = 0.2) -> tuple[list, list]:
    """(fit, held-out) lens samples: U3 reading samples and the reader's pretraining mix, shuffled."""
    from probekit.studies.watermark import organism as W  # noqa: F401  (the reader's layout comes through d)
    from probekit.organisms.reader import USERNAME, pretraining_data
    from probekit.organisms.text import draw_text, scene

    rng = random.Random(f"tuned-lens-scenes:{d.seed}")
    rows = []
    for name in other:
        for _ in range(n_scenes):
            img, _ = scene(rng, d.size)
            img = draw_text(img, name, rng, opacity=d.opacity, grid=d.grid or None, place=d.place or None)[0]
            rows.append((img, USERNAME, name + "."))
    mix = pretraining_data(50_000 + d.seed, size=d.size, grid=d.grid, place=d.place or None)
    rows += [(s.image, s.question, s.answer) for s in (mix[i] for i in range(len(rows)))]
    random.Random(f"tuned-lens-split:{d.seed}").shuffle(rows)
    k = int(round(len(rows) * (1 - holdout)))
    return rows[:k], rows[k:]


def residuals(model, rows: list, points: list[str], batch_size: int = 32) -> dict[str, torch.Tensor]:
    """``{point: [N, d]}``: every non-padding position of the teacher-forced sequences."""
    from probekit.hooks.recorder import Recorder

    out: dict[str, list[torch.Tensor]] = {p: [] for p in points}
    for b0 in range(0, len(rows), batch_size):
        batch = rows[b0:b0 + batch_size]
        inputs = model.prepare([r[0] for r in batch], [r[1] for r in batch], padding_side="right",
                               answers=[r[2] for r in batch])
        mask = inputs["attention_mask"].bool()
        with Recorder(model, points) as rec, torch.no_grad():
            model.hf(**inputs, use_cache=False)
        for p in points:
            h = model.lm_activation(p, rec.cache[p], len(batch))
            out[p].append(h[mask.to(h.device)].float().cpu())
    return {p: torch.cat(v) for p, v in out.items()}


def lens_kl(model, tl, acts: dict[str, torch.Tensor], points: list[str]) -> dict[str, dict[str, float]]:
    """Mean KL(final || lens) per point on held-out rows, for the logit lens and the tuned lens."""
    from probekit.readout.lens import LogitLens

    last = points[-1]
    with torch.no_grad():
        target = torch.log_softmax(LogitLens(model).decode(acts[last]), -1)
        res = {}
        for p in points[:-1]:
            res[p] = {}
            for name, lens in (("logit", LogitLens(model)), ("tuned", LogitLens(model, tuned=tl))):
                lp = torch.log_softmax(lens.decode(acts[p], p), -1)
                res[p][name] = float((target.exp() * (target - lp)).sum(-1).mean())
    return res


def fit_lens(model, fit_rows, held_rows, points, steps: int, seed: int):
    from probekit.readout.lens import TunedLens

    acts = residuals(model, fit_rows, points)
    tl = TunedLens.fit(model, acts, points=points[:-1], steps=steps, seed=seed, progress=False)
    return tl, lens_kl(model, tl, residuals(model, held_rows, points), points), int(acts[points[0]].shape[0])


def run(cfg, base_path, base, fraction: float, seed: int, p: float, out: Path, lens_scenes: int, lens_steps: int):
    import probekit
    from probekit.organisms.finetune import finetune
    from probekit.models.loading import load
    from probekit.studies.watermark import organism as W
    from probekit.studies.watermark import dose_organism as D

    d = cfg.dose(fraction=fraction, seed=seed, p=p)
    tag = f"{'p0' if not p else f'f{fraction:g}'}-s{seed}"
    if (out / f"{tag}.json").exists():
        print(f"{tag}: done already", flush=True)
        return
    t0 = time.perf_counter()
    c = W.resolve(W.Condition(), base_path)
    d = replace(d, size=c.size, grid=c.grid, place=c.place)
    seen, unseen, other = D.pools(d)
    pairs = D.paired_set(d, seen, unseen)
    tuned = load(base_path)
    losses = finetune(tuned, D.training_set(d, seen, other), steps=d.steps, batch_size=d.batch_size, lr=d.lr,
                      seed=d.seed, progress=False)
    t_ft = time.perf_counter() - t0
    points = tuned.resolve("lm.*.resid")
    fit_rows, held_rows = lens_samples(d, other, lens_scenes)
    tl, kl_tuned, n_rows = fit_lens(tuned, fit_rows, held_rows, points, lens_steps, seed)
    base_tl, kl_base, _ = fit_lens(base, fit_rows, held_rows, points, lens_steps, seed)
    t_lens = time.perf_counter() - t0 - t_ft
    members, nonmembers = D.membership_samples(pairs)
    rep = probekit.membership(tuned, members, nonmembers, base=base, tuned_lens=tl, base_tuned_lens=base_tl,
                              n_perm=cfg.n_perm, n_boot=cfg.n_boot, seed=d.seed, attribution=False, progress=False)
    t = rep.table.drop(columns="perm_null", errors="ignore")
    t.to_csv(out / f"{tag}.csv", index=False)
    info = {"tag": tag, "condition": d.label(), "kind": d.kind, "fraction": fraction, "seed": seed, "p": p,
            "readings": d.readings, "steps": d.steps, "final_loss": float(np.mean(losses[-20:])),
            "lens_rows": n_rows, "lens_samples": [len(fit_rows), len(held_rows)], "lens_steps": lens_steps,
            "kl_tuned_model": kl_tuned, "kl_base": kl_base, "confounded": bool(rep.confounded),
            "summary": rep.summary(), "detected": [f"{r.source}|{r.point}|{r.score}" for r in t[t.detected].itertuples()],
            "seconds": {"finetune": t_ft, "lenses": t_lens, "total": time.perf_counter() - t0}}
    (out / f"{tag}.json").write_text(json.dumps(info, indent=1))
    print(f"{tag}: {info['seconds']['total']:.0f} s; detected: {', '.join(info['detected']) or 'nothing'}", flush=True)


def patch_positions(cfg, base_path, base, fraction: float, seed: int, out: Path, batch_size: int = 16) -> None:
    """Where at ``lm.0`` / ``lm.1`` the fine-tune's member / non-member gap lives: the untouched reader's residual
    patched into the fine-tune at all positions, at the image tokens only, or at the text tokens only (prompt
    and answer); per patch the share of ``gap_tuned - gap_base`` it removes (gap: mean loss score of members
    minus non-members', loss score = mean log-probability of the teacher-forced name at the output)."""
    from probekit.data.images import decode
    from probekit.organisms.finetune import finetune
    from probekit.hooks.recorder import Recorder
    from probekit.models.loading import load
    from probekit.studies.watermark import organism as W
    from probekit.studies.watermark import dose_organism as D
    from probekit.readout.token_scores import token_scores
    from probekit.steering.interventions import Intervention

    t0 = time.perf_counter()
    d = cfg.dose(fraction=fraction, seed=seed)
    c = W.resolve(W.Condition(), base_path)
    d = replace(d, size=c.size, grid=c.grid, place=c.place)
    seen, unseen, other = D.pools(d)
    pairs = D.paired_set(d, seen, unseen)
    tuned = load(base_path)
    finetune(tuned, D.training_set(d, seen, other), steps=d.steps, batch_size=d.batch_size, lr=d.lr, seed=d.seed,
             progress=False)
    members, nonmembers = D.membership_samples(pairs)
    data = pd.DataFrame(members + nonmembers)
    member = np.r_[np.ones(len(members), bool), np.zeros(len(nonmembers), bool)]
    points = tuned.resolve("lm.*.resid")[:-1]
    scores: dict[str, list[np.ndarray]] = {}
    for b0 in range(0, len(data), batch_size):
        rows = data.iloc[b0:b0 + batch_size]
        images = [decode(im, b0 + i) for i, im in enumerate(rows.image)]
        answers = rows.answer.tolist()
        inputs = tuned.prepare(images, rows.prompt.tolist(), padding_side="right", answers=answers)
        lengths = tuned.answer_lengths(inputs, answers).tolist()
        ends = (inputs["attention_mask"].long() * torch.arange(1, inputs["input_ids"].shape[1] + 1)).argmax(1) + 1
        r_idx = torch.cat([torch.full((n,), r) for r, n in enumerate(lengths)])
        pos = torch.cat([torch.arange(int(e) - n, int(e)) for e, n in zip(ends, lengths)])
        targets = inputs["input_ids"][r_idx, pos]
        img = tuned.image_mask(inputs).bool()
        masks = {"all": torch.ones_like(img), "image tokens": img, "text tokens": ~img}

        def loss(m, edit=None):
            with torch.no_grad():
                if edit is None:
                    logits = m.hf(**inputs, use_cache=False).logits
                else:
                    with Intervention(m, [edit[0]], edit[1], None, False):
                        logits = m.hf(**inputs, use_cache=False).logits
            o = logits[r_idx, pos - 1].float()
            return token_scores(torch.log_softmax(o, -1), targets, lengths)["loss"]

        scores.setdefault("tuned", []).append(loss(tuned))
        with Recorder(base, points) as rec, torch.no_grad():
            base.hf(**inputs, use_cache=False)
        scores.setdefault("base", []).append(loss(base))
        for p in points:
            donor = base.lm_activation(p, rec.cache[p], len(rows))
            for where, mk in masks.items():
                def edit(_, h, donor=donor, mk=mk, p=p):
                    hh = tuned.lm_activation(p, h, len(rows))
                    return torch.where(mk[..., None].to(hh.device), donor.to(hh.device, hh.dtype), hh).view_as(h)
                scores.setdefault(f"{p}|{where}", []).append(loss(tuned, (p, edit)))
    s = {k: np.concatenate(v) for k, v in scores.items()}
    gap = {k: float(v[member].mean() - v[~member].mean()) for k, v in s.items()}
    total = gap["tuned"] - gap["base"]
    res = {"condition": d.label(), "gap_tuned": gap["tuned"], "gap_base": gap["base"],
           "share_removed": {k: (gap["tuned"] - g) / total for k, g in gap.items() if "|" in k},
           "image_tokens_per_sample": float(img.sum(1).float().mean()), "seconds": time.perf_counter() - t0}
    (out / f"patch-positions-f{fraction:g}-s{seed}.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1), flush=True)


SOURCES = ("tuned-lens", "tuned-lens minus base", "logit-lens minus base", "output minus base")


def tables(out: Path) -> str:
    """Markdown: per source/point/score and kind of run, AUC mean [range], TPR@1% mean, runs detected; and per
    run what was detected."""
    from probekit._stats import wilson

    runs = []
    for f in sorted(out.glob("[fp][0-9.]*-s*.json")):
        info = json.loads(f.read_text())
        runs.append((info, pd.read_csv(out / f"{info['tag']}.csv")))
    kinds = [k for k in ("f0.5", "f0", "p0") if any(i["tag"].startswith(k + "-") for i, _ in runs)]
    names = {"f0.5": "fraction 0.5", "f0": "fraction 0", "p0": "p=0 control"}
    lines = ["| source | point | score | " + " | ".join(names[k] for k in kinds) + " |",
             "|---|---|---|" + "---|" * len(kinds)]
    first = runs[0][1]
    for src in SOURCES:
        for r in first[first.source == src].itertuples():
            cells = []
            for k in kinds:
                vals = [t[(t.source == src) & (t.point == r.point) & (t.score == r.score)].iloc[0]
                        for i, t in runs if i["tag"].startswith(k + "-")]
                auc = [v.auc for v in vals]
                cells.append(f"{np.mean(auc):.2f} [{min(auc):.2f}, {max(auc):.2f}], "
                             f"{np.mean([v.tpr_at_1fpr for v in vals]):.2f}, "
                             f"{sum(bool(v.detected) for v in vals)}/{len(vals)}")
            lines.append(f"| {src} | {r.point} | {r.score} | " + " | ".join(cells) + " |")
    lines += ["", "| run | detected rows | lens KL to output, tuned model (logit -> tuned) | base (logit -> tuned) "
              "| MDE AUC | seconds |", "|---|---|---|---|---|---|"]
    for info, t in runs:
        kl = lambda d: "; ".join(f"{p.split('.')[1]}: {v['logit']:.2f} -> {v['tuned']:.2f}" for p, v in d.items())  # noqa: E731
        lines.append(f"| {info['condition']} | {', '.join(info['detected']) or 'none'} | {kl(info['kl_tuned_model'])} "
                     f"| {kl(info['kl_base'])} | {t.mde_auc.dropna().mean():.2f} | {info['seconds']['total']:.0f} |")
    below = {"tuned-lens", "tuned-lens minus base", "logit-lens", "logit-lens minus base", "probe"}
    for k in kinds:
        rs = [(i, t) for i, t in runs if i["tag"].startswith(k + "-")]
        out_hit = [bool(t[t.source.isin(["output", "output minus base"])].detected.any()) for _, t in rs]
        low = [bool(t[t.source.isin(below) & t.point.isin(["lm.0.resid", "lm.1.resid"])].detected.any()) for _, t in rs]
        tl_low = [bool(t[t.source.str.startswith("tuned-lens") & t.point.isin(["lm.0.resid", "lm.1.resid"])]
                       .detected.any()) for _, t in rs]
        lo, hi = wilson(sum(out_hit), len(rs))
        lines.append(f"\n{names[k]}: output (raw or minus base) detected in {sum(out_hit)}/{len(rs)} runs "
                     f"[{lo:.2f}, {hi:.2f}]; a row at lm.0/lm.1 in {sum(low)}/{len(rs)}; a tuned-lens row at lm.0/lm.1 "
                     f"in {sum(tl_low)}/{len(rs)}; both output and lm.0/lm.1 in "
                     f"{sum(a and b for a, b in zip(out_hit, low))}/{len(rs)}.")
    secs = [i["seconds"]["total"] for i, _ in runs]
    lines.append(f"\nRuns: {len(runs)}, {sum(secs) / 60:.1f} min in all (median {np.median(secs):.0f} s per run).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--fractions", default="0.5,0")
    ap.add_argument("--p0", action="store_true", help="also the p = 0 control of every seed (after the others)")
    ap.add_argument("--lens-scenes", type=int, default=4, help="fresh scenes per U3 name for the lens fits")
    ap.add_argument("--lens-steps", type=int, default=1000)
    ap.add_argument("--patch-positions", action="store_true",
                    help="instead of the runs: the base's residual patched in at lm.0 / lm.1 at all, image or text "
                         "positions, on the first of --fractions and --seeds")
    ap.add_argument("--table", action="store_true", help="print the tables of the runs in --out and exit")
    a = ap.parse_args(argv)
    if a.table:
        print(tables(a.out))
        return 0
    from probekit.studies.watermark.dose import DoseConfig
    from probekit.models.loading import load
    from probekit.organisms.reader import reader

    import probekit

    print(f"probekit from {probekit.__file__}", flush=True)
    torch.set_num_threads(1)
    a.out.mkdir(parents=True, exist_ok=True)
    cfg = DoseConfig()  # the full study's settings
    base_path = reader()
    base = load(base_path)
    t0 = time.perf_counter()
    fr = [float(x) for x in a.fractions.split(",")]
    if a.patch_positions:
        patch_positions(cfg, base_path, base, fr[0], int(a.seeds.split(",")[0]), a.out)
        return 0
    for s in (int(x) for x in a.seeds.split(",")):  # a seed's fractions together: paired runs finish together
        for f in fr:
            run(cfg, base_path, base, f, s, 1.0, a.out, a.lens_scenes, a.lens_steps)
    if a.p0:
        for s in (int(x) for x in a.seeds.split(",")):
            run(cfg, base_path, base, 0.0, s, 0.0, a.out, a.lens_scenes, a.lens_steps)
    print(f"all runs: {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
