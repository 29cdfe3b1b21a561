"""The watermark section of ``docs/results.md`` from one run of the dose study.

:func:`section` writes text and tables from :func:`probekit.studies.watermark.study.run_study`'s result
only (nothing typed in by hand); its figures are drawn by :mod:`probekit.studies.watermark.figures`.
"""

from __future__ import annotations

import datetime as _dt
import math
import platform
from pathlib import Path

import pandas as pd

from ...report.text import fmt_ci
from . import dose as WD

__all__ = ["section", "paired_verdicts"]

BEGIN, END = "<!-- watermark-study -->", "<!-- /watermark-study -->"
SHOWN = ("output loss", "output Min-K%++", "output minus base (any score)", "logit lens lm.0", "logit lens lm.1",
         "membership probe (any layer)", "mean-pooled residual probe (scan)")


def _order(keys) -> list[str]:
    fr = sorted((k for k in keys if k.startswith("fraction")), key=lambda k: float(k.split()[1]))
    return [k for k in ("p=0 control",) if k in keys] + fr + [k for k in keys if k == "U3 control"]


def _row_name(r) -> str:
    return f"{r.task}: {'output' if r.source == 'output' else r.point + ' lens'} {r.score}"


def paired_verdicts(pt: pd.DataFrame) -> pd.DataFrame:
    """The fraction-0 rows of the paired table with their word: "detected", "nothing detected" where the
    minimal detectable shift is below the shift one reading per name gives (the smallest leak fraction, the
    same row), else "inconclusive"."""
    if not len(pt) or 0.0 not in set(pt.fraction):
        return pd.DataFrame()
    leaks = pt[pt.fraction > 0]
    ref_f = leaks.fraction.min() if len(leaks) else math.nan
    ref = {(r.task, r.source, r.point, r.score): r.estimate for r in leaks[leaks.fraction == ref_f].itertuples()}
    t = pt[pt.fraction == 0.0].copy()
    t["reference"] = [ref.get((r.task, r.source, r.point, r.score), math.nan) for r in t.itertuples()]
    t["reference_fraction"] = ref_f
    t["reference_readings"] = leaks[leaks.fraction == ref_f].readings.iloc[0] if len(leaks) else math.nan
    t["sees_from"] = [min((f for f in sorted(leaks.fraction.unique()) if abs(leaks[(leaks.fraction == f) & (
        leaks.task == r.task) & (leaks.source == r.source) & (leaks.point == r.point) & (leaks.score == r.score)
    ].estimate.sum()) > r.mde), default=math.nan) for r in t.itertuples()]
    t["word"] = ["detected" if r.leaks else "nothing detected" if r.mde < abs(r.reference) else "inconclusive"
                 for r in t.itertuples()]
    return t


def section(res: dict, paths: dict[str, Path], md_dir: Path, command: str) -> str:
    rel = {k: v.relative_to(md_dir) if v.is_relative_to(md_dir) else v for k, v in paths.items()}
    o, rows, cfg = res["ocr"], res["rows"], res["config"]
    dt, lt = res["dose"], res["layers"]
    top = max(cfg.fractions)
    d0 = cfg.dose(fraction=top)
    L = [BEGIN, "## Watermark study on the reader organism (ProbingPrivacy in miniature, with dose and power)\n",
         f"Generated {_dt.date.today().isoformat()} by `{command}` on {platform.machine()} CPU (1 torch thread, a "
         f"2-core machine shared with other jobs) in {res['seconds'] / 60:.1f} min. Every number below is from that run"
         + (" (text, tables and figures re-rendered from the tables it wrote, `watermark_study.reload`, all but the "
            "comparison figure, which is the run's own).\n" if res.get("reloaded") else ".\n"),
         f"Base model: the reader organism (`probekit.organisms.reader()`, a tiny LLaVA pretrained here on rendered "
         f"text and shapes). OCR character accuracy on {o['n']} held-out 4-8 character strings: "
         f"**{fmt_ci(o['char_accuracy'], o['char_accuracy_lo'], o['char_accuracy_hi'], 3)}** (exact match "
         f"{o['exact_match']:.2f}).\n",
         "**Design** (`probekit.studies.watermark.dose_organism`, `probekit.studies.watermark.dose`). Fine-tune: "
         "\"Describe the shape.\" -> e.g. \"red circle.\" on scenes that each carry a username of pool U1, written "
         f"where the reader reads (its top-left banner) at opacity {d0.opacity:g}. Pools of {cfg.n_users} random "
         f"5-8 character names (U1 seen, U2 unseen, `U1[i]` as long as `U2[i]`); every U1 name on exactly "
         f"{cfg.sightings} training images, in one epoch (each image seen once). The dose: of each name's images "
         f"exactly fraction x {cfg.sightings} ask \"What is the username?\" and are answered with the name (the loss "
         "touches it): fractions " + ", ".join(f"{f:g}" for f in cfg.fractions) + " = "
         + ", ".join(str(cfg.dose(fraction=f).readings) for f in cfg.fractions) + " readings per name. "
         f"{cfg.replay:.0%} of each set is the reader's own pretraining mix (keeps it reading); "
         f"{d0.n_train} samples, {d0.steps} steps of batch {d0.batch_size}, lr {cfg.lr:g} (cosine), full fine-tuning. "
         f"Seeds {', '.join(map(str, cfg.seeds))}: pools from seed // 2, odd seeds swap U1 and U2, so every name is "
         "seen as often as unseen over seeds; scenes, order and replay are the same at every fraction of a seed, so "
         "only the reading changes along the dose. Per seed a matched `p = 0` control (the same scenes, no name on "
         "any image)" + (f" and U3 controls at fraction {', '.join(f'{f:g}' for f in cfg.u3)} (the reading images "
                         "show and read a name of a third pool in place of their U1 name)" if cfg.u3 else "")
         + ". Fraction 0 is Ju et al.'s task-irrelevant regime (p = 1).\n",
         f"Held-out: per name pair {d0.pair_scenes} new scenes, each rendered with the seen and with the unseen name "
         f"({2 * d0.pair_scenes * cfg.n_users} images). Membership audit: `probekit.membership(tuned, members, "
         "nonmembers, base=reader)`, members = the seen names' images asked for the name with the name as the "
         "teacher-forced answer, non-members the unseen names', groups = names; the output attacks (loss, Min-K%, "
         "Min-K%++), the logit lens at every layer, each minus the untouched reader's (reference calibration), a "
         "membership probe per layer, two patching scores per layer (`patched base-into-tuned`: the fine-tune's loss "
         "score minus its score with the untouched reader's residual patched in at that layer; `patched "
         "tuned-into-base`: the reader's score with the fine-tune's residual at that layer minus its own; "
         "`probekit.membership.patched_scores`), the blind-baseline guard, and the causal attribution by "
         "patching (reported at the top fraction). The old mean-pooled residual probe: `probekit.scan` probes on `projector` and `lm.*.resid` at "
         "`prompt_last`, `image_mean` and `answer_mean`, folds by name. Every \"detected\" is probekit's one verdict "
         f"(`add_verdicts`: permutation test over names, {cfg.n_perm} permutations, step-down maxT over all rows of a "
         "run's table). The reader has 3 blocks: `lm.2.resid` through the logit lens is the output itself.\n",
         f"**Why these sizes**: a run (fine-tune, audit, scan, direct prompt) took {rows.seconds.median() / 60:.1f} min "
         f"(median) on this machine, so {len(rows)} runs fit the study's ~90-minute budget; the number of sightings, "
         "the replayed share and the learning rate were chosen from single pilot runs (`DoseConfig`'s docstring: "
         "fewer sightings left the leak below what one run can detect, a larger learning rate made reading "
         "collapse at fraction 0).\n"]
    L += ["### Dose-response\n", "Runs detected of runs (Wilson 95% CI), per method and kind of run:\n"]
    keys = _order(dt.runs.unique())
    L.append("| method | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for m in dict.fromkeys(dt.method):
        cells = []
        for k in keys:
            r = dt[(dt.method == m) & (dt.runs == k)]
            cells.append("–" if not len(r) else f"{int(r.detected.iloc[0])}/{int(r.n.iloc[0])} "
                         f"[{r.rate_lo.iloc[0]:.2f}, {r.rate_hi.iloc[0]:.2f}]")
        L.append(f"| {m} | " + " | ".join(cells) + " |")
    auc = lt[(lt.source == "output") & (lt.score == "loss")].set_index("runs")
    cal = lt[(lt.source == "output minus base") & (lt.score == "loss")].set_index("runs")
    L.append("\nOutput loss attack AUC, mean over seeds [seeds' range], raw and minus the untouched reader's: " + "; ".join(
        f"{k}: {auc.auc[k]:.2f} [{auc.auc_min[k]:.2f}, {auc.auc_max[k]:.2f}] and {cal.auc[k]:.2f} "
        f"[{cal.auc_min[k]:.2f}, {cal.auc_max[k]:.2f}]" for k in keys if k in auc.index and k in cal.index) + ".\n")
    ag = res["agreement"]
    n_out = len(ag)
    n_inner = int((ag.layers != "none").sum()) if n_out else 0
    quiet = [r for r in res["runs"] if r["row"]["kind"] in ("task-irrelevant", "p=0 control", "U3 control")]
    false = [f"{r['row']['condition']} ({', '.join(m for m, hit in WD.METHODS.items() if hit(r))})" for r in quiet
             if any(hit(r) for hit in WD.METHODS.values())]
    L.append(f"**Layer-wise vs output.** An output row (raw or minus base) was detected in {n_out} run(s); a layer "
             f"below the last (logit lens, lens minus base, probe or patching score at `lm.0` / `lm.1`) was detected in {n_inner} of "
             "them" + (": " + "; ".join(f"{r.condition}: {r.layers}" for r in ag.itertuples()) if n_out else "")
             + f". {_localised(ag)}Runs that read no U1 name (fraction 0, the controls): {len(false)} of "
             f"{len(quiet)} had any method detect" + (": " + "; ".join(false) if false else "") + ".\n")
    L += _missed(ag[~WD.localised_below(ag)], WD.quiet_p_range(res["runs"]))
    L += _dose_words(res, dt, ag)
    if "dose" in rel:
        L.append(f"![dose-response]({rel['dose']})\n")
    L += _layers(res, top)
    L += _guard(res)
    L += _paired(res, rel)
    L += _extras(res, rel)
    L.append(END)
    return "\n".join(L) + "\n"


def _localised(ag: pd.DataFrame) -> str:
    """The fixed-sequence localisation beside the verdict's rows: in how many of the runs with an output detection
    it names a layer below the last, and which runs it adds to those the rows below already detected."""
    if not len(ag) or (ag.localised == "").all():  # "": tables without p-values, nothing was tested
        return ""
    named = ag[WD.localised_below(ag)]
    added = named[named.layers == "none"]
    return (f"The localisation (the patching rows tested in a fixed sequence from the output down, `probekit.readout"
            f".localise`, its own family-wise 0.05) names a layer below the last in {len(named)} of these {len(ag)} "
            "runs" + (": " + "; ".join(f"{r.condition}: {r.localised}" for r in named.itertuples()) if len(named)
                      else "") + (f", {len(added)} of them with no row of the verdict below the last" if len(added)
                                  else "") + ". ")


def _missed(ag: pd.DataFrame, quiet: tuple[float, float] | None = None, scenes: int = 2, names: int = 100,
            layers: int = 3) -> list[str]:
    """Why no layer below the last was detected where an output row was: the rows' smallest p, before and after the
    run's correction, and the causal share of the gap carried up to that layer, with its interval. ``quiet``: the
    range of the smallest such p in the runs that read no name (:func:`~.dose.quiet_p_range`)."""
    missed = ag[ag.layers == "none"] if len(ag) and "min_p_below" in ag else ag.iloc[0:0]
    if not len(missed):
        return []
    runs = "; ".join(f"{r.condition}: p {r.min_p_below:.3f} ({r.min_p_adjusted_below:.2f} corrected), share up to "
                     f"{r.share_point} {r.share:.2f} [{r.share_lo:.2f}, {r.share_hi:.2f}]" for r in missed.itertuples())
    lower = int((missed.share_lo > 0).sum())  # runs whose share up to the last layer below lies above 0
    null = "" if quiet is None else (
        f"Rows below the last layer of the runs that read no U1 name reach p {quiet[0]:.3f} (each such run's "
        f"smallest: {quiet[0]:.3f}-{quiet[1]:.3f}): p-values of this size are what a run without the leak shows "
        "among its rows, which is why the verdict corrects over them. ")
    return ["**Why no layer below the last in those runs.** The smallest permutation p of any row below the last "
            "layer, uncorrected and after the run's step-down maxT (the one verdict), and the causal share of the "
            "member/non-member loss gap carried up to that layer (the untouched reader's residual patched in; 95% "
            f"bootstrap interval over names): {runs}. {null}{_placed(missed)}At this size ({names} names a pool, "
            f"{scenes} held-out scenes a name, {layers} blocks) "
            + (f"the rows below the last layer lack the power to find the part of the leak formed there in {lower} "
               "of these runs" + ("; in the others " if lower < len(missed) else ".\n") if lower else "")
            + (f"the layer {'they' if lower else 'such runs'} can name is the last, whose lens rows are the output's "
               "by construction.\n" if lower < len(missed) else "")]


def _placed(missed: pd.DataFrame) -> str:
    """What the shares' intervals say of where the leak forms, run by run: below 1, the last block adds a part of
    the gap (the layers named are right to be silent below it); above 0, a part is formed lower and no row there
    found it (a miss of power); holding both, the data do not place it."""
    groups = {"below": missed[missed.share_hi < 1], "above": missed[missed.share_lo > 0],
              "both": missed[(missed.share_lo <= 0) & (missed.share_hi >= 1)]}
    say = {"below": "the interval lies below 1: part of the leak (at least 1 minus the upper bound) forms in the last "
                    "block, where the lens rows detect it",
           "above": "the interval lies above 0: a part of the gap is formed below the last block, yet no row there "
                    "was detected (too little power for that part)",
           "both": "the interval holds both 0 and 1: these data do not place the leak below the last block"}
    parts = [f"in {len(g)} run{'s' if len(g) > 1 else ''} ({'; '.join(g.condition)}) {say[k]}"
             for k, g in groups.items() if len(g)]
    return ("Where the shares place the leak: " + "; ".join(parts) + ". ") if parts else ""


def _dose_words(res: dict, dt: pd.DataFrame, ag: pd.DataFrame) -> list[str]:
    """The sentences the dose table supports: the calibrated output's rise, whether the layers below the last
    follow it, and which detections came from runs whose reading collapsed."""
    leak = dt[dt.kind.isin(["leak", "task-irrelevant"])].sort_values("fraction")
    rate = lambda m: ", ".join(f"{int(r.detected)}/{int(r.n)}" for r in leak[leak.method == m].itertuples())  # noqa: E731
    n_inner = int((ag.layers != "none").sum()) if len(ag) else 0
    kinds = {src: sum(any(src in part for part in row.split(", ")) for row in ag.rows) if len(ag) else 0
             for src in ("lens", "probe", "patched")}
    L = [f"**Dose-response**: the output loss attack minus the untouched reader's detects the leak in {rate('output minus base (any score)')} "
         f"runs along the dose ({', '.join(f'{f:g}' for f in leak.fraction.unique())}); the raw output loss in "
         f"{rate('output loss')}, the raw Min-K%++ in {rate('output Min-K%++')}, the mean-pooled residual probe in "
         f"{rate('mean-pooled residual probe (scan)')}. "
         + (f"**Layer-wise below the output: not detected wherever the output is** ({n_inner} of {len(ag)} runs with "
            "an output detection also detect at `lm.0` or `lm.1`)." if n_inner < len(ag) else
            f"**Layer-wise below the output: detected wherever the output is** ({n_inner} of {len(ag)} runs).")
         + (f" By kind of row, of the {len(ag)} runs with an output detection, detected below the last layer: a lens "
            f"score (logit lens or lens minus base) in {kinds['lens']}, the membership probe in {kinds['probe']}, a "
            f"patching score in {kinds['patched']}." if len(ag) else "")]
    gone = [r for r in res["runs"] if r["row"]["collapsed"]]
    if gone:
        hits = [f"{r['row']['condition']} ({', '.join(m for m, h in WD.METHODS.items() if h(r)) or 'nothing'})"
                for r in gone]
        L.append(f" Runs whose reading collapsed (direct prompt 0.00 on both pools; kept here, dropped from the paired "
                 f"test) and what detected in them: {'; '.join(hits)}.")
    return ["".join(L) + "\n"]


def _layers(res: dict, top: float) -> list[str]:
    lt = res["layers"]
    keys = [k for k in (f"fraction {top:g}", "fraction 0", "p=0 control", "U3 control") if k in set(lt.runs)]
    L = [f"### Membership per layer: the leak regime (fraction {top:g}) and its controls\n",
         "AUC (mean over seeds [seeds' range]), TPR at 1% FPR (mean), runs detected; fraction 0 is the same "
         "fine-tune with no name read (the matched control along the dose):\n",
         "| source | point | score | " + " | ".join(keys) + " |", "|---|---|---|" + "---|" * len(keys)]
    first = lt[lt.runs == keys[0]]
    for r in first.itertuples():
        cells = []
        for k in keys:
            c = lt[(lt.runs == k) & (lt.source == r.source) & (lt.point == r.point) & (lt.score == r.score)]
            c = c.iloc[0] if len(c) else None
            cells.append("–" if c is None else f"{c.auc:.2f} [{c.auc_min:.2f}, {c.auc_max:.2f}], "
                         f"{c.tpr1:.2f}, {int(c.detected)}/{int(c.n)}")
        L.append(f"| {r.source} | {r.point} | {r.score} | " + " | ".join(cells) + " |")
    L.append(f"\nMinimal detectable AUC of one run (80% power, family-wise): {first.mde_auc.max():.2f}.\n")
    att = [r["attribution"] for r in res["runs"] if r["attribution"] is not None and r["row"]["kind"] == "leak"
           and r["row"]["fraction"] == top]
    if att:
        a = pd.concat(att).groupby("point", sort=False).share_tuned.agg(["mean", "min", "max"])
        L.append(f"Causal attribution at fraction {top:g} (share of the fine-tune's member / non-member loss gap "
                 "that patching the untouched reader's residual in at a layer removes; mean over seeds [range]): "
                 + "; ".join(f"{p}: {r['mean']:.0%} [{r['min']:.0%}, {r['max']:.0%}]" for p, r in a.iterrows())
                 + ". Where the gap itself is small, these shares are noisy.")
        first = a.index[0]
        cal = lt[(lt.runs == keys[0]) & (lt.source == "logit-lens minus base") & (lt.point == first) & (lt.score == "loss")]
        pat = lt[(lt.runs == keys[0]) & lt.source.str.startswith("patched") & (lt.point == first)]
        if len(cal) and a["mean"].iloc[0] > 0.5:
            L[-1] += (f" Patching at `{first}` already removes most of the gap, so the fine-tune changed what the name "
                      f"does by then, yet the lens there reads membership at AUC {cal.auc.iloc[0]:.2f} (minus base)"
                      + (": the change is made early and a lens, reading the answer-predicting position alone, sees "
                         "it only at the output. The per-sample patching scores at the same layer read it: "
                         + "; ".join(f"{r.source} AUC {r.auc:.2f} [{r.auc_min:.2f}, {r.auc_max:.2f}], detected in "
                                     f"{int(r.detected)}/{int(r.n)} runs" for r in pat.itertuples()) + "."
                         if len(pat) else ": the change is made early and becomes readable only at the output."))
        L[-1] += "\n"
    return L


def _guard(res: dict) -> list[str]:
    g = res.get("guard_shift")
    if g is None:
        return []
    gt, t = g["guard"], g["table"]
    out = t[(t.source == "output") & (t.score == "loss")].iloc[0]
    runs_guard = sum(bool(r["guard"].detected.any()) for r in res["runs"])
    L = ["### The guard on a deliberately shifted split\n",
         f"On the fine-tune {g['condition']} (no name read), members' names written opaque and non-members' at "
         "the study's opacity 0.5, on the same scenes: the output loss attack gives AUC "
         f"{fmt_ci(out.auc, out.auc_lo, out.auc_hi)} ({'detected' if out.detected else 'not detected'}), with no "
         "membership to find. The blind baseline: "
         + "; ".join(f"{r.point}: AUC {fmt_ci(r.auc, r.auc_lo, r.auc_hi)}{' **detected**' if r.detected else ''}"
                     for r in gt.itertuples())
         + f". Report's first line: \"{g['summary'].splitlines()[0]}\". "
         + ("This shift did not fake membership at the output here (the reader reads opaque and half-transparent "
            "names about equally well); the guard flags the split all the same, from the pixels alone. "
            if not out.detected else "The shift faked membership at the output, and the guard says so first. ")
         + f"On the study's own splits the guard fired in {runs_guard} of {len(res['runs'])} runs.\n"]
    return L


def _paired(res: dict, rel: dict) -> list[str]:
    pt, dropped = res["paired"], res["dropped"]
    if not len(pt):
        return []
    v = paired_verdicts(pt)
    n_units, seeds = int(pt.n_units.iloc[0]), int(pt[pt.fraction == 0].seeds.iloc[0]) if 0.0 in set(pt.fraction) else 0
    L = ["### Ju et al.'s task-irrelevant claim, paired\n",
         "Each held-out scene is rendered with seen name `i` and with the equal-length unseen name `i`. Per name "
         "pair and score: (score with the seen name - with the unseen one) in the fine-tune, minus the same in the "
         "seed's `p = 0` control (a difference in differences: what the names are cancels, what the fine-tune did "
         "to the seen ones stays), averaged over the two seeds that swap the pools' roles; scores: the shape task's "
         "mean log-probability of the true description (what the gradient touched) and the reading scores of "
         "part 2 at the output and through the logit lens per layer (higher = more confident). Test over name "
         f"pairs: two-sided sign flips ({n_units} pairs, `probekit._stats.sign_flip_null`), one verdict per "
         "fraction (`add_verdicts`, maxT over its rows); MDE: the mean shift detectable with 80% power "
         "(`min_detectable_shift`).\n",
         f"Dropped runs (direct prompt 0.00 on both pools: reading collapsed): {'; '.join(dropped) or 'none'}. "
         f"Fraction 0 pools {seeds} seed(s).\n"]
    if len(v):
        n_read = int(v.reference_readings.iloc[0])
        L.append(f"**Fraction 0 (the task-irrelevant claim)**, beside the shift that {n_read} readings per name give "
                 f"(fraction {v.reference_fraction.iloc[0]:g}, the smallest dose, same row): \"nothing detected\" where "
                 "the MDE is below that shift, \"inconclusive\" where it is not.\n")
        L.append("| row | difference in differences [95% CI] | p (family-wise) | MDE | shift at "
                 f"fraction {v.reference_fraction.iloc[0]:g} | smallest dose whose shift exceeds the MDE | verdict |\n"
                 "|---|---|---|---|---|---|---|")
        L += [f"| {_row_name(r)} | {fmt_ci(r.estimate, r.lo, r.hi, 3)} | {r.p_adjusted:.3f} | {r.mde:.3f} | "
              f"{r.reference:+.3f} | {'none' if math.isnan(r.sees_from) else f'{r.sees_from:g}'} | "
              f"{'**detected**' if r.word == 'detected' else r.word} |" for r in v.itertuples()]
        words = v.word.value_counts().to_dict()
        L.append("\n**" + ("Detected" if words.get("detected") else "Nothing detected" if not words.get("inconclusive")
                           else "Inconclusive" if not words.get("nothing detected") else "Nothing detected, in part")
                 + f"**: {words.get('detected', 0)} row(s) detected, {words.get('nothing detected', 0)} null(s) with "
                 f"the power to see a {n_read}-reading memorisation, {words.get('inconclusive', 0)} inconclusive. "
                 + "; ".join(f"{int((v.sees_from <= f).sum())} of {len(v)} rows would have seen the shift of fraction "
                             f"{f:g} ({int(pt[pt.fraction == f].readings.iloc[0])} readings per name)"
                             for f in sorted(pt[pt.fraction > 0].fraction.unique())) + ".\n")
    leaks = pt[pt.fraction > 0]
    if len(leaks):
        L.append("The paired design on the leak fractions (its positive controls), rows detected of rows: " + "; ".join(
            f"fraction {f:g}: {int(g.leaks.sum())}/{len(g)} (largest shift {g.estimate.abs().max():.3f}, "
            f"MDE {g.mde.median():.3f})" for f, g in leaks.groupby("fraction")) + ".\n")
    if "paired" in rel:
        L.append(f"![paired]({rel['paired']})\n")
    return L


def _trend_text(s: tuple[float, float, float]) -> str:
    if not (s[2] < 0 or s[1] > 0):
        return "Nothing detected: the CI includes 0."
    if s[2] < 0:
        return ("**Detected**: the CI excludes 0, so the larger the batch, the less the watermarks turn the gradient "
                "(Ju et al.'s direction). Averaging alone gives part of this: if each image's watermark moved the "
                "gradient independently, 1 - cos would fall as 1/B (a slope of -0.30) once the mean gradient "
                "dominates the batch noise, and more slowly before; the watermark is in the gradient of every "
                "batch size, diluted by the batch, not removed.")
    return "**Detected**: the CI excludes 0, and the larger the batch, the more the watermarks turn the gradient."


def gradient_lines(res: dict, rel: dict) -> list[str]:
    """The gradient-cosine part of the section (nothing when the run had none)."""
    if "gradients" not in res:
        return []
    g, s = res["gradients"], res["trend"]["slope"]
    L = [f"### Gradient cosine vs batch size ({res['gradient_condition']}, {g.seed.nunique()} seeds)\n",
         "1 - cos(g(B), g(B without watermarks)) over the first steps; the trend is the per-seed slope of "
         "log10(1 - cos) per doubling of the batch, t-CI over seeds: "
         f"**{fmt_ci(*s)}**. {_trend_text(s)}\n"]
    summ = g.groupby("batch_size").one_minus_cos.agg(["mean", "min", "max"]).reset_index()
    L.append("| batch size | 1 - cos, mean over seeds | min | max |\n|---|---|---|---|")
    L += [f"| {int(r.batch_size)} | {r.mean:.2e} | {r.min:.2e} | {r.max:.2e} |" for r in summ.itertuples()]
    if "gradients" in rel:
        L.append(f"\n![gradient cosine]({rel['gradients']})\n")
    return L


def _extras(res: dict, rel: dict) -> list[str]:
    L = []
    pr = res.get("protocol")
    if pr is not None and len(pr):
        L.append("### Ju et al.'s protocol (folds not split by username)\n")
        L.append("A test image then shares its name with training images, so a probe can recognise the name and "
                 "look up its pool:\n\n| model | verdict | best point | probe acc |\n|---|---|---|---|")
        L += [f"| {r.model} | {'**detected** (' + str(r.n_detected) + '/' + str(r.m) + ')' if r.detected else 'nothing detected'} "
              f"| {r.best_point}@{r.best_position} | {fmt_ci(r.best_accuracy, r.best_lo, r.best_hi)} |" for r in pr.itertuples()]
        L.append("\nThe base reader, which never saw either pool, is \"detected\" under it: that protocol measures "
                 "whether the text is legible, not whether it was memorised, which is why probekit splits folds "
                 "by name.\n")
    if "layers" in rel:
        L.append(f"![per-layer membership AUC]({rel['layers']})\n")
    L += gradient_lines(res, rel)
    return L
