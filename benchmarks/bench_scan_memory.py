"""Peak RSS of a disk scan against n, this checkout beside a baseline (issue 28: memory flat in n).

    python benchmarks/bench_scan_memory.py [--n 500,2000,8000] [--baseline main | --baseline-src DIR]
                                           [--image-size 224] [--rounds 1]

Each (source, n) runs in a fresh process: the mid-size LLaVA-shaped model of ``_midsize.py`` (189M
parameters at 224 px) is loaded, then ``probekit.scan(model, images, labels, store=DIR)`` with the
defaults (``lm.*.resid`` at ``last`` and ``image_mean``, output probes on the top-10 logits, control
task, permuted labels, 1,000 permutations, 1,000 bootstraps). Peak RSS is ``VmHWM`` of that process,
reset (``/proc/self/clear_refs``) once the model is loaded; RSS after collect is ``VmRSS`` when ``collect`` returns. The loaded weights are copied into
anonymous memory first: memory-mapped safetensors pages count in RSS only while the page cache keeps
them, which on a busy machine moved the same run's RSS by hundreds of MB.

The forward runs once, on the first batch: every later batch returns that batch's activations plus
Gaussian noise (seeded by batch). Everything else is the real code path (images decoded and
processed, shards written and hashed, the store read back and probed); only the n-proportional cost
of the forward is skipped, so n = 8,000 of a 189M model fits a benchmark on a loaded 2-core CPU.
The memory the forward needs is the same for any n (one batch), so the peak is what a full run has.

Also prints the probing step's planned peak at LLaVA-1.5-7B (meta-device config, bf16 store) and
100,000 images, from :func:`probekit.readout.table.probing_peak_bytes` (the chunk planner scan uses).
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
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

_CHILD = r"""
import json, os, resource, sys, time
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
torch.set_num_threads(1)
import probekit
import importlib
C = importlib.import_module("probekit.hooks.collect")

model_dir, n, store, batch = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
real, cache = C._forward, {}

def once(*args, **kwargs):  # the real forward on the first batch; later batches reuse it plus noise
    if "out" not in cache:
        cache["out"] = real(*args, **kwargs)
        cache["i"] = 0
    out, ctxs = cache["out"]
    cache["i"] += 1
    g = torch.Generator().manual_seed(cache["i"])
    return {p: t + 0.05 * t.std() * torch.randn(t.shape, generator=g, dtype=t.dtype) if t.is_floating_point() else t
            for p, t in out.items()}, ctxs

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

after = {}
real_collect = C.collect
def collect(*a, **k):
    s = real_collect(*a, **k)
    after["rss"] = rss_mb()
    return s

C._forward, C.collect = once, collect
model = probekit.load(model_dir)
with torch.no_grad():  # the weights in anonymous memory: RSS no longer depends on which file pages stay cached
    for prm in model.hf.parameters():
        prm.data = prm.data.clone()
import gc; gc.collect()
loaded = rss_mb()
open("/proc/self/clear_refs", "w").write("5")  # the peak from here on: the clone above doubled the weights for a moment

def hwm_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
images = probekit.tiny.fixture_images(n, 32, seed=1)
labels = [i % 2 for i in range(n)]
t0 = time.perf_counter()
r = probekit.scan(model, images, labels=labels, store=store, batch_size=batch, progress=False)
print(json.dumps({"n": n, "peak_rss_mb": hwm_mb(), "rss_loaded_mb": loaded,
                  "rss_after_collect_mb": after.get("rss"), "seconds": time.perf_counter() - t0, "rows": len(r.table),
                  "accuracy_mean": float(r.table.accuracy.mean())}))
"""


def _run(src: str, model_dir: str, n: int, store: str, batch: int) -> dict:
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", _CHILD, model_dir, str(n), store, str(batch)], capture_output=True,
                         text=True, env=env, cwd=tempfile.gettempdir())
    if res.returncode:
        raise SystemExit(f"child failed ({src}, n={n}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def estimate_7b(n: int = 100_000, memory_limit: int | None = None) -> dict:
    """The probing step's planned peak on LLaVA-1.5-7B (meta device) for a bf16 store of n images."""
    import torch
    import transformers as T

    import probekit
    from probekit.readout.table import probing_peak_bytes
    from probekit.scan import SCAN_MEMORY_LIMIT

    clip = {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
            "num_attention_heads": 16, "image_size": 336, "patch_size": 14, "projection_dim": 768}
    cfg = T.LlavaConfig(vision_config=clip, text_config={
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False}, image_token_index=32000, vision_feature_layer=-2,
        vision_feature_select_strategy="default")
    with torch.device("meta"):
        hf = T.LlavaForConditionalGeneration(cfg)
    model = probekit.wrap(hf, _NoProcessor())
    layout = probekit.store_layout(model, n, "lm.*.resid", ("last", "image_mean"), store_dtype=torch.bfloat16,
                                   logits_topk=10)
    est = probing_peak_bytes(layout, memory_limit or SCAN_MEMORY_LIMIT)
    old = probing_peak_bytes(layout, 2**30)  # the readout's own default chunk (what scan used before)
    return {"store_gb": layout.store_bytes / 1e9, "after": est, "at_1gib": old}


class _NoProcessor:
    """What ``probekit.wrap`` needs of a processor for a model that is only planned, never run."""

    tokenizer = None
    image_token = "<image>"


def main() -> None:
    from bench_scan import _baseline_src

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="500,2000,8000")
    ap.add_argument("--baseline", default="main", help="git ref ('none': this checkout only)")
    ap.add_argument("--baseline-src", default=None)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--model-dir", default=None, help="reuse a built mid-size checkpoint")
    ap.add_argument("--estimate-only", action="store_true")
    args = ap.parse_args()
    from _midsize import build_midsize

    if not args.estimate_only:
        tmp = Path(tempfile.mkdtemp(prefix="bench_scan_memory_"))
        model_dir = str(build_midsize(args.model_dir or tmp / "midsize", image_size=args.image_size))
        sources = {"this checkout": str(ROOT)}
        if args.baseline_src:
            sources = {"baseline": args.baseline_src, **sources}
        elif args.baseline != "none":
            sources = {f"baseline ({args.baseline})": _baseline_src(args.baseline, tmp), **sources}
        ns = [int(x) for x in args.n.split(",") if x]
        print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load: {os.getloadavg()}; "
              f"model {model_dir} ({args.image_size} px); disk scan, default settings; rounds {args.rounds}")
        rows = {}
        for r in range(args.rounds):
            for n in ns:
                for name, src in sources.items():
                    store = str(tmp / f"store-{r}-{n}-{name.split()[0]}")  # never another run's (it would resume)
                    res = _run(src, model_dir, n, store, args.batch)
                    rows.setdefault((name, n), []).append(res)
                    print(f"  {name:>22} n={n:>6}: peak {res['peak_rss_mb']:7.0f} MB, loaded {res['rss_loaded_mb']:7.0f} MB, after collect "
                          f"{res['rss_after_collect_mb']:7.0f} MB, {res['seconds']:6.1f} s", flush=True)
        print(f"\n{'source':>22} " + " ".join(f"{'n=' + str(n):>18}" for n in ns) + f"  {'peak ratio':>11}")
        for name in sources:
            peaks = [[x["peak_rss_mb"] for x in rows[(name, n)]] for n in ns]
            cells = [f"{min(p):6.0f}-{max(p):<6.0f} MB" if len(p) > 1 else f"{p[0]:9.0f} MB" for p in peaks]
            print(f"{name:>22} " + " ".join(f"{c:>18}" for c in cells) + f"  {min(peaks[-1]) / min(peaks[0]):10.2f}x")
        print(f"load after: {os.getloadavg()}")
    est = estimate_7b()
    a = est["after"]
    print(f"\nLLaVA-1.5-7B, 100,000 images, lm.*.resid at last + image_mean (store {est['store_gb']:.1f} GB bf16): "
          f"probing step planned peak {a['total'] / 1e9:.2f} GB ({a['chunks']} chunks of {a['units_per_chunk']} unit(s); "
          + ", ".join(f"{k} {a[k] / 1e9:.2f} GB" for k in ('chunk', 'read', 'solver', 'permutation'))
          + f"); with 1 GiB chunks: {est['at_1gib']['total'] / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
