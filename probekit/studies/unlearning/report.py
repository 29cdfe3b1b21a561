"""The unlearning section of ``docs/results.md`` (:func:`write_section`) and its verdict lines.

The section sits between ``<!-- study:unlearning -->`` and ``<!-- /study:unlearning -->``; the rest of
the page is kept as it is (appended at the end the first time). Figures: :mod:`.unlearning_figures`.
"""

from __future__ import annotations

import math
import platform
from pathlib import Path

import pandas as pd

from ...files import replace_section
from ...report.text import ci_text, fmt, fmt_ci, md_table, where
from .compare import comparison, comparison_md, sae_lines, sweep_table
from .figures import NAMES, save_pngs

__all__ = ["save_pngs", "write_section", "verdict_lines", "transfer_lines", "EMPTY", "MARK", "NAMES"]

#: why a table of :func:`probekit.studies.unlearning.study.run_study` can be empty (not written then)
EMPTY = {"transfer": "this configuration teaches no profile in one modality only (n_transfer=0; the quick "
                     "--small run skips them), so there is no cross-modal transfer to measure",
         "steering_eval": "this configuration runs no steering method",
         "sae_sweep": "this configuration runs no SAE remover"}

MARK = ("<!-- study:unlearning -->", "<!-- /study:unlearning -->")


def _md(df: pd.DataFrame) -> str:
    return md_table(df)


def _detected(g: pd.DataFrame) -> str:
    n = int(g.detected.sum())
    return f"detected at {n} of {len(g)} rows" if n else f"nothing detected at any of {len(g)} rows"


def _ci(r: dict, key: str) -> str:
    return ci_text(r, key) if key in r and not pd.isna(r[key]) else "–"


def transfer_lines(t: pd.DataFrame) -> list[str]:
    """One line per transfer group: both modalities, the gap, and for a null its power."""
    out = []
    for r in t.itertuples():
        head = (f"Cross-modal transfer, {r.group} ({r.profiles} profiles, {r.questions} questions): "
                f"{fmt_ci(r.taught_acc, r.taught_lo, r.taught_hi)} in the taught modality, "
                f"{fmt_ci(r.other_acc, r.other_lo, r.other_hi)} in the other (chance {r.chance:.2f}; gap "
                f"{fmt_ci(r.gap, r.gap_lo, r.gap_hi)}; CIs resample profiles)")
        if r.transfer_detected:
            out.append(head + f": transfer detected (Holm p {r.p_holm:.2g}).")
        else:
            out.append(head + f": no transfer detected; with {r.profiles} profiles the test detects an other-modality "
                       f"accuracy of chance + {r.mde:.2f} with 80% power, and half the taught-modality gain "
                       f"(+{(r.taught_acc - r.chance) / 2:.2f}) with power {r.power_half:.2f}.")
    return out


def _method_line(r: dict, u: pd.DataFrame, up: pd.DataFrame) -> str:
    before = u[(u.split == r["split"]) & (u.method == "none")].iloc[0]
    pp = up[(up.split == r["split"]) & (up.method == r["method"])]
    p0 = up[(up.split == r["split"]) & (up.method == "none")]
    L = (f"{r['method']} at the {r['split']}% split ({r['forget_profiles']} forget profiles): forget multiple choice "
         f"{before['forget_image']:.2f} → {_ci(r, 'forget_image')} with the portrait, {before['forget_text']:.2f} → "
         f"{_ci(r, 'forget_text')} by name; retain {before['retain_image']:.2f} → {_ci(r, 'retain_image')}")
    if r.get("utility_destroyed"):
        L += ("; **utility destroyed** (retain multiple choice not above chance in either modality), so the forget "
              "score is no evidence of forgetting")
    if r["method"] != "retrain" and not pd.isna(r.get("d_forget_image", math.nan)):
        L += (f"; distance from the retrained reference: forget {r['d_forget_image']:+.2f} (portrait) / "
              f"{r['d_forget_text']:+.2f} (name), membership AUC {r['d_mia_auc']:+.2f}")
    L += f"; forget vs never-seen loss-attack AUC {_ci(r, 'mia_auc')}"
    if r.get("mia_below_half") and r["method"] == "retrain":
        L += " — below 0.5 for the reference too: read the methods' AUCs against it, not against 0.5"
    elif r.get("mia_below_half"):
        L += (" — below 0.5: the forget profiles now look *less* familiar than profiles never seen, so \"this was "
              "unlearned\" is itself detectable")
    L += f"; the job read from the forget profiles: {_detected(pp)} (before: {_detected(p0)})"
    if not pd.isna(r.get("relearn_forget_image", math.nan)):
        rec = r.get("relearn_recovered_image", math.nan)
        L += (f"; after {r.get('relearn_steps', '')}relearning on retain data forget {_ci(r, 'relearn_forget_image')} "
              f"(portrait, {r.get('relearn_delta_image', math.nan):+.2f})"
              + (f", {rec:.0%} of what unlearning removed came back" if not pd.isna(rec) else ""))
    return L + "."


def verdict_lines(res: dict) -> list[str]:
    """What the study found, one line per question; every count is of the rows of the table it names."""
    ut, ub = res["utility_tuned"], res["utility_base"]
    L = [f"Facts learned (multiple choice on trained profiles, chance 0.25), likelihood ranking: {_ci(ut, 'retain_image')} "
         f"with the portrait, {_ci(ut, 'retain_text')} by name (untrained base {_ci(ub, 'retain_image')} and "
         f"{_ci(ub, 'retain_text')}); MLLMU-Bench's lettered generation: {_ci(ut, 'gen_retain_image')} and "
         f"{_ci(ut, 'gen_retain_text')} (replies starting with a letter: {fmt(ut.get('gen_retain_image_letters'))})."]
    for (model, profiles), g in res["probes"].groupby(["model", "profiles"], sort=False):
        role = "the finding" if (model, profiles) == ("tuned", "trained") else "a control"
        b = g.loc[g.accuracy.idxmax()]
        L.append(f"The job read from the {model} model on {profiles} profiles ({role}): {_detected(g)} "
                 f"(shared verdict; best {b.features} {where(b.point, b.position)} "
                 f"{fmt_ci(b.accuracy, b.accuracy_lo, b.accuracy_hi)}, chance {b.chance:.2f}).")
    for model, g in res["mia"].groupby("model", sort=False):
        L.append(f"Membership inference on the {model} model (trained vs never-seen profiles), AUC: "
                 + ", ".join(f"{r.attack} {fmt_ci(r.auc, r.auc_lo, r.auc_hi)}" for r in g.itertuples()) + ".")
    u, up = res["unlearning"], res["unlearning_probes"]
    for r in u[u.method != "none"].to_dict("records"):
        L.append(_method_line({**r, "relearn_steps": f"{res['config'].get('relearn_steps', '')} steps of "}, u, up))
    L += transfer_lines(res["transfer"])
    return L


def _before(res: dict) -> list[str]:
    cfg, tr, ut, ub = res["config"], res["train"], res["utility_tuned"], res["utility_base"]
    L = [f"Fine-tune: {tr['samples']} QA samples, {cfg['steps']} steps of {cfg['batch_size']}, lr {cfg['lr']}, "
         f"final loss {tr['final_loss']:.3f}, {tr['seconds']:.0f} s (one thread).\n",
         "Two protocols for each score, named for what they are. Multiple choice (4 options, chance 0.25): "
         "**likelihood** ranks the whole candidate sequences after the question (seeded random order, ties not to "
         "the answer; probekit) and **generation** is MLLMU-Bench's eval.py (options lettered A-D in the prompt, the "
         "greedy reply's first letter). Cloze: **teacher-forced** (is the fact word the argmax in the biography; "
         "probekit) and **generation** (MLLMU-Bench: the fact blanked as [Blank], a greedy reply of up to 50 tokens, "
         "correct when the fact is a substring). ROUGE-L: greedy biography of up to 50 new tokens, Porter stemmer "
         f"(eval.py's settings). {max(cfg['splits'])}% forget split; 95% CIs resample profiles.\n"]
    rows = []
    for name, u in (("tuned", ut), ("base (untrained)", ub)):
        rows.append({"model": name,
                     "MC likelihood forget / retain / never-seen (portrait)":
                         f"{_ci(u, 'forget_image')} / {_ci(u, 'retain_image')} / {_ci(u, 'unseen_image')}",
                     "MC likelihood (name)": f"{_ci(u, 'forget_text')} / {_ci(u, 'retain_text')} / {_ci(u, 'unseen_text')}",
                     "MC generation forget / retain / never-seen (portrait)":
                         f"{_ci(u, 'gen_forget_image')} / {_ci(u, 'gen_retain_image')} / {_ci(u, 'gen_unseen_image')}",
                     "letter replies": fmt(u.get("gen_retain_image_letters")),
                     "test portraits (retain)": _ci(u, "retain_test_image"),
                     "cloze teacher-forced forget (portrait/name)": f"{_ci(u, 'cloze_forget_image')} / {_ci(u, 'cloze_forget_text')}",
                     "cloze generation forget / never-seen (name)": f"{_ci(u, 'clozegen_forget_text')} / {_ci(u, 'clozegen_unseen_text')}",
                     "ROUGE-L forget (portrait/name)": f"{_ci(u, 'rouge_forget_image')} / {_ci(u, 'rouge_forget_text')}"})
    L.append(_md(pd.DataFrame(rows)))
    if "rouge_forget_text_example" in ut:
        L.append(f"\nExample generation (tuned, by name): `{ut['rouge_forget_text_example']}`\n")
    return L


def _unlearning_table(res: dict) -> str:
    u, um, up = res["unlearning"], res["unlearning_mia"], res["unlearning_probes"]
    rows = []
    for r in u.to_dict("records"):
        mm = um[(um.split == r["split"]) & (um.method == r["method"])].set_index("attack")
        pp = up[(up.split == r["split"]) & (up.method == r["method"])]
        rows.append({"split": f"{r['split']}% ({r['forget_profiles']})", "method": r["method"],
                     "forget MC likelihood portrait / name": f"{_ci(r, 'forget_image')} / {_ci(r, 'forget_text')}",
                     "forget MC generation (portrait)": _ci(r, "gen_forget_image"),
                     "retain MC portrait / name": f"{_ci(r, 'retain_image')} / {_ci(r, 'retain_text')}",
                     "utility": "**destroyed**" if r.get("utility_destroyed") else "kept",
                     "Δ forget vs retrain (portrait / name)": (f"{r['d_forget_image']:+.2f} / {r['d_forget_text']:+.2f}"
                                                              if not pd.isna(r.get("d_forget_image", math.nan)) else "–"),
                     "cloze forget teacher-forced / generation (name)":
                         f"{_ci(r, 'cloze_forget_text')} / {_ci(r, 'clozegen_forget_text')}",
                     "MIA AUC forget vs never-seen (loss)": _ci(r, "mia_auc") + (" (below 0.5)" if r.get("mia_below_half") else ""),
                     "Min-K% / Min-K%++ AUC": " / ".join(f"{mm.loc[a, 'auc']:.2f}" for a in ("min_k", "min_k_pp")),
                     "job probe rows detected (retain-fit / forget-fit)": " / ".join(
                         f"{int(g.detected.sum())}/{len(g)}" for _, g in pp.groupby("fit", sort=False)),
                     "layer membership (best acc)": fmt(r.get("member_acc")),
                     "after relearning: forget MC (portrait) / Δ / recovered": (
                         f"{_ci(r, 'relearn_forget_image')} / {r.get('relearn_delta_image', math.nan):+.2f} / "
                         f"{fmt(r.get('relearn_recovered_image'))}"
                         if not pd.isna(r.get("relearn_forget_image", math.nan)) else "not run (steering: a hook)")})
    return _md(pd.DataFrame(rows))


def _tables(res: dict) -> list[str]:
    cfg = res["config"]
    L = ["\n### Positive condition and negative controls: the job per layer (probes, folds by profile)\n",
         "`detected`: probekit's one verdict (`probekit.readout.significance.add_verdicts`: a permutation test of every "
         "row, jobs permuted across profiles and the cross-validated statistic recomputed on each, family-wise "
         "corrected (step-down maxT) over all rows of that model/profile set, MI above its permuted-label floor); "
         "`p (family-wise)` is that corrected p-value and `would detect` the accuracy the test would have detected "
         "with 80% power. `residual`: the raw "
         "stream; `lens`: the same stream read through the model's final norm and unembedding, log-softmax over the "
         "job words (a fixed linear read-out).\n"]
    pr = res["probes"]
    L.append(_md(pd.DataFrame({"model": pr.model, "profiles": pr.profiles, "features": pr.features, "point": pr.point,
                               "position": pr.position, "accuracy": [fmt_ci(*r) for r in zip(pr.accuracy, pr.accuracy_lo, pr.accuracy_hi)],
                               "chance": pr.chance.round(2), "p (family-wise)": pr.p_adjusted.map(lambda v: f"{v:.2g}"),
                               "detected": pr.detected.map({True: "yes", False: "nothing detected"}),
                               "would detect": pr.mde_accuracy.map(lambda v: "–" if v != v else ("nothing" if v >= 1 else f">= {v:.2f}"))})))
    L.append("\n### Membership inference: trained vs never-seen profiles (fact and biography answers; CIs by profile)\n")
    m = res["mia"]
    L.append(_md(pd.DataFrame({"model": m.model, "attack": m.attack, "AUC": [fmt_ci(*r) for r in zip(m.auc, m.auc_lo, m.auc_hi)],
                               "TPR@1%FPR": [fmt_ci(*r) for r in zip(m.tpr_at_1fpr, m.tpr_lo, m.tpr_hi)],
                               "n (members/non)": m.n_members.astype(str) + "/" + m.n_nonmembers.astype(str)})))
    t = res["transfer"]
    if len(t):
        L.append("\n### Cross-modal transfer (Wen et al.): facts taught in one modality, asked in the other\n")
        L.append("Multiple choice by likelihood; CIs resample profiles; `transfer` is the shared verdict on the other "
                 "modality's accuracy against chance (Holm over the two groups); for a null, `MDE` is the excess over "
                 "chance the test detects with 80% power. Departures from Wen et al. (arXiv 2506.05198): they fine-tune "
                 "pretrained VLMs on a synthetic persona dataset (generated person images and textual descriptions) and "
                 "score recall of the facts; here a randomly initialised 2-layer model learns mosaic portraits, names and "
                 "three single-token facts from scratch, the only bridge between a portrait and a name is the organism's "
                 "\"Who is this?\" link samples (no shared pretraining), and recall is scored by likelihood multiple "
                 "choice.\n")
        L.append(_md(pd.DataFrame({"group": t.group, "profiles": t.profiles,
                                   "taught modality MC": [fmt_ci(*r) for r in zip(t.taught_acc, t.taught_lo, t.taught_hi)],
                                   "other modality MC": [fmt_ci(*r) for r in zip(t.other_acc, t.other_lo, t.other_hi)],
                                   "gap": [fmt_ci(*r) for r in zip(t.gap, t.gap_lo, t.gap_hi)], "chance": t.chance,
                                   "transfer": t.transfer_detected.map({True: "detected", False: "not detected"}),
                                   "MDE (80% power)": t.mde.round(2), "power vs half the taught gain": t.power_half.round(2)})))
        L += ["\n" + line + "\n" for line in transfer_lines(t)]
    L.append(f"\n## Unlearning (open-unlearning's GA, GradDiff, KL and NPO beta 0.4: {cfg['unlearn_steps']} steps, lr "
             f"{cfg['unlearn_lr']}; MLLMU-Bench's schedule `gd_mllmu` / `kl_mllmu`: {cfg['mllmu_epochs']} forget epoch then "
             "retain epoch; steering: the job subspace fitted on held-out portrait views of the forget profiles and "
             "scored through `probekit.steering.evaluate` — `ablate` difference of means at every `lm.*.resid`, `leace` "
             "LEACE eraser, `orthogonalize` weight edit, `sae_steer` / `sae_clamp` SAE latents (below); `retrain`: the reference, fine-tuned from the same base and seed "
             "without the forget profiles)\n")
    L.append("`utility destroyed`: retain multiple choice is not above chance in either modality (the shared verdict), "
             "so a low forget score there says nothing about forgetting. Δ: method minus the retrained reference. "
             "Relearning: "
             f"{cfg['relearn_steps']} steps of fine-tuning on retain data (lr {cfg['relearn_lr']}); Δ: the change in forget "
             "accuracy; `recovered`: the share of the forget accuracy that unlearning removed and relearning brought back "
             "(where unlearning removed at least 0.2).\n")
    return L


def _compare(res: dict, imgs: dict, rel) -> list[str]:
    """The held-out comparison of every remover, its Pareto figure and the SAE removers' record."""
    L = ["\n### Every remover side by side: is it gone from the residual stream, or only from the answer?\n",
         "Per method, on the evaluation data only (forget profiles' training views and names for the answer; never-seen "
         "profiles' questions for the KL of the next token against the tuned model, the cost on clean inputs). The "
         "direction and SAE removers are fitted on held-out portrait views of the forget profiles (never trained on, "
         "never scored). Job probe rows: the job read per layer from the forget profiles by a probe fitted on retain "
         "profiles, then by one fitted on the forget profiles' own views (the shared verdict); layer membership: the "
         "forget profiles' questions told from never-seen profiles' per layer (detected rows, best accuracy, chance "
         "0.5).\n", _md(comparison_md(comparison(res))),
         f"\n![unlearning-pareto]({rel(imgs['unlearning-pareto'])})\n"]
    lines = sae_lines(res)
    if lines:
        L += ["\n### SAE removers (Suri et al.'s steering, SAUCE-style clamping)\n"] + [x + "\n" for x in lines]
        L.append("`sae_steer`: the latents that fire more on the forget profiles' questions than on never-seen profiles' "
                 "(standardised mean difference, held-out views), added as a + beta * sum alpha_i W_dec,i at every position "
                 "of the SAE's layer (alpha: the latent's mean activation where it fires; beta swept as Suri et al. do). "
                 "`sae_clamp`: the latents that carry the job on those views (ANOVA F), set to -c alpha where they fire, "
                 "the SAE's error term kept. Each setting was chosen on the fitting views alone (largest forget drop minus "
                 "retain drop; the smaller edit on a tie):\n")
        L.append(_md(sweep_table(res)))
    return L


def write_section(res: dict, md_path: str | Path = "docs/results.md", img_dir: str | Path = "docs/img",
                  command: str = "probekit study unlearning") -> list[Path]:
    """Write (or replace) the unlearning section of ``md_path`` and its PNG figures."""
    md_path = Path(md_path)
    imgs = save_pngs(res, img_dir)
    written = list(imgs.values())
    rel = lambda p: Path(p).relative_to(md_path.parent) if Path(p).is_relative_to(md_path.parent) else p  # noqa: E731
    cfg = res["config"]
    L = [MARK[0], "\n# Results: memorised facts and unlearning (MLLMU-Bench and Wen et al. in miniature)\n",
         f"Generated by `{command}` on {platform.machine()} CPU (a 2-core machine shared with other jobs), "
         f"study run time {res['seconds'] / 60:.1f} min. Every number below comes from that run.\n",
         f"Organism (`probekit.studies.unlearning.profiles`): {cfg['n_profiles']} fictitious profiles trained (name, job, "
         f"birthplace, age; a 4x4 mosaic portrait each; a biography), {cfg['n_transfer']} taught in one modality only, "
         f"{cfg['n_practice']} practice profiles also trained on MLLMU-Bench's question formats (in no split), "
         f"{cfg['n_unseen']} never seen. Questions with the portrait (multimodal) or by name with a blank image "
         "(unimodal). Test set: 6 transformed portraits per profile (brightness, shift, noise). Model: tiny LLaVA "
         f"(`probekit.tiny`, {cfg['num_layers']} LM layers, hidden 64, 32 px images of 16 patches), full fine-tuning. "
         "Forget splits are nested prefixes of the trained profiles.\n",
         "## Before unlearning\n"] + _before(res)
    L.append(f"\n![probes]({rel(imgs['unlearning-probes'])})\n")
    L += _tables(res)
    for key in ("unlearning-utility", "unlearning-after", "unlearning-relearn"):
        L.append(f"![{key}]({rel(imgs[key])})\n")
    L.append(_unlearning_table(res))
    L += _compare(res, imgs, rel)
    up = res["unlearning_probes"]
    L.append("\nPer layer after removal: the job read from the forget profiles by a probe fitted on the retain profiles "
             "of the same model, and by one fitted on the forget profiles' own held-out views (folds by profile; only "
             "where every job has two forget profiles); CIs resample forget profiles; Δ: minus the retrained reference; "
             "chance: the best constant answer:\n")
    L.append(_md(pd.DataFrame({"split": up.split, "method": up.method, "fit": up.fit, "features": up.features,
                               "point": up.point, "position": up.position,
                               "accuracy": [fmt_ci(*r) for r in zip(up.accuracy, up.accuracy_lo, up.accuracy_hi)],
                               "Δ vs retrain": up.d_accuracy.map(lambda v: "–" if pd.isna(v) else f"{v:+.2f}"),
                               "chance": up.chance.round(2),
                               "detected": up.detected.map({True: "yes", False: "nothing detected"})})))
    ml = res["membership_layers"]
    L.append("\nLayer-wise membership (a probe per layer telling the forget profiles' questions from as many never-seen "
             "profiles', folds by profile, chance 0.5), after removal and after relearning:\n")
    L.append(_md(pd.DataFrame({"split": ml.split, "method": ml.method, "stage": ml.stage, "point": ml.point,
                               "accuracy": [fmt_ci(*r) for r in zip(ml.accuracy, ml.accuracy_lo, ml.accuracy_hi)],
                               "detected": ml.detected.map({True: "yes", False: "nothing detected"})})))
    L.append(MARK[1])
    section = "\n".join(L) + "\n"
    replace_section(md_path, *MARK, section)
    written.append(md_path)
    return written
