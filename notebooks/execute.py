"""Execute every notebook here top to bottom and save it with its outputs (figures included).

The notebooks are committed executed so that their figures show in static views (nbconvert
HTML, a docs build): run ``python notebooks/execute.py`` after editing one. Offline, seconds.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def execute(path: Path) -> float:
    """Run one notebook in a scratch directory and write it back in place; returns the seconds."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    t0 = time.perf_counter()
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as tmp:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp}}).execute()
    nbformat.write(nb, path)
    return time.perf_counter() - t0


if __name__ == "__main__":
    for p in [Path(a) for a in sys.argv[1:]] or sorted(HERE.glob("*.ipynb")):
        print(f"{p.name}: {execute(p):.0f} s")
