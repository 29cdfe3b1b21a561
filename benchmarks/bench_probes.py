"""Benchmark: probekit's batched probes vs a loop of scikit-learn fits, the same tasks on both sides.

A synthetic store of L layers x n samples x d features with binary labels and a planted
signal whose strength rises and falls over depth. The features are anisotropic and
correlated (a shared low-rank part, log-normal scales, a few large-offset features), as
residual streams are; ``--spectrum power`` draws them from a power-law spectrum instead
(eigenvalue k ~ k^-2, a harder case for the noise-fitting tasks). Both sides use the same
folds, the same per-fold standardisation, the same objective (C = 1) and the same label sets:
scan's defaults, the real labels, the control task and the permuted labels (3 x cv fits per
layer), and the same number of BLAS threads (``--threads``, default 1).

For every n of ``--sizes``, ``--rounds`` rounds, each round timing in turn: the scikit-learn
loop, the batched fits of this checkout (``heldout_logits``: the loop's work), the same with the
solver of ``--baseline`` (a git ref; its ``readout/_solver.py`` and ``_objective.py`` loaded as a
module) and ``probe_layers`` with its defaults end to end (fits + calibration, MI, bootstrap
CIs and the verdict's permutation statistic: more work than the loop). Prints medians and
[min, max] over rounds, the load average, and the largest per-layer accuracy difference of the
real-label probes from scikit-learn.

    python benchmarks/bench_probes.py                       # n = 500, 2,000, 8,000; 16 x d=1024
    python benchmarks/bench_probes.py --sizes 2000 --d 4096  # a wider store
    python benchmarks/bench_probes.py --quick                # smaller, ~1 minute
"""

from __future__ import annotations

import os

# The benchmark machine may be shared. With libgomp's default busy-waiting, two OpenMP
# threads on two contended cores stall at every parallel region (10-20x slowdowns of both
# torch and scikit-learn); passive waiting removes that. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import importlib  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from probekit.readout import scorers  # noqa: E402
from probekit.readout._data import make_folds  # noqa: E402
from probekit.readout.controls import label_tasks  # noqa: E402
from probekit.readout.probes import probe_layers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def make_store(L: int, n: int, d: int, seed: int = 0, rank: int = 32, spectrum: str = "lowrank") -> tuple[dict, np.ndarray]:
    """{f"lm.{l}.resid": Tensor[n, d]} and labels; signal strength peaks mid-depth."""
    if spectrum == "power":
        return make_store_power(L, n, d, seed)
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    sign = (2 * y - 1).float()[:, None]
    scales = torch.exp(0.7 * torch.randn(d, generator=g))
    base = torch.randn(n, rank, generator=g)
    acts = {}
    for layer in range(L):
        strength = 0.15 + math.sin(0.1 + 2.9 * layer / max(L - 1, 1)) ** 2
        A = 0.5 * torch.randn(rank, d, generator=g)
        u = torch.randn(d, generator=g)
        u /= u.norm()
        x = (torch.randn(n, d, generator=g) + base @ A) * scales + sign * strength * u
        x[:, :3] += 50.0  # a few large-offset features, as in real residual streams
        acts[f"lm.{layer}.resid"] = x
    return acts, y.numpy()


def make_store_power(L: int, n: int, d: int, seed: int = 0) -> tuple[dict, np.ndarray]:
    """Features from a power-law spectrum (k-th eigenvalue ~ k^-2) in a random basis, log-normal
    scales, three large-offset features and a weak planted signal."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    sign = (2 * y - 1).float()[:, None]
    spec = torch.arange(1, d + 1).float().reciprocal()
    acts = {}
    for layer in range(L):
        R = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
        u = torch.randn(d, generator=g)
        u /= u.norm()
        strength = 0.02 + 0.1 * math.sin(0.1 + 2.9 * layer / max(L - 1, 1)) ** 2
        x = (torch.randn(n, d, generator=g) * spec) @ R.T + sign * strength * u
        x = x * torch.exp(0.7 * torch.randn(d, generator=g))
        x[:, :3] += 50.0
        acts[f"lm.{layer}.resid"] = x
    return acts, y.numpy()


def sklearn_tasks(acts: dict, tasks: np.ndarray, folds: np.ndarray, C: float = 1.0,
                  threads: int = 1) -> tuple[np.ndarray, float, int]:
    """Held-out predictions [L, T, n] of one StandardScaler + LogisticRegression per layer,
    task and fold (the same fits as the batched solve), seconds and iterations in all."""
    t0 = time.perf_counter()
    T, n = tasks.shape
    pred, iters = np.empty((len(acts), T, n), dtype=tasks.dtype), 0
    with threadpool_limits(limits=threads):
        for i, x in enumerate(acts.values()):
            x = x.numpy()
            for t in range(T):
                for f in range(int(folds.max()) + 1):
                    tr, te = folds != f, folds == f
                    sc = StandardScaler().fit(x[tr])
                    clf = LogisticRegression(C=C, max_iter=1000).fit(sc.transform(x[tr]), tasks[t][tr])
                    pred[i, t, te] = clf.predict(sc.transform(x[te]))
                    iters += int(clf.n_iter_.max())
    return pred, time.perf_counter() - t0, iters


def load_baseline_solver(ref: str):
    """The ``solve`` of ``ref`` (its _solver.py + _objective.py as a package of their own), or
    None for ``ref='none'``."""
    if ref == "none":
        return None
    tmp = Path(tempfile.mkdtemp(prefix="bench_probes_base_"))
    pkg = tmp / "_probekit_baseline_solver"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in ("_solver.py", "_objective.py"):
        src = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:probekit/readout/{name}"],
                             check=True, capture_output=True, text=True).stdout
        (pkg / name).write_text(src)
    sys.path.insert(0, str(tmp))
    return importlib.import_module("_probekit_baseline_solver._solver").solve


def batched_fits(solve, acts: dict, tasks: np.ndarray, folds: np.ndarray, C: float = 1.0):
    """Held-out logits [L, T, n] of every layer, task and fold in one batched solve with
    ``solve`` (as ``heldout_logits`` does), seconds (the stacking of the store included) and
    iterations per problem [L, T, cv]."""
    orig = scorers.solve
    scorers.solve = solve
    try:
        t0 = time.perf_counter()
        X = torch.stack(list(acts.values()))
        Z, n_iter, _ = scorers.heldout_logits(X, torch.as_tensor(tasks), torch.as_tensor(folds), int(tasks.max()) + 1, C)
        return Z[..., 0].numpy(), time.perf_counter() - t0, n_iter.numpy()
    finally:
        scorers.solve = orig


def probe_layers_default(acts: dict, y: np.ndarray, C: float = 1.0) -> float:
    """Seconds of ``probe_layers`` with scan's defaults (control task, permuted labels, bootstrap
    CIs, the verdict's permutation statistic)."""
    t0 = time.perf_counter()
    probe_layers(acts, y, cv=5, seed=0, C=C, progress=False)
    return time.perf_counter() - t0


def _spread(v: list[float]) -> str:
    return f"{statistics.median(v):.2f} [{min(v):.2f}, {max(v):.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="500,2000,8000", help="sample counts n")
    ap.add_argument("--layers", type=int, default=16, help="points (layers) in the store")
    ap.add_argument("--d", type=int, default=1024, help="width")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="BLAS / torch threads, both sides")
    ap.add_argument("--baseline", default="HEAD", help="git ref whose solver is timed alongside ('none': skip)")
    ap.add_argument("--spectrum", choices=["lowrank", "power"], default="lowrank")
    ap.add_argument("--no-end-to-end", action="store_true", help="skip probe_layers end to end")
    ap.add_argument("--no-sklearn", action="store_true", help="only the batched solvers (before / after)")
    ap.add_argument("--quick", action="store_true", help="8 layers x d=512, n = 500 and 2,000, one round")
    args = ap.parse_args()
    if args.quick:
        args.layers, args.d, args.sizes, args.rounds = 8, 512, "500,2000", 1
    torch.set_num_threads(args.threads)
    base_solve = load_baseline_solver(args.baseline)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; torch {torch.__version__}, {args.threads} thread(s) "
          f"both sides, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, load {os.getloadavg()[0]:.1f}")
    print(f"store: {args.layers} layers x d={args.d} ({args.spectrum}), binary labels, tasks real + control + "
          f"permuted, 5-fold CV, C=1: {3 * 5 * args.layers} fits per side; baseline solver: {args.baseline}")
    warm, wy = make_store(2, 300, 64, spectrum=args.spectrum)  # warm-up of every code path
    wt = label_tasks(wy, None, True, True, 0)[0]
    batched_fits(scorers.solve, warm, wt, make_folds(wy, None, cv=5, seed=0))
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        acts, y = make_store(args.layers, n, args.d, spectrum=args.spectrum)
        folds = make_folds(y, None, cv=5, seed=0)  # the folds probe_layers uses
        tasks = label_tasks(y, None, True, True, 0)[0]  # scan's defaults: real, control, perm
        t = {"sklearn": [], "new": [], "base": [], "e2e": []}
        loads = []
        for _ in range(args.rounds):
            loads.append(os.getloadavg()[0])
            if not args.no_sklearn:
                pred_sk, dt, it_sk = sklearn_tasks(acts, tasks, folds, threads=args.threads)
                t["sklearn"].append(dt)
            Z, dt, it_new = batched_fits(scorers.solve, acts, tasks, folds)
            t["new"].append(dt)
            if base_solve is not None:
                _, dt, it_base = batched_fits(base_solve, acts, tasks, folds)
                t["base"].append(dt)
            if not args.no_end_to_end:
                t["e2e"].append(probe_layers_default(acts, y))
        if args.no_sklearn:  # ratios below are then against the baseline solver
            t["sklearn"] = t["base"] or t["new"]
            pred_sk, it_sk = (Z > 0).astype(int), 0
        acc_pk = ((Z[:, 0] > 0).astype(int) == tasks[0]).mean(-1)
        acc_sk = (pred_sk[:, 0] == tasks[0]).mean(-1)
        diff = 100 * np.abs(acc_pk - acc_sk).max()
        sk = statistics.median(t["sklearn"])
        print(f"\nn = {n}: load {min(loads):.1f}-{max(loads):.1f}; seconds, median [min, max] of {args.rounds}")
        if args.no_sklearn:
            print("  (no scikit-learn: the ratios below are against the baseline solver)")
        else:
            print(f"  scikit-learn loop, same tasks ({it_sk} L-BFGS iterations): {_spread(t['sklearn'])}")
        print(f"  batched fits, this checkout (iterations per problem, real / control / perm: "
              f"{' / '.join(f'{v:.1f}' for v in it_new.mean((0, 2)))}): {_spread(t['new'])}   "
              f"-> {sk / statistics.median(t['new']):.2f}x [{min(t['sklearn']) / max(t['new']):.2f}, "
              f"{max(t['sklearn']) / min(t['new']):.2f}]")
        if t["base"]:
            print(f"  batched fits, {args.baseline} ({' / '.join(f'{v:.1f}' for v in it_base.mean((0, 2)))}): "
                  f"{_spread(t['base'])}   -> {sk / statistics.median(t['base']):.2f}x")
        if t["e2e"]:
            print(f"  probe_layers defaults end to end (more work than the loop): {_spread(t['e2e'])}   "
                  f"-> {sk / statistics.median(t['e2e']):.2f}x")
        if not args.no_sklearn:
            print(f"  max |accuracy difference| from scikit-learn, real labels: {diff:.2f} points")
        rows.append((n, t, diff))
    print("\n| n | scikit-learn, same tasks | batched fits, " + args.baseline + " | batched fits, this checkout "
          "| ratio before | ratio after | probe_layers end to end | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for n, t, _ in rows:
        sk = statistics.median(t["sklearn"])
        r = lambda k: f"{sk / statistics.median(t[k]):.2f}x" if t[k] else ""  # noqa: E731
        print(f"| {n:,} | {_spread(t['sklearn'])} | {_spread(t['base']) if t['base'] else ''} | {_spread(t['new'])} "
              f"| {r('base')} | **{r('new')}** | {_spread(t['e2e']) if t['e2e'] else ''} | {r('e2e')} |")


if __name__ == "__main__":
    main()
