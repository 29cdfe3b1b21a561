"""The sufficient-statistics probes' verdict on null data: does "detected" hold its level?

``stats_table`` (and ``scan(..., readouts=["sufficient"])``) cannot run the permutation test (the points are
never in memory together), so each row's p is read off its accuracy CI and Holm corrects over the rows. This
draws null tables (Gaussian activations, coin-flip labels, independent samples) and counts how often any row
is called detected (family-wise) and how often a row's raw p is below 0.05 (per row); nominal 0.05 for both.

    python benchmarks/calibration_sufficient.py --n 1000 --draws 200
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's probekit, not an installed one


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--points", type=int, default=8)
    ap.add_argument("--draws", type=int, default=200)
    a = ap.parse_args()
    torch.set_num_threads(1)
    from probekit._stats import wilson
    from probekit.readout.sufficient import stats_table

    fw = hits = rows = 0
    t0 = time.perf_counter()
    for i in range(a.draws):
        g = torch.Generator().manual_seed(i)
        acts = {f"p{j}": torch.randn(a.n, a.d, generator=g) for j in range(a.points)}
        labels = list(np.random.default_rng(i).integers(0, 2, a.n))
        t = stats_table(acts, labels, cv=5, seed=i, n_boot=200)
        fw += bool(t.leaks.any())
        hits += int((t.p_value < 0.05).sum())
        rows += len(t)
    lo, hi = wilson(fw, a.draws)
    print(f"n = {a.n}, {a.points} points of d = {a.d}, {a.draws} null draws ({time.perf_counter() - t0:.0f} s): "
          f"family-wise {fw / a.draws:.3f} [{lo:.3f}, {hi:.3f}], per row {hits / rows:.3f} (nominal 0.05)")


if __name__ == "__main__":
    main()
