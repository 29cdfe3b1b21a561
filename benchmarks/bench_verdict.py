"""Benchmark: what the verdict's permutation test adds to the probing step.

The probing step of a scan (``probe_layers`` with its defaults: control task, permuted-label floor, 1,000
bootstrap resamples, and the permutation test with ``n_perm`` permutations) on a synthetic store of 16
points x d = 1,024 (the store of ``bench_probes.py``), at n = 2,000 and 8,000. The permutation statistic is
also timed alone on the same data; the share it adds is its time over the rest of the step, measured in the
same run. Timings are medians of ``--rounds`` rounds, with the min-max spread.

    python benchmarks/bench_verdict.py              # n = 2,000 and 8,000, 1,000 permutations
    python benchmarks/bench_verdict.py --quick      # n = 2,000 only
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_probes.py: contended cores and OpenMP spinning

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_probes import make_store  # noqa: E402

from probekit.readout._data import encode_labels  # noqa: E402
from probekit.readout.permutation import PermutationDesign, permutation_statistic  # noqa: E402
from probekit.readout.probes import probe_layers  # noqa: E402


def _time(fn, rounds: int) -> tuple[float, float, float]:
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), min(ts), max(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--perms", type=int, default=1000)
    ap.add_argument("--points", type=int, default=16)
    ap.add_argument("--width", type=int, default=1024)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.points} points x d = {args.width}, "
          f"{args.perms} permutations; median [min, max] of {args.rounds} rounds")
    for n in ((2000,) if args.quick else (2000, 8000)):
        acts, y = make_store(args.points, n, args.width)
        X = torch.stack(list(acts.values()))
        design = PermutationDesign.make(encode_labels(y)[0], None, 2, 5, args.perms, 0)
        step = _time(lambda: probe_layers(acts, y, n_perm=args.perms, progress=False), args.rounds)
        stat = _time(lambda: permutation_statistic(X, design, 128, 0), args.rounds)
        rest = step[0] - stat[0]
        print(f"n = {n:,}: probing step {step[0]:.2f} s [{step[1]:.2f}, {step[2]:.2f}], of which the permutation "
              f"statistic {stat[0]:.2f} s [{stat[1]:.2f}, {stat[2]:.2f}]: +{100 * stat[0] / rest:.0f}% over the rest "
              f"of the step ({rest:.2f} s)")


if __name__ == "__main__":
    main()
