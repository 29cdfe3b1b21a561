"""What the memorisation study measures on each model besides the probes.

Output-only baselines (membership inference, asking directly), the positive control, and the
two removals (ablating a direction; the unlearning baselines). Used by
:func:`probekit.studies.memorization.study.run_memorization`.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd

from ...data.synthetic import make_task
from ...data.watermark import make_profiles, render
from ...models.loading import load
from ...organisms.finetune import finetune, task_accuracy
from ...organisms.mia import answer_logprobs, direct_prompt, loss_score, mia_metrics, min_k_score
from .setup import POINTS, POSITIONS, MemorizationConfig, _eval_set, _rows, _scan
from ...organisms.unlearn import unlearn

__all__ = ["positive_control", "CONTROL_QUESTION", "CONTROL_ANSWERS"]


def _mia(net, ev: dict, members_train: list, nonmembers: list, cfg: MemorizationConfig, rs: int, **tags) -> list[dict]:
    out = []
    seen = np.array([lab == "seen" for lab in ev["labels"]])
    lp_eval = answer_logprobs(net, ev["samples"])
    lp_m, lp_n = answer_logprobs(net, members_train), answer_logprobs(net, nonmembers)
    for attack, fn in (("loss", loss_score), ("min-k 20%", lambda t: min_k_score(t, 0.2))):
        out.append({**tags, "membership": "profile (U1 vs U2 held-out)", "attack": attack,
                    **mia_metrics(fn(lp_eval), seen, n_boot=cfg.n_boot, seed=rs)})
        sc = np.concatenate([fn(lp_m), fn(lp_n)])
        y = np.r_[np.ones(len(lp_m)), np.zeros(len(lp_n))]
        out.append({**tags, "membership": "image (train vs fresh)", "attack": attack,
                    **mia_metrics(sc, y, n_boot=cfg.n_boot, seed=rs)})
    return out


def _direct(net, ev: dict, cfg: MemorizationConfig, **tags) -> dict:
    r = direct_prompt(net, ev["images"], ev["usernames"], [lab == "seen" for lab in ev["labels"]], prompt=cfg.prompt)
    r["examples"] = " | ".join(repr(x) for x in r["examples"][:2])
    return {**tags, **r}


CONTROL_QUESTION = "Which tag is written?"
CONTROL_ANSWERS = ("one", "two", "three", "four")


def positive_control(cfg: MemorizationConfig, seed: int, ckpt: Path) -> tuple[pd.DataFrame, dict]:
    """A watermark perfectly tied to the answer in training; probes must find its identity.

    Four U1-style profiles; in training every image carries one of them (p = 1) and the answer to
    ``CONTROL_QUESTION`` is that profile's word (``CONTROL_ANSWERS``), so the watermark is the only
    cue. Held-out images get a profile at random; the probe label is the profile (4 classes,
    chance = majority rate, no groups: the label *is* the profile). Drawn with
    ``cfg.control_mode`` (default ``"pattern"`` with ``cfg.control_cell`` px cells: a 4x4 block
    pattern, which a 96 px image shows far more clearly than 11 px text). Returns the probe rows (base and tuned, plus the tuned
    model's held-out answer accuracy in ``answer_accuracy*``) and the two reports.
    """
    from ...scan import scan

    profs = make_profiles(len(CONTROL_ANSWERS), pool=0, seed=seed + 50)

    def samples(n: int, s: int) -> tuple[list, list[int]]:
        task = make_task(n, size=cfg.image_size, seed=s, kinds=("colour",))
        rng = random.Random(s + 1)
        ks = [rng.randrange(len(profs)) for _ in task]
        for t, k in zip(task, ks):
            t.image = render(t.image, profs[k], rng, mode=cfg.control_mode, cell=cfg.control_cell)
            t.question, t.answer = CONTROL_QUESTION, CONTROL_ANSWERS[k]
        return task, ks

    train, _ = samples(cfg.n_train, seed + 60)
    tuned = load(ckpt)
    finetune(tuned, train, steps=cfg.control_steps, batch_size=cfg.probe_batch_size, lr=cfg.control_lr, lora=cfg.lora,
             seed=seed, progress=cfg.progress)
    ev, ks = samples(cfg.control_n_eval, seed + 70)
    acc = task_accuracy(tuned, ev)
    images = [t.image for t in ev]
    kw = dict(labels=[f"profile{k}" for k in ks], prompts=cfg.prompt, points=POINTS, positions=POSITIONS,
              seed=seed, n_boot=cfg.n_boot, progress=cfg.progress)
    rb = scan(load(ckpt), images, **kw)
    rt = scan(tuned, images, **kw)
    rows = pd.concat([_rows(rb, model="base", seed=seed),
                      _rows(rt, model="tuned (watermark = answer)", seed=seed).assign(
                          answer_accuracy=acc["accuracy"], answer_accuracy_lo=acc["accuracy_lo"],
                          answer_accuracy_hi=acc["accuracy_hi"])])
    return rows, {"base": rb, "tuned": rt}


def _removal(cfg: MemorizationConfig, tuned, train, ev, test, ckpt, seed) -> dict:
    """Ablate a difference-of-means 'watermark present' direction; suppression and cost."""
    from ...hooks.collect import collect
    from ...steering import Direction, ablate, evaluate

    seen, unseen = make_profiles(cfg.n_profiles, 0, seed), make_profiles(cfg.n_profiles, 1, seed)
    fit = _eval_set(cfg, seed, seen, unseen, offset=3000)
    imgs = fit["images"] + fit["clean"]
    y = [1] * len(fit["images"]) + [0] * len(fit["clean"])
    store = collect(tuned, imgs, cfg.prompt, points="lm.*.resid", positions="last", progress=False)
    d = Direction.from_means(store, y)
    images = ev["images"] + ev["clean"]
    labels = [1] * len(ev["images"]) + [0] * len(ev["clean"])
    groups = ev["groups"] * 2
    rep = evaluate(tuned, lambda: ablate(tuned, d), images, labels, clean_images=ev["clean"], task_samples=test,
                   prompts=cfg.prompt, clean_prompts=cfg.prompt, points="lm.*.resid", positions=POSITIONS,
                   groups=groups, seed=seed, n_boot=cfg.n_boot)
    rep_su = evaluate(tuned, lambda: ablate(tuned, d), ev["images"], ev["labels"], clean_images=ev["clean"],
                      prompts=cfg.prompt, clean_prompts=cfg.prompt, points="lm.*.resid", positions=POSITIONS,
                      groups=ev["groups"], seed=seed, n_boot=cfg.n_boot)
    return {"presence": rep, "seen_unseen": rep_su, "direction": repr(d)}


def _unlearning(cfg: MemorizationConfig, tuned, train, ev, test, ckpt, seed) -> list[dict]:
    from ..._stats import bootstrap_mean
    from ...steering.outputs import next_token_kl, next_token_logprobs

    state = {k: v.clone() for k, v in tuned.hf.state_dict().items()}
    forget = [s for s in train if s.meta.get("watermark") is not None]
    retain = make_task(len(forget), size=cfg.image_size, seed=seed + 4000)
    fresh = make_task(len(forget), size=cfg.image_size, seed=seed + 5000)
    before = next_token_logprobs(tuned, ev["clean"], cfg.prompt)
    rows = []
    for method in ("none",) + tuple(cfg.unlearning):
        m = load(ckpt)
        m.hf.load_state_dict(state)
        if method != "none":
            unlearn(m, forget, retain, method, steps=cfg.unlearn_steps, batch_size=cfg.probe_batch_size,
                    lr=cfg.unlearn_lr, seed=seed)
        after = next_token_logprobs(m, ev["clean"], cfg.prompt)
        kl = next_token_kl(before, after)
        klm, kllo, klhi = bootstrap_mean(kl, seed, 2000)
        r = _scan(m, ev, cfg, seed)
        t = r.table[r.table.source == "residual"]
        best = t.loc[t.accuracy.idxmax()]
        lp_f, lp_n = answer_logprobs(m, forget), answer_logprobs(m, fresh)
        sc = np.concatenate([loss_score(lp_f), loss_score(lp_n)])
        mia = mia_metrics(sc, np.r_[np.ones(len(lp_f)), np.zeros(len(lp_n))], n_boot=cfg.n_boot, seed=seed)
        acc = task_accuracy(m, test)
        fl = -loss_score(lp_f)
        rows.append({"method": method, "steps": 0 if method == "none" else cfg.unlearn_steps,
                     "probe_best": best.accuracy, "probe_best_lo": best.accuracy_lo, "probe_best_hi": best.accuracy_hi,
                     "probe_point": f"{best.point}@{best.position}", "chance": best.chance,
                     "task_accuracy": acc["accuracy"], "task_lo": acc["accuracy_lo"], "task_hi": acc["accuracy_hi"],
                     "kl_clean": klm, "kl_lo": kllo, "kl_hi": klhi,
                     "forget_nll": float(fl.mean()), "forget_vs_fresh_auc": mia["auc"], "auc_lo": mia["auc_lo"],
                     "auc_hi": mia["auc_hi"]})
    return rows
