"""The SAE removers on the watermark leak organism: the code path, and its quick ``--small`` check.

The watermark organism (:mod:`probekit.studies.watermark.organism`) is being reworked elsewhere; this module
runs the SAE removers on whatever :func:`probekit.studies.watermark.organism.run_condition` fine-tunes, the
same way the facts study does:

1. an SAE (:func:`probekit.sae.train_sae`, TopK) on the reader's last residual layer, trained on the
   fine-tune's own training images (asked the fine-tune's questions and the probe's) at the prompt's last
   token and every image token, with its quality on
   the held-out evaluation images (FVU, L0, dead latents; KL and answer loss recovered when spliced in);
2. per remover, :func:`probekit.steering.evaluate` splits the evaluation images by username (half the
   usernames fit, the other half grade: a seeded group split), chooses the latents on the fitting half
   (``sae_steer``: latents firing more on seen-pool (U1) names than unseen ones; ``sae_clamp``: the
   latents that tell the pools apart, ANOVA F) and grades suppression of "seen vs unseen" per layer with
   retrained probes on the other half, next to the KL on clean inputs and the shape task's accuracy.

``run(small=True)`` is ``probekit study watermark --sae --small``: the leak regime (p = 1, half the
watermarked images read their U1 name) at 300 steps, 96 evaluation images, one seed. Settings are fixed
(``beta = -10``, clamp to ``-alpha``), not swept: a check that the path runs, not a result.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pandas as pd

__all__ = ["SMALL", "FULL", "sae_removal", "run"]

SMALL = dict(p=1.0, leak=0.5, steps=300, lr=1e-3, replay=0.5, n_eval=96, n_train=400)
FULL = dict(p=1.0, leak=0.5, steps=1500, lr=1e-3, replay=0.5, n_eval=384)


def sae_removal(tuned: Any, c: Any, ev: dict, *, beta: float = -10.0, clamp: float = 1.0, n_latents: int = 4,
                n_boot: int = 300, epochs: float = 10.0) -> dict:
    """Train the SAE on ``tuned`` (fine-tuned under condition ``c``), evaluate both removers on ``ev``."""
    from ...hooks.collect import collect
    from . import organism as W
    from ...sae import sae_stats, train_sae
    from ...sae.select import select_latents
    from ...sae.stats import encode_store
    from ...steering import evaluate, sae_clamp, sae_steer, splice_quality

    t0 = time.perf_counter()
    point = sorted(tuned.resolve("lm.*.resid"), key=lambda p: int(p.split(".")[1]))[-1]
    seen, unseen = W.username_pools(c.n_users, c.seed)
    train, _ = W.task_samples(c, seen, W.other_pool(seen, c.seed, unseen))
    # the fine-tune's own questions and the probe's question, on the training images
    store = collect(tuned, [s.image for s in train] * 2, [s.question for s in train] + [c.probe_prompt] * len(train),
                             points=point, positions=("prompt_last", "image"), batch_size=32, progress=False)
    sae = train_sae(store, point, None, architecture="topk", expansion=8, k=16, epochs=epochs, seed=c.seed)
    sae.position = "prompt_last"
    held = collect(tuned, ev["images"], c.probe_prompt, points=point, positions="prompt_last",
                            batch_size=32, progress=False)
    st = {k: v for k, v in sae_stats(sae, held).items() if k not in ("fire_rate", "mean_act")}
    test, _ = W.task_samples(replace(c, seed=c.seed + 999, n_train=64, replay=0.0, leak=0.0), seen)
    sq = splice_quality(tuned, sae, ev["images"], c.probe_prompt, task_samples=test, positions=None, n_boot=n_boot)
    out: dict = {"sae": {"point": point, "train_rows": sae.meta["train"]["rows"],
                         "train_seconds": sae.meta["train"]["seconds"], **st, **sq}, "reports": {}, "latents": {}}

    def fitter(method):
        def fit(images, labels):
            acts = collect(tuned, list(images), c.probe_prompt, points=point, positions="prompt_last",
                                    batch_size=32, progress=False)
            z = encode_store(sae, acts, point, None)
            sel = select_latents(z, list(labels), m=n_latents, method="diff" if method == "sae_steer" else "anova",
                                 positive="seen" if method == "sae_steer" else None)
            out["latents"][method] = sel
            return sel
        return fit

    makers = {"sae_steer": lambda sel: sae_steer(tuned, sae, sel, beta=beta),
              "sae_clamp": lambda sel: sae_clamp(tuned, sae, sel, value=[-clamp * a for a in sel.alpha])}
    for method, make in makers.items():
        out["reports"][method] = evaluate(tuned, make, ev["images"], ev["labels"], fit=fitter(method),
                                          prompts=c.probe_prompt, groups=ev["groups"], points="lm.*.resid",
                                          positions="prompt_last", task_samples=test, cv=3, seed=c.seed, n_boot=n_boot)
    out["seconds"] = time.perf_counter() - t0
    return out


def _lines(res: dict) -> list[str]:
    s = res["sae"]
    L = [f"SAE on {s['point']} ({s['train_rows']} training rows, {s['train_seconds']:.1f} s): held-out FVU {s['fvu']:.3f}, "
         f"L0 {s['l0']:.1f}, dead {s['dead']}; spliced in: KL {s['kl_sae']:.3f} nats (zero ablation {s['kl_zero']:.2f}), "
         f"loss recovered {s.get('loss_recovered', float('nan')):.3f}"]
    for method, rep in res["reports"].items():
        sup, cost = rep.suppression, rep.cost
        worst = sup.loc[sup.abs_excess_after.idxmax()]
        L.append(f"{method} (latents {res['latents'][method].latents}): seen-vs-unseen probe at {worst.point} "
                 f"{worst.accuracy_before:.2f} -> {worst.accuracy_after:.2f} (chance {worst.chance:.2f}; held-out "
                 f"usernames, {rep.data['n_eval']} images), KL {cost['kl_mean']:.3f} nats, shape task "
                 f"{cost.get('task_accuracy_before', float('nan')):.2f} -> {cost.get('task_accuracy_after', float('nan')):.2f}")
    return L


def run(small: bool = True, base_path: Any = None, verbose: bool = True) -> dict:
    """Fine-tune the leak organism (:data:`SMALL` or :data:`FULL`), then :func:`sae_removal`; returns the
    results with ``lines`` (one per SAE and remover) and ``table`` (the removers' evaluate() tables)."""
    import torch

    from ...organisms.finetune import finetune
    from ...models.loading import load
    from . import organism as W
    from ...organisms.reader import reader

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        base = base_path or reader()
        c = W.resolve(W.Condition(**(SMALL if small else FULL)), base)
        seen, unseen = W.username_pools(c.n_users, c.seed)
        train, _ = W.task_samples(c, seen, W.other_pool(seen, c.seed, unseen))
        tuned = load(base)
        finetune(tuned, train, steps=c.steps, batch_size=c.batch_size, lr=c.lr, seed=c.seed, progress=False)
        res = sae_removal(tuned, c, W.eval_set(c, seen, unseen), n_boot=200 if small else 1000,
                          epochs=10.0 if small else 20.0)
    finally:
        torch.set_num_threads(threads)
    res["condition"] = c.label()
    res["lines"] = _lines(res)
    res["table"] = pd.concat([r.table.assign(method=m) for m, r in res["reports"].items()], ignore_index=True)
    res["seconds"] = time.perf_counter() - t0
    if verbose:
        print(f"watermark leak organism ({c.label()}):", *res["lines"], f"{res['seconds']:.0f} s", sep="\n  ")
    return res
