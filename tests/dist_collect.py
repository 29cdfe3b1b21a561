"""Worker for tests/test_distributed.py, run under torchrun: collect into one store, maybe die on the way.

Usage: torchrun --standalone --nproc_per_node=2 tests/dist_collect.py MODEL_DIR STORE N KILL
KILL is ``none`` or ``RANK:CALL``: that rank SIGKILLs itself on its CALL-th forward batch.
Prints one JSON line per rank: its rank, world size and forward batches run.
"""

import json
import os
import signal
import sys

os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)

import probekit  # noqa: E402
from probekit import tiny  # noqa: E402

model_dir, store, n, kill = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
model = probekit.load(model_dir)
calls = {"n": 0}
real = type(model).prepare


def prepare(*a, **k):
    calls["n"] += 1
    if kill != "none" and (rank, calls["n"]) == tuple(map(int, kill.split(":"))):
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: like an OOM kill or a lost node
    return real(model, *a, **k)


model.prepare = prepare
s = probekit.collect(model, tiny.fixture_images(n, 32, seed=3), "What is it?", points="lm.*.resid",
                     positions=("last", "image_mean"), batch_size=2, shard_size=2, store=store, progress=False)
print(json.dumps({"rank": rank, "world": world, "forwards": calls["n"], "n": len(s)}), flush=True)
