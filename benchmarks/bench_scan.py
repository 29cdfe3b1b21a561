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
import json
import os
import pstats
import shutil
import statistics
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


def _write(root: Path, chunks: list, info: dict, n: int, shard: int) -> float:
    t0 = time.perf_counter()
    w = StoreWriter(root, {"fingerprint": "bench"}, n, shard, fingerprint="bench")
    for i, s in enumerate(range(0, n, shard)):
        w.write_shard(s, min(s + shard, n), chunks[i], info)
    w.finish()
    w.close()
    return time.perf_counter() - t0


def _read(root: Path, check: bool) -> tuple[float, float]:
    t0 = time.perf_counter()
    store = ActivationStore.open(root, check_reads=check)
    total = sum(float(store[p][:, 0].sum()) for p in store.points)
    return time.perf_counter() - t0, total


def _read_raw(root: Path) -> tuple[float, float]:
    """The same reads straight from safetensors, no probekit checks: the floor."""
    from safetensors import safe_open

    t0 = time.perf_counter()
    index = json.loads((root / "index.json").read_text())
    total = 0.0
    for p in index["points"]:
        parts = []
        for sh in index["shards"]:
            with safe_open(str(root / sh["file"]), framework="pt") as f:
                parts.append(f.get_tensor(p))
        total += float(torch.cat(parts)[:, 0].sum())
    return time.perf_counter() - t0, total


def store_bench(n: int = 20000, d: int = 1024, points: int = 8, shard: int = 2048, rounds: int = 6) -> None:
    """Write and read GB/s with the content hashes on and off, interleaved rounds, medians.

    "Off" writes with the hash replaced by a constant and reads with ``check_reads=False``;
    shape, dtype, rows and the index schema are checked either way.
    """
    import probekit.hooks.store as store_mod

    root = Path(tempfile.mkdtemp())
    info = {f"lm.{i}.resid": {"shape": [d], "dtype": "float32", "positions": ["last"]} for i in range(points)}
    gen = torch.Generator().manual_seed(0)
    chunks = [{p: torch.randn(min(shard, n - s), d, generator=gen) for p in info} for s in range(0, n, shard)]
    nbytes = n * d * 4 * points
    real_hash = store_mod.tensor_hash
    times: dict[str, list[float]] = {"write, hashes on": [], "write, hashes off": [],
                                     "read, checks on": [], "read, checks off": [], "read, raw safetensors": []}
    totals = set()
    for r in range(rounds):
        for hashes in ((False, True) if r % 2 == 0 else (True, False)):  # alternate: neither always goes first
            where = root / ("on" if hashes else "off")
            shutil.rmtree(where, ignore_errors=True)
            os.sync()  # the previous store's dirty pages are not charged to this write
            store_mod.tensor_hash = real_hash if hashes else (lambda t: "")
            try:
                times[f"write, hashes {'on' if hashes else 'off'}"].append(_write(where, chunks, info, n, shard))
            finally:
                store_mod.tensor_hash = real_hash
        os.sync()
        for check in ((True, False) if r % 2 == 0 else (False, True)):
            t, total = _read(root / "on", check)
            times[f"read, checks {'on' if check else 'off'}"].append(t)
            totals.add(round(total, 3))
        t, total = _read_raw(root / "on")
        times["read, raw safetensors"].append(t)
        totals.add(round(total, 3))
    assert len(totals) == 1  # both reads return the same numbers
    shutil.rmtree(root, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"## disk store: {nbytes / 1e9:.2f} GB ({points} points x {n} x {d} float32, shards of {shard}), "
          f"median of {rounds} interleaved rounds")
    for k, v in med.items():
        print(f"  {k:<24}{nbytes / 1e9 / v:6.2f} GB/s ({v:.2f} s)")
    t0 = time.perf_counter()
    for c in chunks:
        for t in c.values():
            store_mod.tensor_hash(t)
    th = time.perf_counter() - t0
    print(f"  {'xxh3-128 hash alone':<24}{nbytes / 1e9 / th:6.2f} GB/s ({th:.2f} s, one core, data in memory)")
    print(f"  read cost of checking hashes: {100 * (med['read, checks on'] / med['read, checks off'] - 1):+.1f}% "
          f"(target <= +20%); write: {100 * (med['write, hashes on'] / med['write, hashes off'] - 1):+.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--store-only", action="store_true", help="only the disk store figures")
    args = ap.parse_args()
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    if not args.store_only:
        scan_bench(args.n)
    store_bench()


if __name__ == "__main__":
    main()
