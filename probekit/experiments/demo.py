"""The demo: plant text watermarks during fine-tuning, then ask each layer whether it knows.

1. Build a tiny LLaVA-style checkpoint offline (96x96 images) and keep an untouched copy.
2. Fine-tune it on the synthetic shapes/colours/counts task; half of the training images carry
   a task-irrelevant username watermark from pool U1 ("seen").
3. On held-out images watermarked with U1 (seen) or U2 (never seen) usernames, scan both models:
   per layer, can a linear probe tell seen from unseen? Folds split by username, so a probe must
   generalise to usernames it was not trained on.
4. Write ``report.html`` (base vs fine-tuned, with the difference and its CI) and print the
   verdicts (leakage in each model and in the difference, corrected for every point tested),
   then three lines of numbers.

Every number comes from this run.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

from ..data.synthetic import make_task
from ..data.watermark import make_profiles, render
from ..models import tiny
from ..models.loading import load
from .finetune import finetune, task_accuracy

__all__ = ["DemoConfig", "run_demo", "print_summary"]


@dataclass
class DemoConfig:
    out: str = "probekit-demo"
    seed: int = 0
    image_size: int = 96
    n_train: int = 2000
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    p_watermark: float = 0.5
    n_profiles: int = 8
    n_eval: int = 240
    prompt: str = "What is the username?"
    progress: bool = True


def _eval_set(cfg: DemoConfig, seen: list, unseen: list) -> tuple[list, list[str], list[int]]:
    rng = random.Random(cfg.seed + 1)
    samples = make_task(cfg.n_eval, size=cfg.image_size, seed=cfg.seed + 1000)
    images, labels, groups = [], [], []
    for i, s in enumerate(samples):
        pool, name = (seen, "seen") if i % 2 == 0 else (unseen, "unseen")
        prof = pool[(i // 2) % len(pool)]
        images.append(render(s.image, prof, rng, mode="username"))
        labels.append(name)
        groups.append(prof.pid)
    return images, labels, groups


def run_demo(cfg: DemoConfig | None = None) -> dict:
    """Run the demo end to end; returns the paths and headline numbers."""
    import probekit

    cfg = cfg or DemoConfig()
    t0 = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "tiny-llava"
    if not (ckpt / "config.json").exists():
        tiny.build("llava", ckpt, seed=cfg.seed, image_size=cfg.image_size, patch_size=12, overwrite=True)
    base = load(ckpt)
    tuned = load(ckpt)

    seen, unseen = make_profiles(cfg.n_profiles, pool=0, seed=cfg.seed), make_profiles(cfg.n_profiles, pool=1, seed=cfg.seed)
    rng = random.Random(cfg.seed)
    train = make_task(cfg.n_train, size=cfg.image_size, seed=cfg.seed)
    for s in train:
        if rng.random() < cfg.p_watermark:
            prof = seen[rng.randrange(len(seen))]
            s.image = render(s.image, prof, rng, mode="username")
            s.meta["watermark"] = prof.pid
    test = make_task(200, size=cfg.image_size, seed=cfg.seed + 2000)
    finetune(tuned, train, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, progress=cfg.progress)
    acc_base, acc_tuned = task_accuracy(base, test), task_accuracy(tuned, test)

    images, labels, groups = _eval_set(cfg, seen, unseen)
    kw = dict(labels=labels, groups=groups, prompts=cfg.prompt, points=["projector", "lm.*.resid"],
              positions=("last", "image_mean"), seed=cfg.seed, n_boot=500, progress=cfg.progress)
    r_base = probekit.scan(base, images, **kw)
    r_tuned = probekit.scan(tuned, images, **kw)
    for r, acc in ((r_base, acc_base), (r_tuned, acc_tuned)):
        r.data["task_accuracy"] = acc
    comparison = probekit.compare(r_base, r_tuned)
    report = out / "report.html"
    comparison.save(report)
    r_base.save(out / "base.html")
    r_tuned.save(out / "tuned.html")

    resid = r_tuned.table[r_tuned.table.source == "residual"]
    best = resid.loc[resid.accuracy.idxmax()]
    same = r_base.table[(r_base.table.point == best.point) & (r_base.table.position == best.position)
                        & (r_base.table.source == "residual")].iloc[0]
    logits = r_tuned.table[r_tuned.table.source == "logits-topk"]
    out_best = logits.accuracy.max() if len(logits) else float("nan")
    return {
        "report": str(report), "seconds": time.perf_counter() - t0,
        "task_accuracy": (acc_base["accuracy"], acc_tuned["accuracy"]),
        "best": best.to_dict(), "base_same_point": same.to_dict(), "logits_best": out_best,
        "verdicts": comparison.verdicts(),
    }


def print_summary(res: dict) -> None:
    from ..verdict import mi_headline

    b, s = res["best"], res["base_same_point"]
    for line in res["verdicts"]:
        print(line)
    print(f"Report: {res['report']}  ({res['seconds']:.0f} s; task accuracy base {res['task_accuracy'][0]:.2f} "
          f"-> fine-tuned {res['task_accuracy'][1]:.2f})")
    print(f"Seen vs unseen watermark: fine-tuned model's highest probe accuracy is at {b['point']} @ {b['position']}: "
          f"{b['accuracy']:.2f} [{b['accuracy_lo']:.2f}, {b['accuracy_hi']:.2f}], MI {mi_headline(b)} bits "
          f"(chance {b['chance']:.2f}); untouched copy there: {s['accuracy']:.2f} [{s['accuracy_lo']:.2f}, {s['accuracy_hi']:.2f}].")
    print(f"From the output logits alone (top-k): best accuracy {res['logits_best']:.2f}; "
          "open the report for every layer, the CIs and the base-vs-tuned difference.")
