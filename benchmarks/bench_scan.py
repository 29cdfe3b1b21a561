"""Scan end to end on CPU: images/s and peak RSS, this checkout against a baseline, side by side.

    python benchmarks/bench_scan.py [--n 256] [--rounds 3] [--baseline main | --baseline-src DIR] [--midsize [--image-size 224]]
                                    [--collect-n 4000] [--disk-n 2000,5000,20000] [--skip-scan]
                                    [--profile] [--store | --store-only]

``--midsize``: the 189M LLaVA-shaped model of ``_midsize.py`` (vocabulary 32,000) instead of the demo model,
so that the ratios are measured where the forward, not Python, dominates. Peak RSS and the memory of a
disk scan against n on that model: ``bench_scan_memory.py``.

1. ``probekit.scan`` of the demo's tiny LLaVA (96x96 images, patch 12) with labels, on ``--n``
   images given as PIL images in memory, as 96x96 PNG files and as 640x480 JPEG files (a camera
   image the processor shrinks); ``projector`` + ``lm.*.resid`` (+ the ``logits`` the output
   probes read) at ``last`` and ``image_mean``.
2. ``collect`` into memory of ``--collect-n`` PNG files, every ``lm.*.resid`` and the logits:
   peak RSS against the bytes it stores (the copies of the activations on their way to the store).
3. A disk scan (``store=DIR``) of the same model on PNG files, one point (``lm.1.resid``), with the
   output probes (``topk=10``: since issue 13 ``scan`` records only the top 10 log-probabilities and
   token ids per position, ``collect(logits_topk=10)``; a baseline before that records and reads the
   full-vocabulary ``logits`` point) and without (``topk=None``), at each ``--disk-n``: images/s and
   peak RSS, to show whether memory is flat in n.
4. ``--profile``: cProfile of one in-memory scan of this checkout, time by stage.
5. ``--store`` (``--store-only``: nothing else): disk store write/read GB/s with the content hashes
   on and off, interleaved rounds, medians.

Every measurement runs in a fresh process (peak RSS is ``getrusage(RUSAGE_SELF).ru_maxrss`` of that
process: model, imports and all), one torch thread, the baseline and this checkout alternating
round by round so that the load of a shared machine hits both alike; the tables print medians and
CPU milliseconds per image (less sensitive to that load than wall time). The baseline is ``git
archive BASELINE probekit`` unpacked into a temporary directory (or ``--baseline-src``, an unpacked
checkout) and put first on ``PYTHONPATH``, as this checkout is for its own runs.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
STAGES = {  # stage -> (file, function) whose cumulative time it is
    "image decode + processor": ("probekit/models/adapter.py", "prepare"),
    "forward with hooks": ("probekit/hooks/backends/__init__.py", "run_backend"),
    "probes + MI (leakage table)": ("probekit/readout/leakage.py", "leakage"),
    "input checks": ("probekit/data/sources.py", "resolve_images"),
    "image hashes (meta image_hashes)": ("probekit/data/images.py", "pixel_hash"),
}
NESTED = {  # parts of the forward, shown on their own (not counted twice in the rest)
    "  of which the unembedding (logits)": [("torch/nn/modules/linear.py", "forward")],  # hooked calls only
    # since issue 28 the head runs on the kept rows only, outside the module (hooks/backends: deferred_head)
    "  of which the head at the kept rows (deferred)": [("probekit/hooks/backends/__init__.py", "head")],
    "  of which masked mean over the image tokens": [("probekit/hooks/reductions.py", "masked_mean"),
                                                     ("probekit/hooks/positions.py", "_masked_mean")],  # before
}
SCAN_KW = dict(prompts="What is the username?", points=["projector", "lm.*.resid"], n_boot=500, progress=False)


# ----------------------------------------------------------------------------- workers (fresh processes)

def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _worker_scan(model_dir: str, n: int, files: str | None) -> dict:
    import probekit
    from probekit import tiny

    model = probekit.load(model_dir)
    images = tiny.fixture_images(n, 96, seed=1) if files is None else sorted(Path(files).iterdir())[:n]
    labels = [i % 2 for i in range(n)]
    probekit.scan(model, images[:16], labels=labels[:16], cv=2, **SCAN_KW)  # warm-up
    t0, c0 = time.perf_counter(), _cpu_s()
    probekit.scan(model, images, labels=labels, **SCAN_KW)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "images_per_s": n / dt, "cpu_s": _cpu_s() - c0, "peak_rss_mb": _peak_rss_mb()}


def _worker_disk(model_dir: str, n: int, files: str, topk: int | None = 10) -> dict:
    import probekit

    model = probekit.load(model_dir)
    images = sorted(Path(files).iterdir())[:n]
    labels = [i % 2 for i in range(n)]
    store = Path(tempfile.mkdtemp()) / "store"
    t0, c0 = time.perf_counter(), _cpu_s()
    try:
        probekit.scan(model, images, labels=labels, prompts="What is the username?", points=["lm.1.resid"],
                      n_boot=100, cv=5, batch_size=32, store=str(store), topk=topk, progress=False)
    finally:
        dt, cpu = time.perf_counter() - t0, _cpu_s() - c0
        shutil.rmtree(store.parent, ignore_errors=True)
    return {"seconds": dt, "images_per_s": n / dt, "cpu_s": cpu, "peak_rss_mb": _peak_rss_mb()}


def _worker_collect(model_dir: str, n: int, files: str) -> dict:
    import probekit

    model = probekit.load(model_dir)
    images = sorted(Path(files).iterdir())[:n]
    t0, c0 = time.perf_counter(), _cpu_s()
    probekit.collect(model, images, "What is the username?", points=["lm.*.resid", "logits"],
                     positions=("last", "image_mean"), batch_size=32, progress=False)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "images_per_s": n / dt, "cpu_s": _cpu_s() - c0, "peak_rss_mb": _peak_rss_mb()}


def _worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    if args.worker == "scan":
        out = _worker_scan(args.model, args.n, args.files)
    elif args.worker == "collect":
        out = _worker_collect(args.model, args.n, args.files)
    else:
        out = _worker_disk(args.model, args.n, args.files, topk=None if args.worker == "disk-notopk" else 10)
    print("RESULT " + json.dumps(out))


# ----------------------------------------------------------------------------- driver

def _run(src: str, worker: str, model: str, n: int, files: str | None) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", worker, "--model", model, "--n", str(n)]
    if files is not None:
        cmd += ["--files", files]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if res.returncode != 0:
        raise RuntimeError(f"{worker} worker failed ({src}):\n{res.stderr[-3000:]}")
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def _baseline_src(ref: str, tmp: Path) -> str:
    dest = tmp / f"baseline-{ref.replace('/', '_')}"
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "probekit"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return str(dest)


def _write_images(folder: Path, n: int, size: tuple[int, int] | None = None, fmt: str = "png") -> str:
    """``n`` image files: the 96x96 fixtures as PNG, or (``size``) blown up to a photo-like size and
    smoothed, as JPEG: a camera image the processor shrinks to 96x96."""
    from PIL import Image

    from probekit import tiny

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(0, n, 500):  # in chunks: fixture_images holds its whole list in memory
        for j, im in enumerate(tiny.fixture_images(min(500, n - i), 96, seed=10_000 + i)):
            if size is not None:
                im = im.resize(size, Image.BICUBIC)
            im.save(folder / f"{i + j:06d}.{fmt}", quality=90) if fmt == "jpg" else im.save(folder / f"{i + j:06d}.{fmt}")
    return str(folder)


def _table(title: str, cases: list[tuple[str, str, int, str | None]], sources: dict[str, str],
           model: str, rounds: int) -> None:
    results: dict[tuple[str, str], list[dict]] = {}
    for r in range(rounds):
        order = list(sources) if r % 2 == 0 else list(sources)[::-1]  # neither always goes first
        for label, worker, n, files in cases:
            for name in order:
                results.setdefault((label, name), []).append(_run(sources[name], worker, model, n, files))
    print(f"\n## {title} (median of {rounds} rounds, fresh process each)\n")
    names = list(sources)
    head = " | ".join(f"{nm} images/s | {nm} CPU ms/image | {nm} peak RSS MB" for nm in names)
    print(f"| case | {head} |" + (" speed-up | CPU ratio | RSS ratio |" if len(names) == 2 else ""))
    print("|---|" + "---:|" * (3 * len(names) + (3 if len(names) == 2 else 0)))
    for label, _, n, _ in cases:
        med = {nm: {k: statistics.median(d[k] for d in results[(label, nm)]) for k in ("images_per_s", "cpu_s", "peak_rss_mb")}
               for nm in names}
        cells = " | ".join(f"{med[nm]['images_per_s']:.3g} | {1000 * med[nm]['cpu_s'] / n:.2f} | {med[nm]['peak_rss_mb']:.0f}"
                           for nm in names)
        extra = ""
        if len(names) == 2:
            a, b = names
            extra = (f" {med[b]['images_per_s'] / med[a]['images_per_s']:.2f}x |"
                     f" {med[b]['cpu_s'] / med[a]['cpu_s']:.2f} | {med[b]['peak_rss_mb'] / med[a]['peak_rss_mb']:.2f} |")
        print(f"| {label} | {cells} |{extra}")
    raw = {f"{label} / {nm}": [float(f"{d['images_per_s']:.3g}") for d in results[(label, nm)]]
           for label, *_ in cases for nm in names}
    print("\nimages/s per round:", json.dumps(raw))
    print("images/s min-max over rounds:", json.dumps({k: f"{min(v)}-{max(v)}" for k, v in raw.items()}))


def profile(model_dir: str, n: int) -> None:
    import probekit
    from probekit import tiny

    model = probekit.load(model_dir)
    images = tiny.fixture_images(n, 96, seed=1)
    labels = [i % 2 for i in range(n)]
    probekit.scan(model, images[:16], labels=labels[:16], cv=2, **SCAN_KW)
    prof = cProfile.Profile()
    prof.enable()
    probekit.scan(model, images, labels=labels, **SCAN_KW)
    prof.disable()
    stats = pstats.Stats(prof)
    cum, nested, total = {}, {}, 0.0
    for (file, _, fn), v in stats.stats.items():
        for table, stages in ((cum, {k: [v] for k, v in STAGES.items()}), (nested, NESTED)):
            for stage, where in stages.items():
                if (file, fn) in {(file, name) for f, name in where if file.endswith(f)}:
                    if "unembedding" in stage:  # the one hooked Linear (called through torch's `inner`): lm_head
                        v = (0, 0, 0, sum(c[3] for (cf, _, cfn), c in v[4].items() if cfn == "inner"))
                    table[stage] = table.get(stage, 0.0) + v[3]
        if file.endswith("probekit/scan.py") and fn == "scan":
            total = v[3]
    print(f"\n## cProfile of one in-memory scan of {n} images (this checkout)\n")
    for k, v in sorted(cum.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<46}{v:>7.3f} s  {100 * v / total:5.1f}%")
    for k, v in nested.items():
        print(f"  {k:<46}{v:>7.3f} s  {100 * v / total:5.1f}%")
    print(f"  {'rest (report, lens, glue)':<46}{total - sum(cum.values()):>7.3f} s  "
          f"{100 * (total - sum(cum.values())) / total:5.1f}%")
    stats.sort_stats("tottime").print_stats(8)


# ----------------------------------------------------------------------------- raw store I/O

def _write(root: Path, chunks: list, info: dict, n: int, shard: int) -> float:
    from probekit.hooks.store_writer import StoreWriter

    t0 = time.perf_counter()
    w = StoreWriter(root, {"fingerprint": "bench"}, n, shard, fingerprint="bench")
    for i, s in enumerate(range(0, n, shard)):
        w.write_shard(s, min(s + shard, n), chunks[i], info)
    w.finish()
    w.close()
    return time.perf_counter() - t0


def _read(root: Path, check: bool) -> tuple[float, float]:
    from probekit.hooks.store import ActivationStore

    t0 = time.perf_counter()
    store = ActivationStore.open(root, check_reads=check)
    total = sum(float(store[p][:, 0].sum()) for p in store.points)
    return time.perf_counter() - t0, total


def _read_raw(root: Path) -> tuple[float, float]:
    """The same reads straight from safetensors, no probekit checks: the floor."""
    import torch
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
    import torch

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
    ap.add_argument("--n", type=int, default=256, help="images of the demo-model scans")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", default="main", help="git ref to compare with ('none': this checkout only)")
    ap.add_argument("--baseline-src", default=None, help="an unpacked baseline checkout instead of --baseline")
    ap.add_argument("--disk-n", default="2000,5000,20000", help="sizes of the disk scans ('' skips them)")
    ap.add_argument("--skip-scan", action="store_true", help="no demo-model scans")
    ap.add_argument("--collect-n", type=int, default=4000, help="size of the in-memory collect (0 skips it)")
    ap.add_argument("--profile", action="store_true", help="also profile one in-memory scan by stage")
    ap.add_argument("--store", action="store_true", help="also the raw disk-store throughput")
    ap.add_argument("--store-only", action="store_true", help="only the raw disk-store throughput")
    ap.add_argument("--midsize", action="store_true",
                    help="the 189M LLaVA-shaped model of benchmarks/_midsize.py (vocabulary 32,000), where the forward dominates")
    ap.add_argument("--image-size", type=int, default=None, help="with --midsize: image size (default 224 px: 256 image tokens)")
    ap.add_argument("--worker", choices=["scan", "collect", "disk", "disk-notopk"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--files", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return _worker(args)
    if args.store_only:
        return store_bench()

    import torch

    from probekit import tiny

    tmp = Path(tempfile.mkdtemp(prefix="bench_scan_"))
    try:
        print(f"# torch {torch.__version__}, CPU, 1 torch thread per process, load average "
              f"{os.getloadavg()[0]:.1f} at start")
        if args.midsize:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from _midsize import build_midsize

            model = str(build_midsize(tmp / "m", **({"image_size": args.image_size} if args.image_size else {})))
            print(f"# mid-size LLaVA-shaped model (benchmarks/_midsize.py), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        else:
            model = str(tiny.build("llava", tmp / "m", seed=0, image_size=96, patch_size=12))
        sources: dict[str, str] = {}
        if args.baseline_src:
            sources["before"] = str(Path(args.baseline_src).resolve())
        elif args.baseline != "none":
            sources[f"before ({args.baseline})"] = _baseline_src(args.baseline, tmp)
        sources["after"] = str(ROOT)  # this checkout, first on PYTHONPATH like the baseline
        disk_n = [int(x) for x in args.disk_n.split(",") if x.strip()]
        files = _write_images(tmp / "png", max([args.n, args.collect_n, *disk_n]))
        if not args.skip_scan:
            photos = _write_images(tmp / "jpg", args.n, size=(640, 480), fmt="jpg")
            cases = [("PIL images in memory (96x96)", "scan", args.n, None), ("PNG files (96x96)", "scan", args.n, files),
                     ("JPEG files (640x480)", "scan", args.n, photos)]
            _table(f"scan, {'mid-size' if args.midsize else 'demo tiny'} LLaVA, n = {args.n}",
                   cases[:1] if args.midsize else cases, sources, model, args.rounds)  # mid-size: the forward's case only
        if args.collect_n:
            _table("collect into memory, 96x96 PNG files, lm.*.resid + logits at last + image_mean, batch 32",
                   [(f"n = {args.collect_n}", "collect", args.collect_n, files)], sources, model, args.rounds)
        if disk_n:
            _table("disk scan (store=DIR), 96x96 PNG files, lm.1.resid at last + image_mean",
                   [(f"n = {k}, output probes (topk=10)", "disk", k, files) for k in disk_n]
                   + [(f"n = {k}, no output probes (topk=None)", "disk-notopk", k, files) for k in disk_n],
                   sources, model, max(1, args.rounds // 2 + 1) if max(disk_n) <= 5000 else 1)
        print(f"\nload average at end {os.getloadavg()[0]:.1f}")
        if args.profile:
            profile(model, args.n)
        if args.store:
            store_bench()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
