"""The watermark organism with a dose: how many times the fine-tune reads each name, and nothing else, changes.

One fine-tune of the reader (:mod:`.reader`) per :class:`Dose`: "Describe the shape." on scenes that each
carry a username of pool U1 written where the reader reads, every U1 name on exactly ``sightings`` training
images (one epoch: each image is seen once). Of each name's images exactly ``round(fraction * sightings)``
ask "What is the username?" and are answered with it, so the loss touches the name that many times
(``fraction = 0``: the task-irrelevant regime of Ju et al.; 0.05 with 20 sightings: each name read once).
The scenes, the order and the replayed half of the set (the reader's own pretraining mix, which keeps it
reading) are the same at every fraction of a seed. Matched controls on the same scenes: ``p = 0`` (no name
on any image) and ``leak_pool = "other"`` (the reading images show and read a name of a third pool U3 in
place of their U1 name).

Pools come in pairs of equal-length names (``U1[i]``, ``U2[i]``) drawn from ``seed // 2``; odd seeds swap the
roles, so that over seeds every name is "seen" as often as "unseen" and what a name is (easy to read, a
common glyph) cancels out.

Held-out: per pair ``i`` the same ``pair_scenes`` scenes rendered once with the seen name ``i`` and once with
the unseen name ``i`` (:func:`paired_set`). They are the membership audit's members and non-members
(:func:`probekit.membership`, groups = names) and the paired design's units (:func:`paired_scores`).

Example:
    >>> from probekit.organisms import reader
    >>> d = Dose(fraction=0.5, n_users=100)
    >>> d.readings, d.n_train, d.steps
    (10, 4000, 500)
    >>> # about 2 minutes on one thread:
    >>> res = run_dose(reader(), d)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from ...data.synthetic import Sample
from ...errors import InputError
from . import organism as W
from ...organisms.text import draw_text, scene

__all__ = ["Dose", "pools", "training_set", "paired_set", "shape_test", "paired_scores", "membership_samples",
           "run_dose"]


@dataclass(frozen=True)
class Dose:
    """One fine-tune of the dose study (the defaults: the full study's)."""

    fraction: float = 0.5  # share of each name's images that ask for it (the loss touches the name)
    seed: int = 0
    p: float = 1.0  # 1: every task image carries a U1 name; 0: the p = 0 control (none does)
    leak_pool: str = "seen"  # "other": the reading images show and read U3 names (the matched control)
    n_users: int = 100  # names per pool
    sightings: int = 20  # images per U1 name in the fine-tune (one epoch: each seen once)
    replay: float = 0.5  # share of the set from the reader's pretraining mix
    lr: float = 1e-3
    batch_size: int = 8
    opacity: float = 0.5
    pair_scenes: int = 2  # held-out scenes per name pair (each rendered with both names)
    size: int = 48  # layout of the reader: run_dose takes them from it
    grid: int = 6
    place: str = "banner"

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise InputError(f"fraction must be in [0, 1], got {self.fraction!r}", fix="pass e.g. fraction=0.25")
        if self.p not in (0.0, 1.0):
            raise InputError(f"p must be 0 or 1 in the dose design, got {self.p!r}", fix="p=1 (marked) or p=0 (control)")
        if self.leak_pool not in ("seen", "other"):
            raise InputError(f"leak_pool must be 'seen' or 'other', got {self.leak_pool!r}", fix="use 'seen' or 'other'")
        if self.n_users < 3 or self.sightings < 1 or self.pair_scenes < 1 or not 0.0 <= self.replay < 1.0:
            raise InputError(f"n_users >= 3, sightings >= 1, pair_scenes >= 1 and replay in [0, 1) needed, got "
                             f"{self.n_users}, {self.sightings}, {self.pair_scenes}, {self.replay}",
                             fix="use the defaults (100 names, 20 sightings, 2 scenes, replay 0.5)")

    @property
    def readings(self) -> int:
        """Times each name is asked for in the fine-tune (0 at ``p = 0``)."""
        return int(round(self.fraction * self.sightings)) if self.p else 0

    @property
    def n_task(self) -> int:
        return self.n_users * self.sightings

    @property
    def n_train(self) -> int:
        return self.n_task + int(round(self.replay / (1 - self.replay) * self.n_task))

    @property
    def steps(self) -> int:
        return math.ceil(self.n_train / self.batch_size)

    @property
    def kind(self) -> str:
        return "p=0 control" if not self.p else "U3 control" if self.leak_pool == "other" and self.readings \
            else "leak" if self.readings else "task-irrelevant"

    def label(self) -> str:
        what = {"p=0 control": "p=0 (no name)", "U3 control": f"fraction {self.fraction:g}, U3 read",
                "leak": f"fraction {self.fraction:g}", "task-irrelevant": "fraction 0"}[self.kind]
        return f"{what}, seed {self.seed}"


def pools(d: Dose) -> tuple[list[str], list[str], list[str]]:
    """``(seen, unseen, other)``: the pair pools of ``seed // 2``, roles swapped on odd seeds; U3 (``other``)
    as long as each pair, in neither pool, the same for both seeds of a pair."""
    u1, u2 = W.username_pools(d.n_users, d.seed // 2)
    u3 = W.other_pool(u1, d.seed // 2, u2)
    return (u2, u1, u3) if d.seed % 2 else (u1, u2, u3)


def training_set(d: Dose, seen: list[str], other: list[str]) -> list[Sample]:
    """The fine-tuning set in its training order: ``n_task`` shape scenes, each U1 name on ``sightings`` of them
    (``p = 1``) and read on ``readings`` of those, interleaved with the replayed pretraining mix.

    Scenes, order and replay depend on ``seed`` only; which images read their name on ``seed`` and
    ``fraction``; so every fraction and control of a seed trains on the same pictures.
    """
    from ...organisms.reader import USERNAME, pretraining_data

    scenes_rng, slots_rng = random.Random(f"dose-scenes:{d.seed}"), random.Random(f"dose-slots:{d.seed}")
    text_rng = random.Random(f"dose-text:{d.seed}")  # placement apart from the scenes: p = 0 draws the same scenes
    slots = [i for i in range(d.n_users) for _ in range(d.sightings)]
    slots_rng.shuffle(slots)
    reads_rng = random.Random(f"dose-reads:{d.seed}:{d.readings}")
    chosen = {i: set(reads_rng.sample(range(d.sightings), d.readings)) for i in range(d.n_users)}
    seen_count = dict.fromkeys(range(d.n_users), 0)
    task = []
    for i in slots:
        img, meta = scene(scenes_rng, d.size)
        question, answer = W.QUESTION, f"{meta['colour']} {meta['shape']}."
        k, seen_count[i] = seen_count[i], seen_count[i] + 1
        if d.p:
            reads = k in chosen[i]
            meta["username"] = other[i] if reads and d.leak_pool == "other" else seen[i]
            img = draw_text(img, meta["username"], text_rng, opacity=d.opacity, grid=d.grid or None,
                            place=d.place or None)[0]
            if reads:
                question, answer = USERNAME, meta["username"] + "."
        task.append(Sample(img, question, answer, "ocr" if question != W.QUESTION else "describe", meta))
    n_replay = d.n_train - d.n_task
    mix = pretraining_data(10_000 + d.seed, size=d.size, grid=d.grid, place=d.place or None)
    where = sorted(random.Random(f"dose-order:{d.seed}").sample(range(d.n_train), n_replay))
    out, t, r = [], iter(task), iter(range(n_replay))
    marks = set(where)
    for j in range(d.n_train):
        out.append(mix[next(r)] if j in marks else next(t))
    return out


def paired_set(d: Dose, seen: list[str], unseen: list[str], *, n_scenes: int | None = None,
               draws: str | None = None) -> pd.DataFrame:
    """Per name pair ``i`` and scene ``j``: the scene with the seen name ``i`` and the same scene with the unseen
    name ``i`` (one row each: ``pair, scene, image, name, label, shape``); the scenes depend on ``seed // 2``.

    ``n_scenes`` (default ``d.pair_scenes``) scenes per pair; ``draws``: another seed string for the scenes,
    for a set of the same layout disjoint from the audit's (e.g. held-out views to fit a remover on)."""
    rng = random.Random(draws or f"dose-pairs:{d.seed // 2}:{d.size}")
    rows = []
    for i in range(d.n_users):
        for j in range(d.pair_scenes if n_scenes is None else n_scenes):
            img, meta = scene(rng, d.size)
            state = rng.getstate()
            for name, label in ((seen[i], "seen"), (unseen[i], "unseen")):
                rng.setstate(state)  # the same draws for both names: only the name differs
                marked = draw_text(img, name, rng, opacity=d.opacity, grid=d.grid or None, place=d.place or None)[0]
                rows.append({"pair": i, "scene": j, "image": marked, "name": name, "label": label,
                             "shape": f"{meta['colour']} {meta['shape']}."})
    return pd.DataFrame(rows)


def shape_test(d: Dose, n: int, draws: str = "dose-task") -> list[Sample]:
    """``n`` fresh shape-task scenes with no name ("Describe the shape."): the task the fine-tune must keep."""
    rng = random.Random(f"{draws}:{d.seed}")
    return [Sample(im, W.QUESTION, f"{m['colour']} {m['shape']}.", "describe", m)
            for im, m in (scene(rng, d.size) for _ in range(n))]


def membership_samples(pairs: pd.DataFrame) -> tuple[list[dict], list[dict]]:
    """Members (seen names) and non-members for :func:`probekit.membership`: asked for the name, answered with it."""
    from ...organisms.reader import USERNAME

    rows = [{"image": r.image, "prompt": USERNAME, "answer": r.name + ".", "group": r.name, "label": r.label}
            for r in pairs.itertuples()]
    strip = lambda r: {k: v for k, v in r.items() if k != "label"}  # noqa: E731
    return [strip(r) for r in rows if r["label"] == "seen"], [strip(r) for r in rows if r["label"] != "seen"]


def paired_scores(model: Any, pairs: pd.DataFrame, points: str = "lm.*.resid", k: float = 0.2) -> pd.DataFrame:
    """Per row of ``pairs``: the reading scores (loss, Min-K%, Min-K%++ of the teacher-forced name) at the output
    and per layer through the logit lens (``reading:<source>:<point>:<score>``), and the shape task's
    ``shape:output:logits:loss`` (mean log-probability of the true description: what the fine-tune's gradient
    touched). Higher = more confident, as in :mod:`probekit.readout.token_scores`."""
    from ...membership import _model_scores
    from ...readout.lens import LogitLens
    from ...readout.token_scores import SCORES
    from ...organisms.reader import USERNAME

    names = model.resolve(points)
    out = {}
    for task, prompt, answers, pts in (("reading", USERNAME, [n + "." for n in pairs.name], names),
                                       ("shape", W.QUESTION, list(pairs["shape"]), [])):
        data = pd.DataFrame({"image": list(pairs.image), "prompt": prompt, "answer": answers})
        scores = _model_scores(model, data, pts, {"logit-lens": LogitLens(model)}, k, 32, None, False)
        for (src, point), s in scores.items():
            for name in (SCORES if task == "reading" else ("loss",)):
                out[f"{task}:{src}:{point}:{name}"] = s[name]
    return pd.DataFrame(out, index=pairs.index)


def run_dose(base_path: Any, d: Dose, *, base: Any = None, attribution: bool = False, n_perm: int = 1000,
             n_boot: int = 1000, scan: bool = True) -> dict:
    """Fine-tune a copy of the reader under ``d`` and audit it.

    Returns ``row`` (one flat dict for the results table), ``membership`` (the
    :class:`~probekit.report.membership_report.MembershipReport` of seen vs unseen names, ``base`` the
    untouched reader), ``scan`` (the old mean-pooled residual probes' ScanReport, or None) and its
    ``scan_verdict`` (:func:`.watermark.decide`), ``pairs`` (the held-out set without images) with ``scores``
    (:func:`paired_scores`), ``eval`` (images, labels, groups) and ``tuned``.
    """
    from ...membership import membership

    from ...organisms.finetune import finetune, task_accuracy
    from ...models.loading import load

    t0 = time.perf_counter()
    c = W.resolve(W.Condition(), base_path)
    d = replace(d, size=c.size, grid=c.grid, place=c.place)
    seen, unseen, other = pools(d)
    pairs = paired_set(d, seen, unseen)
    base = base if base is not None else load(base_path)
    tuned = load(base_path)
    losses = finetune(tuned, training_set(d, seen, other), steps=d.steps, batch_size=d.batch_size, lr=d.lr,
                      seed=d.seed, progress=False)
    members, nonmembers = membership_samples(pairs)
    rep = membership(tuned, members, nonmembers, base=base, n_perm=n_perm, n_boot=n_boot, seed=d.seed,
                              attribution=attribution, progress=False)
    ev = {"images": list(pairs.image), "labels": list(pairs.label), "groups": list(pairs.name)}
    scanned = W._scan(tuned, ev, d.seed, min(n_boot, 300)) if scan else None
    verdict = W.decide(scanned.table) if scanned is not None else None
    direct = W.direct_prompt(tuned, ev)
    test = shape_test(d, 96)
    row = {"condition": d.label(), "kind": d.kind, **{k: v for k, v in asdict(d).items()}, "readings": d.readings,
           "steps": d.steps, "n_train": d.n_train, "confounded": rep.confounded,
           "task_acc": task_accuracy(tuned, test)["accuracy"], "final_loss": float(np.mean(losses[-20:])), **direct,
           "collapsed": direct["direct_seen"] == 0 and direct["direct_unseen"] == 0,
           "residual_detected": bool(verdict["residual_detected"]) if verdict else math.nan,
           "residual_best": verdict["residual_best"] if verdict else "", "seconds": time.perf_counter() - t0}
    return {"row": row, "membership": rep, "scan": scanned, "scan_verdict": verdict, "pairs": pairs.drop(columns="image"),
            "scores": paired_scores(tuned, pairs), "tuned": tuned, "dose": d, "eval": ev}
