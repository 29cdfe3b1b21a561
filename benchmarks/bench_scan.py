"""Scan end to end on CPU (images/s for the demo model) and where the time goes; disk store read/write GB/s.

    python benchmarks/bench_scan.py [--n 256]

1. ``probekit.scan`` of the demo's tiny LLaVA (96x96 images, patch 12) with labels, timed, then
   profiled with cProfile; time is summed by stage (collect / forward, probes, lens, report).
2. Disk store throughput: write a store of synthetic activations shard by shard and read it back
   (cold page cache is not forced; the figure is what a second pass over a fresh store sees).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import probekit  # noqa: E402
from probekit.hooks.store import ActivationStore, StoreWriter  # noqa: E402
from probekit.models import tiny  # noqa: E402

STAGES = {  # stage -> (file, function) whose cumulative time it is
    "image decode + processor": ("probekit/models/adapter.py", "prepare"),
    "forward with hooks": ("probekit/hooks/backends/__init__.py", "run_backend"),
    "probes + MI (leakage table)": ("probekit/readout/leakage.py", "leakage"),
    "input checks": ("probekit/data/sources.py", "resolve_images"),
}


def scan_bench(n: int) -> None:
    path = tiny.build("llava", Path(tempfile.mkdtemp()) / "m", seed=0, image_size=96, patch_size=12)
    model = probekit.load(path)
    images = tiny.fixture_images(n, 96, seed=1)
    labels = [i % 2 for i in range(n)]
    kw = dict(labels=labels, prompts="What is the username?", points=["projector", "lm.*.resid"], n_boot=500,
              progress=False)
    probekit.scan(model, images[:16], **{**kw, "labels": labels[:16], "cv": 2})  # warm-up
    t0 = time.perf_counter()
    probekit.scan(model, images, **kw)
    dt = time.perf_counter() - t0
    print(f"## scan: {n} images in {dt:.2f} s = {n / dt:.0f} images/s "
          f"({sum(p.numel() for p in model.hf.parameters()) / 1e6:.2f}M params, 2 positions, 4 points + logits)")
    prof = cProfile.Profile()
    prof.enable()
    probekit.scan(model, images, **kw)
    prof.disable()
    stats = pstats.Stats(prof)
    cum = {}
    for (file, _, fn), v in stats.stats.items():
        for stage, (f, name) in STAGES.items():
            if file.endswith(f) and fn == name:
                cum[stage] = cum.get(stage, 0.0) + v[3]
        if file.endswith("probekit/scan.py") and fn == "scan":
            total = v[3]
    for k, v in sorted(cum.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<30}{v:>7.2f} s  {100 * v / total:5.1f}%")
    print(f"  {'rest (report, lens, glue)':<30}{total - sum(cum.values()):>7.2f} s")
    print("  top functions by own time:")
    stats.sort_stats("tottime").print_stats(8)


def store_bench(n: int = 20000, d: int = 1024, points: int = 8, shard: int = 2048) -> None:
    root = Path(tempfile.mkdtemp()) / "store"
    info = {f"lm.{i}.resid": {"shape": [d], "dtype": "float32", "positions": ["last"]} for i in range(points)}
    w = StoreWriter(root, {"fingerprint": "bench"}, n, shard, fingerprint="bench")
    gen = torch.Generator().manual_seed(0)
    chunks = [{p: torch.randn(min(shard, n - s), d, generator=gen) for p in info} for s in range(0, n, shard)]
    nbytes = n * d * 4 * points
    t0 = time.perf_counter()
    for i, s in enumerate(range(0, n, shard)):
        w.write_shard(s, min(s + shard, n), chunks[i], info)
    store = w.finish()
    tw = time.perf_counter() - t0
    t0 = time.perf_counter()
    total = sum(float(store[p][:, 0].sum()) for p in store.points)
    tr = time.perf_counter() - t0
    again = ActivationStore.open(root)
    assert abs(total - sum(float(again[p][:, 0].sum()) for p in again.points)) < 1e-3
    print(f"## disk store: {nbytes / 1e9:.2f} GB ({points} points x {n} x {d} float32, shards of {shard})")
    print(f"  write {nbytes / 1e9 / tw:.2f} GB/s ({tw:.2f} s, fsync'd index after every shard)")
    print(f"  read  {nbytes / 1e9 / tr:.2f} GB/s ({tr:.2f} s, store[point] over all shards)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    args = ap.parse_args()
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    scan_bench(args.n)
    store_bench()


if __name__ == "__main__":
    main()
