"""Data-parallel collect: images/s of 1 vs 2 (or more) torchrun processes into one disk store.

Each process runs one intra-op thread, so P processes use P cores; the figure is the collect
call on rank 0 (from the first collective, which all ranks reach together, to the merged
index), model load and process start excluded, plus the whole launch for reference.

Usage: ``python benchmarks/bench_distributed.py [--n 192] [--procs 1 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def worker(model_dir: str, store: str, n: int) -> None:
    import torch

    torch.set_num_threads(1)
    import probekit
    from probekit import tiny

    model = probekit.load(model_dir)
    images = tiny.fixture_images(n, 64, seed=0)
    t0 = time.perf_counter()
    probekit.collect(model, images, "What is in the image?", points="lm.*.resid", positions=("last", "image_mean"),
                     batch_size=8, shard_size=16, store=store, progress=False)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=192)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--worker", nargs=3, metavar=("MODEL", "STORE", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker[0], args.worker[1], int(args.worker[2]))
    from probekit import tiny

    root = Path(tempfile.mkdtemp())
    model_dir = str(tiny.build("llava", root / "llava22m", seed=0, **tiny.LLAVA_22M))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    rows = {}
    for p in args.procs:
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={p}",
                              __file__, "--worker", model_dir, str(root / f"store{p}"), str(args.n)],
                             capture_output=True, text=True, env=env, check=True).stdout
        wall = time.perf_counter() - t0
        sec = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])["seconds"]
        rows[p] = (sec, wall)
    a = (root / f"store{args.procs[0]}" / "index.json").read_text()
    same = all(json.loads((root / f"store{p}" / "index.json").read_text())["shards"] == json.loads(a)["shards"]
               for p in args.procs)
    print(f"# tiny LLaVA 22M, {args.n} images 64x64, batch 8, shards of 16, one thread per process, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'processes':>10}{'collect s':>11}{'img/s':>8}{'launch s':>10}{'speed-up':>10}")
    for p, (sec, wall) in rows.items():
        print(f"{p:>10}{sec:>11.2f}{args.n / sec:>8.1f}{wall:>10.1f}{rows[args.procs[0]][0] / sec:>10.2f}")
    print(f"stores identical (shard list with hashes): {same}")


if __name__ == "__main__":
    main()
