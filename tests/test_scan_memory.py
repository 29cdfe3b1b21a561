"""Issue 28: the probing step reads a store unit by unit into chunks under ``memory_limit`` (its peak
does not grow with the number of points), with the same table as the in-memory path."""

import numpy as np
import pandas as pd
import pytest
import torch

import probekit
from probekit.hooks.store import ActivationStore
from probekit.readout import table as readout_table_module
from probekit.readout._data import plan_chunks
from probekit.readout.probes import probe_layers


def _reset():
    readout_table_module.READS.update(units=0, bytes=0, peak_chunk_bytes=0)


def _acts(n=120, points=4, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    acts = {f"lm.{i}.resid": torch.randn(n, 2, d, generator=g) + 0.5 * i * y[:, None, None] for i in range(points)}
    return acts, y.numpy()


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    cols = [c for c in a.columns if c != "perm_null"]
    pd.testing.assert_frame_equal(a[cols].reset_index(drop=True), b[cols].reset_index(drop=True), check_exact=True)
    for x, z in zip(a.perm_null, b.perm_null):
        np.testing.assert_array_equal(x, z)


def test_plan_chunks_bounds_every_chunk():
    assert plan_chunks([8] * 6, n=100, memory_limit=100 * 8 * 4 * 2) == [[0, 1], [2, 3], [4, 5]]
    assert plan_chunks([8, 8, 16, 16], n=10, memory_limit=1 << 30) == [[0, 1], [2, 3]]  # one width per chunk
    assert plan_chunks([64], n=1000, memory_limit=1) == [[0]]  # a unit over the limit still gets its chunk


def test_a_disk_store_is_probed_unit_by_unit_and_gives_the_in_memory_table(tmp_path):
    acts, y = _acts()
    n, d = y.shape[0], 16
    one = n * d * 4
    store = ActivationStore(acts, meta={"positions": ["last", "image_mean"]}).save(tmp_path / "s", shard_size=50)
    reads = []
    real = ActivationStore.read

    def counted(self, point, position=None):
        out = real(self, point, position)
        reads.append(tuple(out.shape))
        return out

    ActivationStore.read = counted
    try:
        _reset()
        disk = probe_layers(ActivationStore.open(tmp_path / "s"), y, n_boot=50, n_perm=19, progress=False,
                            memory_limit=2 * one)
    finally:
        ActivationStore.read = real
    reads_done = dict(readout_table_module.READS)
    # every (point, position) read alone, as one [n, d] slice, and at most two of them in a chunk
    assert reads == [(n, d)] * 8
    assert reads_done["units"] == 8 and reads_done["bytes"] == 8 * one
    assert reads_done["peak_chunk_bytes"] == 2 * one < 8 * one
    memory = probe_layers(acts, y, positions=["last", "image_mean"], n_boot=50, n_perm=19, progress=False,
                          memory_limit=2 * one)
    _same(disk, memory)
    assert store.points == list(acts)


def test_scan_of_a_disk_store_holds_one_chunk_and_matches_memory(llava, tmp_path):
    images = probekit.tiny.fixture_images(40, 32)
    labels = [i % 2 for i in range(40)]
    d = llava.d_model
    limit = 40 * d * 4  # one [n, d] unit per chunk
    kw = dict(labels=labels, n_boot=50, n_perm=19, progress=False, memory_limit=limit, topk=5)
    _reset()
    disk = probekit.scan(llava, images, store=str(tmp_path / "s"), **kw)
    assert readout_table_module.READS["peak_chunk_bytes"] <= limit
    mem = probekit.scan(llava, images, **kw)
    _same(disk.table, mem.table)


def test_scan_refuses_a_bad_memory_limit(llava):
    with pytest.raises(probekit.errors.InputError, match="memory_limit"):
        probekit.scan(llava, probekit.tiny.fixture_images(4, 32), labels=[0, 1, 0, 1], memory_limit=0, progress=False)


def test_the_planned_peak_at_7b_scale_is_one_unit_not_the_store():
    from probekit.readout.table import probing_peak_bytes

    class Layout:  # LLaVA-1.5-7B's residual stream at two positions, 100,000 images, bf16
        table = pd.DataFrame({"point": [f"lm.{i}.resid" for i in range(32)], "shape": [[2, 4096]] * 32,
                              "dtype": ["bfloat16"] * 32, "bytes_per_sample": [2 * 4096 * 2] * 32})
        n, shard_rows = 100_000, 1024

    est = probing_peak_bytes(Layout(), 64 * 2**20)
    assert est["units_per_chunk"] == 1 and est["chunks"] == 64
    assert est["chunk"] == 100_000 * 4096 * 4
    assert est["total"] < 4e9  # the store is 52 GB; all its points in float32 would be 105 GB


def test_the_table_does_not_depend_on_how_the_memory_limit_chunks_it():
    """At d > 2 x rank the solver's preconditioner starts from random directions, seeded per point: by the
    point's place in the whole table, not in its chunk, so one point per chunk gives the all-at-once table."""
    g = torch.Generator().manual_seed(1)
    n, d = 200, 160  # d > 128: the randomised preconditioner (rank 64 below 1,000 rows)
    y = torch.arange(n) % 2
    acts = {f"lm.{i}.resid": torch.randn(n, d, generator=g) + 0.15 * i * y[:, None].float() for i in range(4)}
    kw = dict(n_boot=0, n_perm=19, progress=False, cv=3)
    one = probe_layers(acts, y.tolist(), memory_limit=n * d * 4, **kw)  # one point per chunk
    whole = probe_layers(acts, y.tolist(), memory_limit=1 << 30, **kw)  # every point in one solve
    cols = ["accuracy", "mi_bits", "control_accuracy", "n_iter"]
    pd.testing.assert_frame_equal(one[cols], whole[cols], check_exact=False, rtol=1e-5, atol=1e-6)
    assert (whole.n_iter > 0).all() and whole.accuracy.iloc[3] > whole.accuracy.iloc[0]
