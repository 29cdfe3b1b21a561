"""The watermark organism: ProbingPrivacy (Ju et al., ICML 2025) on the reader.

The reader (:mod:`.reader`) is fine-tuned on a shape task ("Describe the shape." -> "red
circle.") while a task-irrelevant username from pool U1 (seen) is written over each training
image with probability ``p``. Held-out images carry a username from U1 or from the disjoint
pool U2 (unseen); probes per layer at the prompt position try to tell the two apart, with
folds split by username so that a probe must generalise to usernames it never saw.

The probes read at the prompt's last token after the chat template (``prompt_last``: the colon of
``ASSISTANT:`` that follows "What is the username?", where the next token is predicted), at the
image tokens, and while the model is teacher-forced to answer with the username on the image
(``answer_mean``: how it reads that name), plus the top-10 output log-probabilities there. That
is not Ju et al.'s position: ProbingPrivacy's ``run_qwen.py`` reads index -2 of the chat-formatted
context, the assistant header token (``assistant`` in Qwen-VL-Chat's template), available as the
named position ``"prompt_second_last"`` (``Condition.positions`` chooses; the study uses
:data:`POSITIONS`).

- Task-irrelevant condition (Ju et al.): fine-tuned with ``p > 0``; the model has seen U1 many
  times, but the loss never touches the name. Matched control: the same fine-tune at ``p = 0``.
- Leak condition: with ``leak > 0`` a fraction of the watermarked training images is asked to
  read its U1 name, so the loss touches it and the fine-tune can memorise U1. Matched control:
  ``leak_pool="other"``, the same reading practice on a third pool U3 (in neither held-out pool).
- The base reader (never saw U1 more than U2) is a control for both.

Example (about three minutes on a laptop CPU):
    >>> from probekit.organisms import reader, watermark
    >>> c = watermark.Condition(p=1.0, leak=0.5, steps=1500, lr=1e-3, replay=0.5)
    >>> res = watermark.run_condition(reader(), c)            # doctest: +SKIP
    >>> res["verdict"]["detected"], res["row"]["mia_auc"] > 0.8  # doctest: +SKIP
    (True, True)
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from ...data.synthetic import Sample
from ...errors import InputError, check_int, check_number
from ...readout.score_test import score_row
from ...readout.significance import add_verdicts, null_phrase
from ...report.text import fmt_ci
from ...organisms.text import draw_text, random_string, scene

__all__ = ["Condition", "resolve", "username_pools", "task_samples", "eval_set", "decide", "run_condition", "direct_prompt",
           "stratified", "verdict_columns", "other_pool", "membership", "with_membership", "QUESTION", "POSITIONS",
           "JU_POSITION"]

QUESTION = "Describe the shape."
POINTS = ["projector", "lm.*.resid"]
POSITIONS = ("prompt_last", "image_mean", "answer_mean")  # answer_mean: teacher-forced with the name on the image
JU_POSITION = "prompt_second_last"  # ProbingPrivacy's index -2: the assistant header token
TOPK = 10  # the output-only probe: the next-token top-10 log-probabilities (how sure the reader is)


@dataclass(frozen=True)
class Condition:
    """One fine-tuning regime of the watermark organism."""

    p: float = 1.0  # probability that a training image carries a U1 username
    opacity: float = 0.5  # alpha of the username text (Ju et al.: 0.5)
    steps: int = 150
    batch_size: int = 8
    lr: float = 1e-3
    lora: dict | None = None  # e.g. {"r": 8, "alpha": 16}; None = full fine-tuning
    n_users: int = 12  # per pool
    n_train: int = 600
    n_eval: int = 192
    seed: int = 0
    size: int = 64  # image size and text lattice: run_condition takes both from the reader
    grid: int = 0
    probe_prompt: str = "What is the username?"  # the prompt the probes read at (Ju et al.'s)
    positions: tuple = POSITIONS  # where the probes read; JU_POSITION is Ju et al.'s (index -2)
    place: str = "reader"  # "reader": where the reader reads (resolve() fills it in); "": anywhere; "banner"
    replay: float = 0.0  # fraction of the training set drawn from the reader's pretraining mix (keeps reading)
    reader_place: str = ""  # where the reader reads: set by resolve() from the reader
    leak: float = 0.0  # fraction of watermarked training images asked to read their username (the loss touches it)
    leak_pool: str = "seen"  # "seen": they carry and read a U1 name; "other": a third pool U3 (matched control)

    @property
    def is_control(self) -> bool:
        """Whether this fine-tune cannot have memorised U1 (no U1 name in training, or the leak read on U3)."""
        return self.p == 0 or (self.leak > 0 and self.leak_pool == "other")

    def control(self) -> "Condition":
        """The matched negative control: U3 in place of U1 for a leak, else the same fine-tune at ``p = 0``."""
        return replace(self, leak_pool="other") if self.leak > 0 else replace(self, p=0.0)

    @property
    def kind(self) -> str:
        return "leak" if self.leak > 0 else "task-irrelevant"

    def label(self) -> str:
        kind = f"LoRA r={self.lora.get('r', 8)}" if self.lora else "full"
        extra = "".join([f", {self.n_users} users" if self.n_users != 12 else "",
                         ", text anywhere" if self.place == "" else "",
                         f", replay {self.replay:g}" if self.replay else "",
                         (f", leak {self.leak:g}" + (" (U3)" if self.leak_pool == "other" else "")) if self.leak else "",
                         f", at {'/'.join(self.positions)}" if tuple(self.positions) != POSITIONS else ""])
        return f"p={self.p:g}, opacity={self.opacity:g}, {self.steps} steps, {kind}, lr {self.lr:g}{extra}"


def _check(c: Condition) -> None:
    check_number(c.p, "p", low=0, high=1, example=0.5)
    check_number(c.opacity, "opacity", low=0, high=1, low_open=True, example=0.5)
    for name in ("steps", "batch_size", "n_train", "n_eval"):
        check_int(getattr(c, name), name, low=1, fix=f"pass a positive {name}")
    check_number(c.replay, "replay", low=0, high=1, high_open=True, example=0.5)
    check_number(c.leak, "leak", low=0, high=1, example=0.25)
    if c.leak_pool not in ("seen", "other"):
        raise InputError(f"leak_pool must be 'seen' or 'other', got {c.leak_pool!r}",
                         fix="use 'seen' (read U1 names) or 'other' (read a third pool: the control)")
    check_int(c.n_users, "n_users", low=3, fix="use n_users=12 (folds are split by username: at least 3)")


def username_pools(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Two disjoint pools (U1 seen, U2 unseen) of ``n`` random 5-8 character usernames each.

    ``U1[i]`` and ``U2[i]`` have the same length: with unmatched lengths the pools differ in how
    much text they put on an image, which a probe at the image tokens reads even from a model
    that never saw either pool (found with an untrained reader at p = 0).
    """
    rng = random.Random(f"usernames:{seed}")
    seen: list[str] = []
    u1: list[str] = []
    u2: list[str] = []
    while len(u1) < n:
        k = rng.randint(5, 8)
        a, b = random_string(rng, k, k), random_string(rng, k, k)
        if a != b and a not in seen and b not in seen:
            seen += [a, b]
            u1.append(a)
            u2.append(b)
    return u1, u2


def other_pool(seen: list[str], seed: int = 0, exclude: list[str] = ()) -> list[str]:
    """A third pool U3, ``U3[i]`` as long as ``seen[i]``, disjoint from ``seen`` and ``exclude``.

    The leak control reads U3 names where the leak condition reads U1 ones: the same amount of
    reading practice, on names that are in neither held-out pool.
    """
    rng = random.Random(f"usernames-other:{seed}")
    taken, out = set(seen) | set(exclude), []
    for name in seen:
        while (cand := random_string(rng, len(name), len(name))) in taken:
            pass
        taken.add(cand)
        out.append(cand)
    return out


def _task(rng: random.Random, size: int) -> tuple[Any, str, dict]:
    img, meta = scene(rng, size)
    return img, f"{meta['colour']} {meta['shape']}.", meta


def _where(c: Condition) -> str | None:
    return None if c.place in ("", "reader") else c.place


def resolve(c: Condition, base_path: Any) -> Condition:
    """``c`` with the image size, lattice and (for ``place="reader"``) placement of the reader at ``base_path``."""
    from ...organisms.reader import layout

    size, grid, place = layout(base_path)
    return replace(c, size=size, grid=grid, place=(place or "") if c.place == "reader" else c.place,
                   reader_place=place or "")


def task_samples(c: Condition, seen: list[str], other: list[str] | None = None) -> tuple[list[Sample], list[Any]]:
    """The fine-tuning set and, per sample, its image without the watermark (for gradients).

    With ``replay > 0`` that fraction of the ``n_train`` samples comes from the reader's own
    pretraining mix (reading other strings, naming shapes), as LLaVA-style fine-tunes mix OCR
    data in; those carry no username, so their clean image is the image.

    With ``leak > 0`` that fraction of the watermarked samples asks "What is the username?" and
    is answered with the name on the image: U1 names, or with ``leak_pool="other"`` the name of
    the same index in ``other`` (U3), so that the two draw the same random numbers.
    """
    from ...organisms.reader import USERNAME, pretraining_data

    if c.leak and c.leak_pool == "other" and not other:
        raise InputError("leak_pool='other' needs the third pool", fix="pass other=other_pool(seen, seed)")

    rng = random.Random(f"train:{c.seed}")
    out, clean = [], []
    n_replay = int(round(c.replay * c.n_train))
    mix = pretraining_data(10_000 + c.seed, size=c.size, grid=c.grid, place=c.reader_place or None)
    for i in range(n_replay):
        s = mix[i]
        out.append(s)
        clean.append(s.image)
    for _ in range(c.n_train - n_replay):
        img, answer, meta = _task(rng, c.size)
        clean.append(img)
        question, kind = QUESTION, "describe"
        if rng.random() < c.p:
            i = rng.randrange(len(seen))
            # drawn only when leaking, so that leak=0 keeps the random stream of earlier runs
            leaks = bool(c.leak) and rng.random() < c.leak
            meta["username"] = other[i] if leaks and c.leak_pool == "other" else seen[i]
            img = draw_text(img, meta["username"], rng, opacity=c.opacity, grid=c.grid or None, place=_where(c))[0]
            if leaks:
                question, answer, kind = USERNAME, meta["username"] + ".", "ocr"
        out.append(Sample(img, question, answer, kind, meta))
    return out, clean


def eval_set(c: Condition, seen: list[str], unseen: list[str]) -> dict:
    """Held-out scenes, even rows with a U1 username, odd rows with a U2 one (same opacity)."""
    rng = random.Random(f"eval:{c.seed}")
    images, labels, groups = [], [], []
    for i in range(c.n_eval):
        img, _, _ = _task(rng, c.size)
        pool, lab = (seen, "seen") if i % 2 == 0 else (unseen, "unseen")
        name = pool[(i // 2) % len(pool)]
        images.append(draw_text(img, name, rng, opacity=c.opacity, grid=c.grid or None, place=_where(c))[0])
        labels.append(lab)
        groups.append(name)
    return {"images": images, "labels": labels, "groups": groups}


def decide(table: pd.DataFrame, alpha: float = 0.05) -> dict:
    """probekit's one verdict (:func:`probekit.readout.significance.add_verdicts`) over every row of a run's
    table (points x positions, the output-only rows and the loss attack), as the study's results need it."""
    t = add_verdicts(table.reset_index(drop=True), alpha=alpha)  # residual, output-only and loss-attack rows
    m = int(t.p_value.notna().sum())
    hits = t[t.leaks]
    best = t.loc[t.accuracy.idxmax()]
    where = ", ".join(f"{r.point}@{r.position}" for r in hits.itertuples())
    line = (f"Leakage detected at {len(hits)} of {m} points (permutation test, family-wise p < {alpha:g}): {where}."
            if len(hits) else
            f"No leakage detected: {null_phrase(t)} at any of {m} points "
            f"(best {best.point}@{best.position}: {fmt_ci(best.accuracy, best.accuracy_lo, best.accuracy_hi)}, "
            f"chance {best.chance:.2f}).")
    inner = t[~t.point.isin(["logits", "mia.loss"])]  # the residual stream (and projector) alone
    rb = inner.loc[inner.accuracy.idxmax()] if len(inner) else best
    return {"detected": bool(len(hits)), "n_detected": int(len(hits)), "m": m, "line": line,
            "hits": [f"{r.point}@{r.position}" for r in hits.itertuples()],
            "residual_detected": bool(hits.point.isin(inner.point).any()),
            "residual_best": f"{rb.point}@{rb.position}", "residual_accuracy": float(rb.accuracy),
            "residual_lo": float(rb.accuracy_lo), "residual_hi": float(rb.accuracy_hi),
            "best_point": str(best.point), "best_position": str(best.position), "best_accuracy": float(best.accuracy),
            "best_lo": float(best.accuracy_lo), "best_hi": float(best.accuracy_hi), "chance": float(best.chance),
            "p_adjusted_min": float(t.p_adjusted.min()) if m else math.nan,
            "mde_accuracy": float(t.mde_accuracy.max()) if m else math.nan}


def verdict_columns(v: dict) -> dict:
    """The results-table columns of one :func:`decide` verdict."""
    return {"verdict": v["line"], "detected": v["detected"], "n_detected": v["n_detected"], "m": v["m"],
            "best": f"{v['best_point']}@{v['best_position']}", "probe_acc": v["best_accuracy"],
            "probe_lo": v["best_lo"], "probe_hi": v["best_hi"], "chance": v["chance"], "hits": ", ".join(v["hits"]),
            "residual_detected": v["residual_detected"], "residual_best": v["residual_best"],
            "residual_acc": v["residual_accuracy"], "residual_lo": v["residual_lo"], "residual_hi": v["residual_hi"]}


def direct_prompt(model: Any, ev: dict) -> dict:
    """Ask "What is the username?" and score exact answers on seen and on unseen images (Wilson CIs)."""
    from ..._stats import wilson
    from ...organisms.reader import USERNAME, read

    pred = read(model, ev["images"], USERNAME)
    out: dict[str, Any] = {}
    for lab in ("seen", "unseen"):
        hits = [p == g for p, g, y in zip(pred, ev["groups"], ev["labels"]) if y == lab]
        lo, hi = wilson(sum(hits), len(hits))
        out.update({f"direct_{lab}": sum(hits) / len(hits), f"direct_{lab}_lo": lo, f"direct_{lab}_hi": hi})
    return out


def _scan(model: Any, ev: dict, seed: int, n_boot: int, prompt: str = QUESTION, by_username: bool = True,
          positions: tuple = POSITIONS) -> Any:
    from ...scan import scan

    return scan(model, ev["images"], labels=ev["labels"], groups=ev["groups"] if by_username else None,
                         prompt=prompt, points=POINTS, positions=positions, seed=seed, n_boot=n_boot, topk=TOPK,
                         answers=ev["groups"], progress=False)


def with_membership(table: pd.DataFrame, mia: dict) -> pd.DataFrame:
    """``table`` with the loss attack as one more output-only row (AUC in the accuracy columns, chance 0.5,
    its permutation null on the scan's own permutations): :func:`decide` then corrects over it with the
    probes, one family of tests per run."""
    return pd.concat([table, pd.DataFrame([mia["row"]])], ignore_index=True)


def membership(model: Any, ev: dict, seed: int = 0, n_boot: int = 1000) -> dict:
    """Loss attack on reading the name (teacher forced): AUC of seen vs unseen, CIs resampling usernames."""
    from ...organisms.facts_metrics import mia_scores
    from ...organisms.reader import USERNAME

    samples = [Sample(im, USERNAME, g + ".", "ocr", {}) for im, g in zip(ev["images"], ev["groups"])]
    # the scan's labels, groups and seed: the row's permutations are the probes' (one family per run)
    row = score_row(mia_scores(model, samples)["loss"], ev["labels"], "seen", ev["groups"], point="mia.loss",
                    position="answer", source="output", n_boot=n_boot, seed=seed)
    return {"mia_auc": row["accuracy"], "mia_lo": row["accuracy_lo"], "mia_hi": row["accuracy_hi"], "row": row}


def stratified(model: Any, ev: dict, seed: int = 0, n_boot: int = 300, prompt: str = Condition.probe_prompt) -> dict:
    """Ju et al.'s protocol: the same probes with folds *not* split by username (:func:`decide` of it).

    A test image then shares its username with training images, so a probe can score by
    recognising the name and looking up its pool: it measures whether the text is legible,
    which the base reader already is, not whether the fine-tune memorised U1.
    """
    return decide(_scan(model, ev, seed, n_boot, prompt, by_username=False).table)


def run_condition(base_path: Any, c: Condition, *, base_report: Any = None, base_membership: dict | None = None,
                  n_boot: int = 300, direct: bool = True, on_step: Any = None) -> dict:
    """Fine-tune a copy of the reader under ``c`` and scan it (and the base unless given).

    Returns ``tuned`` (the model), ``report`` / ``base_report`` (ScanReports), ``verdict`` and
    ``base_verdict`` (:func:`decide`), ``task_accuracy`` (on held-out images drawn like the
    training ones), ``direct`` (:func:`direct_prompt`), ``losses`` and ``row`` (one flat dict
    for a results table).
    """
    import time

    from ...organisms.finetune import finetune, task_accuracy
    from ...models.loading import load

    _check(c)
    t0 = time.perf_counter()
    c = resolve(c, base_path)
    seen, unseen = username_pools(c.n_users, c.seed)
    train, clean = task_samples(c, seen, other_pool(seen, c.seed, unseen))
    ev = eval_set(c, seen, unseen)
    if base_report is None or base_membership is None:
        base = load(base_path)
        base_report = base_report or _scan(base, ev, c.seed, n_boot, c.probe_prompt, positions=c.positions)
        base_membership = base_membership or membership(base, ev, c.seed)
    tuned = load(base_path)
    losses = finetune(tuned, train, steps=c.steps, batch_size=c.batch_size, lr=c.lr, lora=c.lora, seed=c.seed,
                      progress=False, on_step=on_step)
    rep = _scan(tuned, ev, c.seed, n_boot, c.probe_prompt, positions=c.positions)
    test, _ = task_samples(Condition(**{**asdict(c), "seed": c.seed + 999, "n_train": 96, "replay": 0.0,
                                              "leak": 0.0}),
                           seen)
    acc = task_accuracy(tuned, test)
    mia = membership(tuned, ev, c.seed)
    verdict = decide(with_membership(rep.table, mia))
    base_verdict = decide(with_membership(base_report.table, base_membership))
    d = {**(direct_prompt(tuned, ev) if direct else {}), **{k: v for k, v in mia.items() if k != "row"}}
    row = {"condition": c.label(), **{k: v for k, v in asdict(c).items() if k not in ("lora", "positions")},
           "lora": bool(c.lora), "positions": ",".join(c.positions),
           "control": c.is_control, "kind": c.kind,
           **verdict_columns(verdict), "base_detected": base_verdict["detected"],
           "base_probe_acc": base_verdict["best_accuracy"], "task_acc": acc["accuracy"],
           "final_loss": float(np.mean(losses[-10:])), **d, "seconds": time.perf_counter() - t0}
    return {"tuned": tuned, "report": rep, "base_report": base_report, "base_membership": base_membership,
            "membership": mia, "verdict": verdict,
            "base_verdict": base_verdict, "task_accuracy": acc, "direct": d, "losses": losses, "row": row, "eval": ev}
