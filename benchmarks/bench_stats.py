"""Benchmark: where probes from sufficient statistics beat loading every point.

A disk store of ``--points`` points x n samples x d (float32, shards of 4,096 rows, binary labels with
a planted signal) is probed, in a fresh process per measurement, two ways:

- ``load``: :func:`~probekit.readout.probes.probe_layers` with its defaults (logistic probes; real
  labels, control task, permuted labels; bootstrap CIs; the verdict's permutation test), which reads
  each point whole (the readout table's chunks, up to ``memory_limit``) and fits it in memory;
- ``stats``: :func:`~probekit.readout.sufficient.stats_table` (shrinkage LDA per fold from sums read
  shard by shard; the same tasks and bootstrap, no permutation test), whose memory is one shard plus
  ``cv x d x d`` float64 per point.

For each n: wall seconds, CPU seconds and the peak RSS of the process (``VmHWM``; no model is
loaded, so what grows is the probing step; the RSS after the imports and ``open`` is printed with it),
median and [min, max] over ``--rounds``, the two ways alternating. One torch thread. On a loaded
machine compare CPU seconds: wall time then mostly measures the wait for a core.

    python benchmarks/bench_stats.py                          # d = 1,024; n = 2,000 .. 32,000
    python benchmarks/bench_stats.py --d 4096 --sizes 4000,16000 --points 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    """Peak RSS of this process in MB: ``VmHWM``, not ``getrusage``'s ``ru_maxrss``, which Linux carries
    over ``execve`` from the parent (the parent that built the store would set every worker's floor)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_store(directory: Path, points: int, n: int, d: int, seed: int = 0) -> None:
    import numpy as np
    import torch

    from probekit.hooks import ActivationStore

    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    acts = {}
    for p in range(points):
        u = torch.randn(d, generator=g)
        u /= u.norm()
        base = torch.randn(n, 32, generator=g) @ (0.5 * torch.randn(32, d, generator=g))
        x = (torch.randn(n, d, generator=g) + base) * torch.exp(0.7 * torch.randn(d, generator=g))
        acts[f"lm.{p}.resid"] = x + (2 * y - 1).float()[:, None] * 0.3 * u + 20.0
    ActivationStore(acts).save(directory, shard_size=4096)
    np.save(directory / "labels.npy", y.numpy())


def worker(kind: str, directory: str) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from probekit.hooks import ActivationStore
    from probekit.readout import probe_layers, stats_table

    store = ActivationStore.open(directory)
    y = np.load(Path(directory) / "labels.npy")
    base = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    t0, c0 = time.perf_counter(), time.process_time()
    if kind == "load":
        table = probe_layers(store, y, progress=False)
    else:
        table = stats_table(store, y)
    out = {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0, "rss": _rss_mb(), "base": base,
           "accuracy": [round(float(a), 4) for a in table.accuracy]}
    print(json.dumps(out))


def _run(kind: str, directory: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, __file__, "--worker", kind, str(directory)], capture_output=True, text=True,
                       env=env, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def _spread(v: list[float], fmt: str = ".2f") -> str:
    return f"{statistics.median(v):{fmt}} [{min(v):{fmt}}, {max(v):{fmt}}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2000,8000,32000")
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--points", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(*args.worker)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load {os.getloadavg()[0]:.1f}; "
          f"{args.points} points x d={args.d}, shards of 4,096 rows, one torch thread")
    print("| n | way | wall s | CPU s | peak RSS, MB (RSS after imports) | accuracy |")
    print("|---|---|---|---|---|---|")
    tmp = Path(tempfile.mkdtemp(prefix="bench_stats_"))
    try:
        for n in [int(s) for s in args.sizes.split(",")]:
            directory = tmp / f"n{n}"
            make_store(directory, args.points, n, args.d)
            res: dict[str, list[dict]] = {"load": [], "stats": []}
            loads = []
            for _ in range(args.rounds):
                loads.append(os.getloadavg()[0])
                for kind in res:
                    res[kind].append(_run(kind, directory))
            for kind, rs in res.items():
                print(f"| {n:,} | {kind} | {_spread([r['wall'] for r in rs])} | {_spread([r['cpu'] for r in rs])} "
                      f"| {_spread([r['rss'] for r in rs], '.0f')} ({rs[0]['base']:.0f}) | {rs[0]['accuracy']} |", flush=True)
            print(f"|   | (load {min(loads):.1f}-{max(loads):.1f}) | | | | |", flush=True)
            shutil.rmtree(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
