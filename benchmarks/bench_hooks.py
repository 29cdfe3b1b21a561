"""Recording overhead and disk-store memory, measured side by side in one run.

1. Overhead: on a tiny LLaVA (~22M parameters: hidden 256, 4 layers, 64x64 images, batch 16),
   record every ``lm.*.resid`` at ``last`` and ``image_mean`` with
   - probekit (plain torch hooks, selection in the hook, early stop after the last point),
   - probekit with the early stop off (hooks alone),
   - nnsight saving the same module outputs,
   - TransformerLens ``TransformerBridge.run_with_cache`` with a names filter (where supported),
   and the plain forward ``model(**inputs)``. Rounds interleave the methods in random order;
   the script prints medians and the median of per-round ratios.
   Targets: probekit <= 1.05x plain forward, and no slower than nnsight.
2. Disk store: peak RSS of ``collect(..., store=DIR)`` for 1,000 and 20,000 images (each in a
   fresh subprocess). Target: 20,000 within 1.2x of 1,000 (memory flat in n).

Usage: ``python benchmarks/bench_hooks.py [--rounds 30] [--quick] [--device cuda]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]  # this checkout

import probekit  # noqa: E402
from probekit.hooks.backends import run_backend  # noqa: E402
import probekit.hooks.backends as backends  # noqa: E402
from probekit.hooks.collect import reducer as _reducer  # noqa: E402
from probekit.hooks.positions import PositionContext, normalize_positions  # noqa: E402
from probekit.hooks.recorder import Recorder  # noqa: E402
from probekit import tiny  # noqa: E402

SIZES_22M = tiny.LLAVA_22M  # hidden 256, 4 LM layers, 64x64 images, patch 8: 22.1M parameters


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def overhead(rounds: int, batch: int, device: str, sizes: dict, midsize: bool = False) -> dict:
    root = Path(tempfile.mkdtemp())
    if midsize:
        from _midsize import build_midsize

        model = probekit.load(build_midsize(root / "midsize", **sizes), device=device)
    else:
        model = probekit.load(tiny.build("llava", root / "llava22m", seed=0, **sizes), device=device)
    n_params = sum(p.numel() for p in model.hf.parameters())
    images = tiny.fixture_images(batch, sizes.get("image_size", 32), seed=0)
    inputs = model.prepare(images, ["What is written in the corner of this picture?"] * batch)
    names = model.resolve("lm.*.resid")
    pos, many = normalize_positions(("last", "image_mean"))
    ctx = PositionContext.from_inputs(inputs, model.image_mask(inputs))
    reduce = _reducer(model, pos, many, {"lm": ctx}, inputs, batch)

    def plain():
        return model.hf(**inputs)

    def pk():
        return run_backend("torch", model, inputs, names, reduce)

    def pk_full():
        with Recorder(model, names, reduce=reduce) as rec:
            model.hf(**inputs)
        return rec.cache

    with_logits = names + ["logits"]

    def pk_logits(defer: bool):
        def run():
            backends.DEFER_HEAD = defer
            try:
                return run_backend("torch", model, inputs, with_logits, reduce)
            finally:
                backends.DEFER_HEAD = True
        return run

    methods = {"plain forward": plain, "probekit": pk, "probekit (no early stop)": pk_full,
               "probekit + logits (head at kept rows)": pk_logits(True),
               "probekit + logits (full unembedding)": pk_logits(False)}
    others = not midsize  # on the mid-size model: probekit's paths and the plain forward only (time)
    try:
        from probekit.hooks.backends import check_backend
        if not others:
            raise probekit.errors.BackendError("not on the mid-size model", fix="")
        check_backend("nnsight", model)
        methods["nnsight"] = lambda: run_backend("nnsight", model, inputs, names, reduce)
    except probekit.errors.ProbekitError as exc:
        print(f"nnsight: skipped ({exc.problem})")
    try:
        from probekit.hooks.backends import check_backend
        if not others:
            raise probekit.errors.BackendError("not on the mid-size model", fix="")
        check_backend("transformer_lens", model)
        methods["TransformerLens run_with_cache"] = lambda: run_backend("transformer_lens", model, inputs, names, reduce)
    except probekit.errors.ProbekitError as exc:
        print(f"TransformerLens: skipped ({exc.problem})")

    ref = pk()
    for name, fn in methods.items():  # warm-up, and all methods must agree
        with torch.inference_mode():
            out = fn()
        if name != "plain forward" and "logits" not in name:
            diff = max((out[p].float() - ref[p].float()).abs().max().item() for p in names)
            print(f"{name}: max |difference| from probekit over all points = {diff:.3g}")
    times: dict[str, list[float]] = {k: [] for k in methods}
    rng = random.Random(0)
    with torch.inference_mode():
        for _ in range(rounds):
            order = list(methods)
            rng.shuffle(order)
            for name in order:
                _sync(device)
                t0 = time.perf_counter()
                methods[name]()
                _sync(device)
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    spread = {k: (min(v), max(v)) for k, v in times.items()}
    per_round = {k: [a / b for a, b in zip(times[k], times["plain forward"])] for k in methods}
    ratio = {k: statistics.median(v) for k, v in per_round.items()}
    head = [a / b for a, b in zip(times["probekit + logits (full unembedding)"], times["probekit + logits (head at kept rows)"])]
    ref_full, ref_kept = pk_logits(False)(), pk_logits(True)()
    return {"params": n_params, "batch": batch, "median_s": med, "spread_s": spread, "ratio_vs_plain": ratio,
            "ratio_spread": {k: (min(v), max(v)) for k, v in per_round.items()}, "device": device,
            "head_speedup": (statistics.median(head), min(head), max(head)),
            "logits_diff": float((ref_full["logits"].float() - ref_kept["logits"].float()).abs().max()),
            "tokens": int(inputs["input_ids"].shape[1])}


_CHILD = r"""
import os, sys, resource, json
os.environ["HF_HUB_OFFLINE"] = "1"
import probekit
n, model_dir, img_dir, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
files = sorted(os.path.join(img_dir, f) for f in os.listdir(img_dir))[:n]
model = probekit.load(model_dir)
import time; t0 = time.perf_counter()
store = probekit.collect(model, files, "What is in the image?", points="lm.*.resid", positions=("last", "image_mean"),
                         store=out, batch_size=64, shard_size=1024, progress=False)
dt = time.perf_counter() - t0
size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
print(json.dumps({"n": n, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": dt, "bytes": size, "points": len(store.points)}))
"""


def disk_memory(sizes_n: list[int]) -> list[dict]:
    root = Path(tempfile.mkdtemp())
    model_dir = tiny.build("llava", root / "llava", seed=0)
    img_dir = root / "imgs"
    img_dir.mkdir()
    for i, im in enumerate(tiny.fixture_images(max(sizes_n), 32, seed=1)):
        im.save(img_dir / f"{i:06d}.png")
    rows = []
    for n in sizes_n:
        out = root / f"store{n}"
        res = subprocess.run([sys.executable, "-c", _CHILD, str(n), str(model_dir), str(img_dir), str(out)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="fewer rounds, 200 vs 2,000 images")
    ap.add_argument("--skip-disk", action="store_true")
    ap.add_argument("--midsize", action="store_true",
                    help="the 189M LLaVA-shaped model of benchmarks/_midsize.py (vocabulary 32,000) instead of the 22M one")
    ap.add_argument("--image-size", type=int, default=None, help="with --midsize: fewer image tokens (default 224 px)")
    args = ap.parse_args()
    torch.manual_seed(0)
    rounds = 8 if args.quick else args.rounds
    print(f"# probekit hooks benchmark  torch {torch.__version__}  threads {torch.get_num_threads()}  device {args.device}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {os.getloadavg()}")
    sizes = ({"image_size": args.image_size} if args.image_size else {}) if args.midsize else SIZES_22M
    r = overhead(rounds, args.batch, args.device, sizes, midsize=args.midsize)
    what = "mid-size LLaVA" if args.midsize else "tiny LLaVA"
    print(f"\n## Recording all lm.*.resid at last + image_mean: {what} {r['params'] / 1e6:.1f}M params, "
          f"{r['tokens']} tokens, batch {r['batch']}, {rounds} interleaved rounds")
    print(f"{'method':<40}{'median ms':>10}{'min-max ms':>18}{'ratio vs plain':>16}{'min-max':>14}")
    for k in r["median_s"]:
        lo, hi = r["spread_s"][k]
        rlo, rhi = r["ratio_spread"][k]
        print(f"{k:<40}{r['median_s'][k] * 1e3:>10.1f}{f'{lo * 1e3:.1f}-{hi * 1e3:.1f}':>18}"
              f"{r['ratio_vs_plain'][k]:>16.3f}{f'{rlo:.3f}-{rhi:.3f}':>14}")
    med, lo, hi = r["head_speedup"]
    print(f"logits with the head at the kept rows: {med:.3f}x faster than with the full unembedding "
          f"(per-round min-max {lo:.3f}-{hi:.3f}); max |logits difference| {r['logits_diff']:.3g}")
    print(f"# load average after: {os.getloadavg()}")
    if "nnsight" in r["median_s"]:
        print(f"probekit / nnsight = {r['median_s']['probekit'] / r['median_s']['nnsight']:.3f}  (target <= 1)")
    print(f"probekit / plain   = {r['ratio_vs_plain']['probekit']:.3f}  (target <= 1.05)")
    if not args.skip_disk:
        ns = [200, 2000] if args.quick else [1000, 20000]
        rows = disk_memory(ns)
        print("\n## Disk store: collect lm.*.resid at last + image_mean to safetensors shards")
        print(f"{'n':>8}{'peak RSS MB':>14}{'seconds':>10}{'img/s':>8}{'MB on disk':>12}{'write MB/s':>12}")
        for row in rows:
            print(f"{row['n']:>8}{row['peak_rss_mb']:>14.1f}{row['seconds']:>10.1f}{row['n'] / row['seconds']:>8.0f}"
                  f"{row['bytes'] / 1e6:>12.1f}{row['bytes'] / 1e6 / row['seconds']:>12.2f}")
        print(f"peak memory ratio {rows[1]['n']} / {rows[0]['n']} = {rows[1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.3f}"
              f"  (target <= 1.2)")


if __name__ == "__main__":
    main()
