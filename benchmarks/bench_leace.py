"""LEACE through concept-erasure's LeaceFitter against the closed form probekit derived before.

For planted concepts (correlated Gaussian features, class-dependent mean shifts, float32 like
a store holds), fit ``probekit.steering.fit.leace_fit`` (LeaceFitter, row chunks streamed to
float64) and the previous closed form (``steering/directions.py:leace_fit`` before issue 13,
copied below; it needs the whole matrix in float64 first) on the same rows; print the rank
each finds, the largest difference of the erased activations, and the best-of-``--rounds``
fit times (the float64 copy counted for the closed form, as ``Direction.leace`` made it).

Usage: ``python benchmarks/bench_leace.py [--rounds 3] [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from probekit.steering import fit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from leace_reference import closed_form  # noqa: E402  (the previous closed form, shared with the tests)


def planted(n: int, d: int, K: int, P: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    A = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
    mu = torch.randn(K, P, d, generator=g, dtype=torch.float64)
    x = torch.randn(n, P, d, generator=g, dtype=torch.float64) @ A + 0.5 * mu[y]
    return x.float(), y


def best(f, rounds: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(rounds):
        t = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)  # a shared CPU: one thread keeps the comparison fair
    cases = [(4000, 64, 2, 1), (4000, 256, 4, 2)] + ([] if args.quick else [(3000, 1024, 2, 1), (20000, 512, 2, 2)])
    print("| n | d | classes | positions | rank (old / new) | max abs diff of erased x | max |x| "
          "| closed form (ms) | LeaceFitter (ms) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, d, K, P in cases:
        x, y = planted(n, d, K, P)
        X32, c, g = fit.rows(x if P > 1 else x[:, 0], y.numpy())
        Z = fit.concept(c, K, g)
        t_old, (old, r_old) = best(lambda: closed_form(X32.double(), Z), args.rounds)
        t_new, new = best(lambda: fit.leace_fit(X32, Z), args.rounds)
        X64 = X32.double()
        diff = float((old(X64) - new(X64)).abs().max())
        print(f"| {n} | {d} | {K} | {P} | {r_old} / {new.left.shape[1]} | {diff:.1e} | {float(X64.abs().max()):.1f} "
              f"| {t_old * 1e3:.0f} | {t_new * 1e3:.0f} |")


if __name__ == "__main__":
    main()
