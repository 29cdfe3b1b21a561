"""Data-parallel collect under torchrun (2 CPU processes, gloo): a rank killed mid-run, a resume,
and a store that equals, shard for shard and bit for bit, the one a single process writes."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import probekit
from probekit.errors import InputError
from probekit.hooks import ActivationStore
from probekit.hooks.distributed import owned_shards, world
from probekit import tiny

from _stores import count_prepare  # tests/ is on sys.path

WORKER = Path(__file__).with_name("dist_collect.py")
N = 12  # shards of 2: six shards, three per rank


def test_owned_shards_split_the_rows_once_and_do_not_depend_on_timing():
    for n, size, w in [(10, 3, 2), (12, 2, 4), (5, 8, 3), (1, 1, 2)]:
        parts = [owned_shards(r, w, n, size) for r in range(w)]
        rows = sorted(i for p in parts for a, b in p for i in range(a, b))
        assert rows == list(range(n))  # disjoint, and covering 0..n exactly once
        assert parts == [owned_shards(r, w, n, size) for r in range(w)]
    assert owned_shards(1, 2, 10, 3) == [(3, 6), (9, 10)]
    assert owned_shards(0, 1, 7, 7) == [(0, 7)]


@pytest.mark.parametrize("env, words", [({"RANK": "x", "WORLD_SIZE": "2"}, "not integers"),
                                        ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2")])
def test_bad_launch_environment(monkeypatch, env, words):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(InputError, match=words):
        world()


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)


def _reports(out: str) -> dict[int, dict]:
    # the ranks share one stdout pipe: two reports can land on one line, so find each object
    rows = [json.loads(obj) for obj in re.findall(r'\{"rank"[^{}]*\}', out)]
    return {r["rank"]: r for r in rows}


def _finished(store: Path) -> set[str]:
    files = set()
    for f in store.glob("index*.json"):
        files |= {s["file"] for s in json.loads(f.read_text())["shards"]}
    return files


def test_two_ranks_killed_then_resumed_equal_one_process(tiny_dir, tmp_path, one_thread):
    model_dir = tiny_dir("llava")
    ref_dir = tmp_path / "one-process"
    ref = probekit.collect(probekit.load(model_dir), tiny.fixture_images(N, 32, seed=3), "What is it?",
                           points="lm.*.resid", positions=("last", "image_mean"), batch_size=2, shard_size=2,
                           store=ref_dir, progress=False)
    store = tmp_path / "two-ranks"

    killed = _torchrun(model_dir, str(store), str(N), "1:2")  # rank 1 dies on its second shard (shard 3)
    assert killed.returncode != 0, killed.stdout + killed.stderr
    assert not json.loads((store / "index.json").read_text())["complete"]
    finished = _finished(store)
    assert "shard-00001.safetensors" in finished  # rank 1's first shard survived the kill, listed in its part
    assert "shard-00003.safetensors" not in finished
    with pytest.raises(probekit.errors.StoreError, match="incomplete"):
        ActivationStore.open(store)

    resumed = _torchrun(model_dir, str(store), str(N), "none")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    reports = _reports(resumed.stdout)
    assert sorted(reports) == [0, 1] and all(r["world"] == 2 and r["n"] == N for r in reports.values())
    # one batch per unfinished shard, each run by its owner: nothing finished was recomputed
    assert sum(r["forwards"] for r in reports.values()) == N // 2 - len(finished)
    assert reports[1]["forwards"] == 3 - len({"shard-00001.safetensors", "shard-00003.safetensors",
                                              "shard-00005.safetensors"} & finished)

    # the merged store is the single-process store: same files, rows, hashes, and bit-identical tensors
    assert sorted(f.name for f in store.iterdir()) == sorted(f.name for f in ref_dir.iterdir())
    a, b = (json.loads((d / "index.json").read_text()) for d in (store, ref_dir))
    assert a["shards"] == b["shards"] and a["points"] == b["points"] and a["complete"]
    two = ActivationStore.open(store, verify=True)
    for p in ref.points:
        assert torch.equal(two[p], ref[p])


def test_distributed_scan_needs_a_store(tiny_model, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(InputError, match="needs store="):
        probekit.scan(tiny_model("llava"), tiny.fixture_images(8, 32), labels=[0, 1] * 4, cv=2, progress=False)


def test_one_process_resumes_what_the_ranks_left(tiny_model, tmp_path, monkeypatch, one_thread):
    """A part index left by a killed distributed run is merged by a later single-process collect."""
    from probekit.hooks.store_writer import StoreWriter

    model, images = tiny_model("llava"), tiny.fixture_images(6, 32, seed=3)
    args = dict(points="lm.0.resid", batch_size=2, shard_size=2, progress=False)
    ref = probekit.collect(model, images, "x", store=tmp_path / "ref", **args)
    index = json.loads((tmp_path / "ref" / "index.json").read_text())
    meta, fp = {k: v for k, v in index["meta"].items() if k != "fingerprint"}, index["meta"]["fingerprint"]
    d = tmp_path / "s"
    StoreWriter(d, meta, 6, 2, fp).close()  # rank 0's set-up: an empty index.json
    with StoreWriter(d, meta, 6, 2, fp, rank=1, world=2) as w1:  # rank 1 finished its shard 1, then died
        assert w1.done_ranges() == set()
        w1.write_shard(2, 4, {"lm.0.resid": ref["lm.0.resid"][2:4]}, index["points"])
    assert sorted(f.name for f in d.iterdir()) == ["index.json", "index.rank-00001.json", "shard-00001.safetensors"]
    calls = count_prepare(model, monkeypatch)
    again = probekit.collect(model, images, "x", store=d, **args)
    assert calls["n"] == 2  # shards 0 and 2; shard 1 came from the part index
    assert torch.equal(again["lm.0.resid"], ref["lm.0.resid"])
    assert sorted(f.name for f in d.iterdir()) == sorted(f.name for f in (tmp_path / "ref").iterdir())
    assert json.loads((d / "index.json").read_text())["shards"] == index["shards"]
