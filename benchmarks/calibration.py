"""Null calibration of the verdict in the designs it is used in: family-wise and per-row false-positive rates.

Run on any probekit tree (``PYTHONPATH=<tree> python benchmarks/calibration.py``) to compare procedures on
the same draws: null data of each design (nothing carries the label), the table's own ``leaks`` column.
Prints one line per design; docs/concepts.md records the figures before and after the permutation verdict.
"""

from __future__ import annotations

import argparse
import inspect
import tempfile
import time

import numpy as np
import torch

import probekit
from probekit.readout import probe_layers
from probekit.readout.leakage import leakage


def _kw() -> dict:
    """n_perm where the tree has it (the permutation verdict), else nothing (the earlier tests)."""
    from probekit.readout.options import ReadoutOptions

    return {"n_perm": 200} if "n_perm" in inspect.signature(ReadoutOptions).parameters else {}


def grouped(draws: int, n_groups: int, per_group: int, points: int = 8, width: int = 16, within: float = 2.0):
    rng = np.random.default_rng(n_groups)
    for draw in range(draws):
        groups = np.repeat(np.arange(n_groups), per_group)
        labels = np.repeat(rng.permutation(np.arange(n_groups) % 2), per_group)
        acts = {f"lm.{p}.resid": torch.from_numpy(((rng.normal(size=(n_groups, width)) * within)[groups]
                                                   + rng.normal(size=(len(groups), width))).astype(np.float32))
                for p in range(points)}
        yield probe_layers(acts, labels, groups, n_boot=0, progress=False, seed=draw, **_kw())


def small(draws: int, n: int = 40, width: int = 64, points: int = 6):
    rng = np.random.default_rng(n)
    for draw in range(draws):
        labels = rng.permutation(np.arange(n) % 2)
        acts = {f"lm.{p}.resid": torch.from_numpy(rng.normal(size=(n, width)).astype(np.float32)) for p in range(points)}
        yield probe_layers(acts, labels, n_boot=0, progress=False, seed=draw, **_kw())


def readme(draws: int):
    model = probekit.load(probekit.tiny.build("llava", tempfile.mkdtemp() + "/m"))
    images = [im for s in range(draws) for im in probekit.tiny.fixture_images(40, 32, seed=s)]
    store = probekit.collect(model, images, "What is the username?", points=["lm.*.resid", "logits"],
                             positions=("last", "image_mean"), logits_topk=10, batch_size=64, progress=False)
    labels = ["a" if i % 2 else "b" for i in range(40)]
    for s in range(draws):
        rows = slice(40 * s, 40 * (s + 1))
        part = probekit.ActivationStore({p: store[p][rows] for p in store.points}, meta=store.meta,
                                        point_info={p: store.info(p) for p in store.points})
        yield leakage(part, labels, n_boot=0, progress=False, seed=s, **_kw())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--draws", type=int, default=200)
    args = ap.parse_args()
    designs = {"24 groups x 16, 8 points": lambda d: grouped(d, 24, 16),
               "100 groups x 4, 8 points": lambda d: grouped(d, 100, 4),
               "n = 40 at width 64, 6 points": small,
               "README example (40 noise images, tiny LLaVA, 6 rows)": readme}
    for name, make in designs.items():
        t0 = time.perf_counter()
        tables = list(make(args.draws))
        fam = np.mean([bool(t.leaks.any()) for t in tables])
        row = np.mean([float((t.p_value < 0.05).mean()) for t in tables])
        print(f"{name}: family-wise {fam:.3f}, per row (uncorrected p < 0.05) {row:.3f} over {args.draws} draws "
              f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
