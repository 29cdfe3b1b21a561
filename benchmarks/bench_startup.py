"""Start-up cost: `import probekit`, `probekit --help` and a small CLI scan, each in a fresh process.

    python benchmarks/bench_startup.py [--rounds 5] [--src DIR]

``--src`` measures another checkout (e.g. ``git archive main | tar -x -C /tmp/main``) with the
same interpreter, for a before/after table. Prints the median wall time of each command and the
heaviest top-level imports of ``import probekit`` (``python -X importtime``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HELP = "from probekit.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
SCAN = "import sys\nfrom probekit.cli import main\nsys.exit(main(sys.argv[1:]))"


def _run(code: str, args: list[str], env: dict, cwd: str | None) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--src", default=None, help="checkout to measure (default: the installed probekit)")
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cwd = None
    if args.src:  # also the working directory: `python -c` puts it before PYTHONPATH on sys.path
        cwd = env["PYTHONPATH"] = str(Path(args.src).resolve())
    tmp = Path(tempfile.mkdtemp())
    setup = ("import probekit, sys\np = probekit.tiny.build('llava', sys.argv[1] + '/m')\n"
             "for i, im in enumerate(probekit.tiny.fixture_images(16, 32)):\n"
             "    d = __import__('pathlib').Path(sys.argv[1]) / 'imgs' / 'ab'[i % 2]; d.mkdir(parents=True, exist_ok=True)\n"
             "    im.save(d / f'{i}.png')")
    subprocess.run([sys.executable, "-c", setup, str(tmp)], env=env, cwd=cwd, check=True, capture_output=True)
    scan_args = ["scan", "--model", str(tmp / "m"), "--images", str(tmp / "imgs"), "--out", str(tmp / "r.html"),
                 "--cv", "2"]
    cases = {"import probekit": ("import probekit", []), "probekit --help": (HELP, []),
             "probekit scan (tiny, 16 images)": (SCAN, scan_args)}
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.rounds):  # interleaved, so load changes hit every case alike
        for name, (code, a) in cases.items():
            times[name].append(_run(code, a, env, cwd))
    for name, ts in times.items():
        print(f"{name:34s} median {statistics.median(ts):6.2f} s  (min {min(ts):.2f}, max {max(ts):.2f})")
    res = subprocess.run([sys.executable, "-X", "importtime", "-c", "import probekit"], env=env, cwd=cwd,
                         capture_output=True, text=True, check=True)
    rows = []
    for line in res.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit() and not parts[2].startswith("  "):
            rows.append((int(parts[1]), parts[2].strip()))
    top = ", ".join(f"{name} {us / 1e6:.2f} s" for us, name in sorted(rows, reverse=True)[:5])
    print(f"import probekit, heaviest top-level imports (cumulative): {top}")


if __name__ == "__main__":
    main()
