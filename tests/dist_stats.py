"""Worker for tests/test_readout_sufficient.py, run under torchrun: sufficient-statistics probes of one
store, each rank reading its own shards, the sums all-reduced (gloo).

Usage: torchrun --standalone --nproc_per_node=2 tests/dist_stats.py STORE LABELS.npy OUT_PREFIX
Rank r saves its held-out scores, its summed statistics and its table to OUT_PREFIX.rank{r}.pt.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from probekit.hooks import ActivationStore
from probekit.hooks.distributed import world
from probekit.readout._data import make_folds
from probekit.readout.controls import label_tasks
from probekit.readout.sufficient import FoldStats, _shards, stats_heldout, stats_table


def main() -> None:
    store_dir, labels_path, out = sys.argv[1:4]
    rank, size = world()
    assert size == 2, size
    store = ActivationStore.open(store_dir)
    y = np.load(labels_path)
    folds = make_folds(y, None, cv=5, seed=0)
    tasks = label_tasks(y, None, True, True, 0)[0]
    Z = stats_heldout(store, "lm.0.resid", tasks, folds, 2)  # distributed: WORLD_SIZE > 1
    # the sums themselves: this rank's shards, then all-reduced
    st = FoldStats(store.info("lm.0.resid")["shape"][-1], tasks, folds, 2)
    rows = 0
    for a, x in _shards(store, "lm.0.resid", None, rank, size):
        st.update(x, a)
        rows += len(x)
    st.all_reduce()
    table = stats_table(store, y, n_boot=50)
    torch.save({"Z": Z, "rows": rows, "count": st.count, "G": st.G, "cls_s": st.cls_s,
                "accuracy": table.accuracy.to_numpy(), "mi_bits": table.mi_bits.to_numpy()}, f"{out}.rank{rank}.pt")


if __name__ == "__main__":
    main()
