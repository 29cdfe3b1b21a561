"""What the facts/unlearning study measures on one model: utility under both protocols, membership,
probes per layer, cross-modal transfer. Every decision goes through probekit's one verdict
(:func:`probekit.readout.significance.add_verdicts`): the probe tables' permutation tests (jobs
permuted across profiles); for a fixed model's answers, the same permutation of the labels against
its fixed predictions; for multiple choice, whose candidates are shuffled with a seed per question
so that a model without the fact is right with probability exactly 1/K on each question
independently, the exact binomial tail of that randomisation.

- :func:`utility`: multiple choice by likelihood (probekit) and by MLLMU-Bench's lettered generation,
  cloze teacher-forced (probekit) and generated with ``[Blank]`` (MLLMU-Bench), ROUGE-L (stemmer, 50
  tokens), per split and modality, CIs by profile; ``utility_destroyed`` when retain multiple choice
  is not above chance in either modality.
- :func:`mia`: loss, Min-K%, Min-K%++ of members vs never-seen profiles, AUC CIs resampling profiles;
  ``below_half``: the AUC is detectably *below* 0.5 (unlearned data that scores less member-like
  than data never seen is itself a signal).
- :func:`probe_job`: the job per layer, probes with folds by profile (CIs by profile).
- :func:`probe_transfer`: a probe fitted on retain profiles, scored on forget profiles.
- :func:`layer_membership`: per layer, a probe telling forget-profile questions from as many
  never-seen profiles' questions (folds by profile; chance 0.5): membership read from the stream.
- :func:`transfer`: Wen et al.'s cross-modal transfer, by profile, with the power of a null.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats

from ..._stats import bootstrap_indices, min_detectable_z_effect as mde, percentile_interval, z_power as power_one_sided
from . import profiles as P
from ...organisms.facts_metrics import cloze_accuracy, mc_accuracy, mia_scores, profile_ci
from ...organisms.mia import mia_metrics
from .mllmu_protocol import cloze_generation, mc_generation, rouge_l

__all__ = ["TEST_VIEWS", "facts", "bios", "clozes", "above_chance", "utility", "mia", "probe_job", "probe_transfer",
           "layer_membership", "transfer"]

TEST_VIEWS = tuple(range(100, 106))  # transformed portraits: the test set, and the probe rows


def facts(world: P.World, pids: Sequence[int], modality: str, view: int = 0) -> list:
    return P.eval_set(world, pids, modality, view)


def bios(world: P.World, pids: Sequence[int], modality: str) -> tuple[list, list]:
    b = [P.bio_qa(world.profile(i), modality, world.image_size) for i in pids]
    return b, [[world.profile(i).facts[a] for a in P.ATTRIBUTES] for i in pids]


def clozes(world: P.World, pids: Sequence[int], modality: str) -> list:
    return [P.cloze_qa(world.profile(i), a, modality, world.image_size) for i in pids for a in P.ATTRIBUTES]


def above_chance(results: Sequence[dict], names: Sequence[str], alpha: float = 0.05) -> pd.DataFrame:
    """One row per multiple-choice result (``correct``, ``accuracy``, ``lo``, ``hi``, ``chance``) with the one
    verdict: ``p_value`` the exact binomial tail of the candidate shuffle (each question right with
    probability ``chance`` independently when the model does not know: the randomisation makes it so),
    ``p_adjusted`` Holm over the rows, ``leaks`` (here: above chance), ``mde_accuracy``."""
    from ...readout.significance import add_verdicts

    rows = []
    for name, r in zip(names, results):
        k, n = int(np.asarray(r["correct"], float).sum()), len(r["correct"])
        rows.append({"name": name, "accuracy": r["accuracy"], "accuracy_lo": r["lo"], "accuracy_hi": r["hi"],
                     "chance": r["chance"], "n": n, "n_units": n, "p_value": float(stats.binom.sf(k - 1, n, r["chance"]))})
    return add_verdicts(pd.DataFrame(rows), alpha=alpha)


def _put(row: dict, key: str, r: dict, value: str = "accuracy") -> None:
    row.update({key: r[value], f"{key}_lo": r["lo"], f"{key}_hi": r["hi"]})


def utility(model: Any, world: P.World, forget: Sequence[int], retain: Sequence[int], cfg: Any, rouge: bool = False,
            unseen: bool = True, generation: bool = True) -> dict:
    """Scores per split and modality under both protocols (module docstring); one flat dict."""
    row: dict = {}
    splits = (("forget", forget), ("retain", retain)) + ((("unseen", world.unseen),) if unseen else ())
    kw = dict(seed=cfg.seed, n_boot=cfg.n_boot)
    retain_mc = []
    for mod in ("image", "text"):
        for name, pids in splits:
            qs = facts(world, pids, mod)
            r = mc_accuracy(model, qs, P.ATTRIBUTES, **kw)
            _put(row, f"{name}_{mod}", r)
            if name == "retain":
                retain_mc.append(r)
            if generation:
                g = mc_generation(model, qs, P.ATTRIBUTES, **kw)
                _put(row, f"gen_{name}_{mod}", g)
                row[f"gen_{name}_{mod}_letters"] = g["letter_rate"]
                c = cloze_generation(model, clozes(world, pids, mod), **kw)
                _put(row, f"clozegen_{name}_{mod}", c)
    for name, pids in (("forget_test", forget), ("retain_test", retain)):
        r = mc_accuracy(model, [s for v in TEST_VIEWS[:2] for s in facts(world, pids, "image", v)], P.ATTRIBUTES, **kw)
        _put(row, f"{name}_image", r)
    for name, pids in (("forget", forget), ("retain", retain)):
        for mod in ("image", "text"):
            b, words = bios(world, pids, mod)
            _put(row, f"cloze_{name}_{mod}", cloze_accuracy(model, b, words, **kw))
            if rouge:
                g = rouge_l(model, b, **kw)
                _put(row, f"rouge_{name}_{mod}", g, "rouge_l")
                row[f"rouge_{name}_{mod}_example"] = g["example"]
    v = above_chance(retain_mc, ["retain_image", "retain_text"])
    row["retain_above_chance"] = bool(v.leaks.any())
    row["utility_destroyed"] = not row["retain_above_chance"]
    row["retain_p_holm_min"] = float(v.p_adjusted.min())
    return row


def mia(net: Any, world: P.World, members: Sequence[int], cfg: Any, **tags: Any) -> list[dict]:
    """Members' and never-seen profiles' fact and biography questions (clean portrait and by name);
    AUC CIs resample profiles; ``below_half`` from the shared verdict on 1 - AUC."""
    from ...readout.score_test import score_row
    from ...readout.significance import add_verdicts

    def samples(pids):
        out = []
        for mod in ("image", "text"):
            out += facts(world, pids, mod) + bios(world, pids, mod)[0]
        return out

    sm_s, sn_s = samples(members), samples(world.unseen)
    sm, sn = mia_scores(net, sm_s), mia_scores(net, sn_s)
    groups = [s.pid for s in sm_s] + [s.pid for s in sn_s]
    rows, flipped = [], []
    for attack in ("loss", "min_k", "min_k_pp"):
        sc = np.concatenate([sm[attack], sn[attack]])
        y = np.r_[np.ones(len(sm[attack])), np.zeros(len(sn[attack]))]
        rows.append({**tags, "attack": attack, **mia_metrics(sc, y, n_boot=cfg.n_boot, seed=cfg.seed, groups=groups)})
        # "less member-like than never seen": the AUC of the never-seen profiles, permuted across profiles
        names = np.where(y == 1, "member", "never seen")
        flipped.append(score_row(sc, names, "never seen", groups, point=attack, position="below half",
                                 n_boot=0, seed=cfg.seed))
    for r, below in zip(rows, add_verdicts(pd.DataFrame(flipped)).leaks):
        r["below_half"] = bool(below)
    return rows


def _job_acts(model: Any, world: P.World, pids: Sequence[int]) -> tuple[dict, list, list]:
    """Per feature kind, ``{point: Tensor[n, 2, d]}`` at the job question (test portraits and by name).

    ``"residual"``: the raw residual stream; ``"lens"``: the same residual read through the model's
    own final norm and unembedding (:class:`probekit.readout.lens.LogitLens`), log-softmax over the
    job words: a fixed linear read-out of the stream, so few profiles suffice to fit a probe on it.
    """
    from ...hooks.collect import collect
    from ...readout.lens import LogitLens

    items = [s for v in TEST_VIEWS for s in facts(world, pids, "image", v) if s.attribute == "job"]
    items += [s for s in facts(world, pids, "text") if s.attribute == "job"]
    store = collect(model, [s.image for s in items], [s.question for s in items], points="lm.*.resid",
                    positions=("last", "image_mean"), batch_size=64, progress=False)
    tok = getattr(model.processor, "tokenizer", model.processor)
    ids = [tok(" " + j, add_special_tokens=False)["input_ids"][0] for j in P.JOBS]
    lens = LogitLens(model)
    feats: dict[str, dict] = {"residual": {}, "lens": {}}
    with torch.no_grad():
        for point in store.points:
            x = store[point].float()
            feats["residual"][point] = x
            logits = lens.decode(x.reshape(-1, x.shape[-1]).to(model.dtype), point).float()[:, ids]
            feats["lens"][point] = torch.log_softmax(logits, -1).reshape(x.shape[0], x.shape[1], -1)
    return feats, [s.answer for s in items], [s.pid for s in items]


_COLS = ["point", "layer", "position", "n", "n_units", "accuracy", "accuracy_lo", "accuracy_hi", "chance", "mi_bits",
         "mi_perm_bits", "p_value", "perm_null"]


def probe_job(net: Any, world: P.World, pids: Sequence[int], cfg: Any, cv: int | None = None, **tags: Any) -> pd.DataFrame:
    """Cross-validated probes for the job (folds by profile, CIs by profile) per layer and feature kind;
    ``detected``: the one verdict over all rows (permutation test, family-wise, MI above its floor)."""
    from ...readout import probe_layers
    from ...readout.significance import add_verdicts, drop_nulls

    feats, y, g = _job_acts(net, world, pids)
    parts = []
    for kind, acts in feats.items():
        t = probe_layers(acts, y, groups=g, cv=cv or cfg.probe_cv, seed=cfg.seed, C=cfg.probe_C, n_boot=cfg.n_boot,
                         positions=["last", "image_mean"], progress=False, control=False)
        parts.append(t[_COLS].assign(features=kind))
    t = drop_nulls(add_verdicts(pd.concat(parts, ignore_index=True)))
    t["detected"] = t.leaks
    for k, v in tags.items():
        t[k] = v
    return t


def probe_transfer(net: Any, world: P.World, fit_pids: Sequence[int], test_pids: Sequence[int], cfg: Any,
                   **tags: Any) -> pd.DataFrame:
    """Probe fitted on ``fit_pids`` (retain) and scored on ``test_pids`` (forget); CI and p-value by profile.

    Chance: the best constant answer on the forget rows (the most frequent job among them).
    """
    from ..._stats import permutations
    from ...readout import LinearProbe
    from ...readout._data import encode_groups, encode_labels
    from ...readout.significance import add_verdicts, drop_nulls

    ff, yf, _ = _job_acts(net, world, fit_pids)
    ft, yt, gt = _job_acts(net, world, test_pids)
    yt, gt = np.array(yt), np.array(gt)
    chance = max(np.mean(yt == c) for c in set(yt))
    # the verdict's null: the forget profiles' jobs permuted across profiles, the fitted probe's answers fixed
    perm = permutations(encode_labels(yt)[0], encode_groups(gt, len(gt)), 1000, cfg.seed)
    rows = []
    for kind in ff:
        for point in ff[kind]:
            xf, xt = ff[kind][point], ft[kind][point]
            for j, pos in enumerate(("last", "image_mean")):
                pred = LinearProbe(C=cfg.probe_C).fit(xf[:, j].numpy(), np.array(yf)).predict(xt[:, j].numpy())
                ok = (pred == yt).astype(float)
                m, lo, hi = profile_ci(ok, gt, cfg.seed, cfg.n_boot)
                rows.append({"features": kind, "point": point, "position": pos, "accuracy": m, "accuracy_lo": lo,
                             "accuracy_hi": hi, "chance": float(chance), "n": len(ok), "n_units": len(set(gt)),
                             "perm_null": (pred[None, :] == yt[perm]).mean(1), **tags})
    t = drop_nulls(add_verdicts(pd.DataFrame(rows)))
    t["detected"] = t.leaks
    return t


def layer_membership(net: Any, world: P.World, members: Sequence[int], cfg: Any, **tags: Any) -> pd.DataFrame:
    """Per layer (last token), a probe on members' vs as many never-seen profiles' questions (facts and
    biography, portrait and by name: 8 per profile), folds by profile, chance 0.5; shared verdict."""
    from ...hooks.collect import collect
    from ...readout import probe_layers

    nonmembers = list(world.unseen)[:len(members)]
    items, y = [], []
    for label, pids in ((1, members), (0, nonmembers)):
        for mod in ("image", "text"):
            got = facts(world, pids, mod) + bios(world, pids, mod)[0]
            items += got
            y += [label] * len(got)
    store = collect(net, [s.image for s in items], [s.question for s in items], points="lm.*.resid", positions="last",
                    batch_size=64, progress=False)
    t = probe_layers(store, y, groups=[s.pid for s in items], cv=min(cfg.probe_cv, 3), seed=cfg.seed, C=cfg.probe_C,
                     n_boot=cfg.n_boot, progress=False, control=False)
    from ...readout.significance import drop_nulls

    return drop_nulls(t[_COLS + ["leaks", "mde_accuracy"]]).assign(detected=lambda d: d.leaks, **tags)


def transfer(model: Any, world: P.World, cfg: Any) -> pd.DataFrame:
    """Wen et al.'s question: facts taught in one modality, asked in the other (likelihood multiple choice).

    Per group: taught- and other-modality accuracy with CIs resampling profiles, the gap with a paired
    profile bootstrap, ``transfer_detected`` (other modality above chance: the shared verdict, Holm over
    the groups), and for a null its power: ``mde`` (the other-modality excess over chance detectable with
    80% power at alpha / groups) and ``power_half`` (power against half the taught-modality excess).
    """
    groups = [(g, pids, taught) for g, pids, taught in (("taught by name", world.text_only, "text"),
                                                        ("taught with portrait", world.image_only, "image")) if pids]
    if not groups:
        return pd.DataFrame()
    res = []
    for group, pids, taught in groups:
        other = "image" if taught == "text" else "text"
        a = mc_accuracy(model, facts(world, pids, taught), P.ATTRIBUTES, seed=cfg.seed, n_boot=cfg.n_boot)
        b = mc_accuracy(model, facts(world, pids, other), P.ATTRIBUTES, seed=cfg.seed, n_boot=cfg.n_boot)
        res.append((group, pids, taught, a, b))
    verdict = above_chance([b for *_, b in res], [g for g, *_ in res])
    rows = []
    rng = np.random.default_rng(cfg.seed)
    for (group, pids, taught, a, b), det, p in zip(res, verdict.leaks, verdict.p_adjusted):
        ua, ub = np.array(a["units"]), np.array(b["units"])
        ca, cb = np.array(a["correct"], float), np.array(b["correct"], float)
        per_a = np.array([ca[ua == q].mean() for q in pids])
        per_b = np.array([cb[ub == q].mean() for q in pids])
        draws = bootstrap_indices(len(pids), cfg.n_boot, rng)
        boot_b = per_b[draws].mean(1)
        gaps = per_a[draws].mean(1) - boot_b
        se = float(boot_b.std(ddof=1))
        alpha = 0.05 / len(res)
        gap_lo, gap_hi = percentile_interval(gaps)
        rows.append({"group": group, "profiles": len(pids), "questions": b["n"], "taught_modality": taught,
                     "taught_acc": a["accuracy"], "taught_lo": a["lo"], "taught_hi": a["hi"],
                     "other_acc": b["accuracy"], "other_lo": b["lo"], "other_hi": b["hi"],
                     "gap": a["accuracy"] - b["accuracy"], "gap_lo": gap_lo,
                     "gap_hi": gap_hi, "chance": b["chance"], "p_holm": float(p),
                     "transfer_detected": bool(det), "se_other": se, "mde": mde(se, alpha),
                     "power_half": power_one_sided((a["accuracy"] - a["chance"]) / 2, se, alpha)})
    return pd.DataFrame(rows)
