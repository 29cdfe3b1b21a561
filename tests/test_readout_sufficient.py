"""Probes from sufficient statistics (probekit.readout.sufficient): closed-form LDA per fold against
scikit-learn's LDA and the logistic probe, shard by shard equal to all at once, a disk store equal to
memory, and two torchrun ranks (gloo, CPU) equal to one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from probekit.hooks import ActivationStore
from probekit.readout import LinearProbe, probe_layers, stats_table
from probekit.readout._data import make_folds
from probekit.readout.controls import label_tasks
from probekit.readout.sufficient import FoldStats, StatsScorer, stats_heldout

WORKER = Path(__file__).with_name("dist_stats.py")


def _data(n: int, d: int, K: int = 2, seed: int = 0, sep: float = 0.35):
    """Correlated features with large offsets and a real but partial class signal (accuracy ~0.8)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (n,), generator=g)
    A = torch.randn(d, d, generator=g) / d ** 0.5
    mus = torch.randn(K, d, generator=g) * sep / d ** 0.25
    x = (torch.randn(n, d, generator=g) + mus[y]) @ A * torch.exp(torch.randn(d, generator=g)) + 40.0
    return x, y.numpy()


def test_matches_sklearn_lda_without_shrinkage():
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    x, y = _data(1500, 20, K=3)
    x = x.double()  # float64 shards are summed in float64 throughout: the closed form is then exact
    folds = make_folds(y, None, cv=5, seed=0)
    st = FoldStats(20, y[None], folds, 3)
    for a in range(0, 1500, 400):  # shards of 400 rows
        st.update(x[a:a + 400], a)
    Z = st.fit(shrinkage=1e-12).score(x, 0)[:, 0].numpy()  # [n, K] log-probabilities + a constant per row
    for f in range(5):
        tr, te = folds != f, folds == f
        ref = LinearDiscriminantAnalysis(solver="lsqr").fit(x[tr].double().numpy(), y[tr])
        lp = ref.predict_log_proba(x[te].double().numpy())
        ours = Z[te] - Z[te].max(1, keepdims=True)
        ours = ours - np.log(np.exp(ours).sum(1, keepdims=True))
        np.testing.assert_allclose(ours, lp, atol=1e-5)


def test_shards_add_up_and_merge():
    x, y = _data(900, 16)
    folds = make_folds(y, None, cv=3, seed=1)
    tasks = label_tasks(y, None, True, True, 0)[0]
    whole = FoldStats(16, tasks, folds, 2).update(x, 0)
    parts = [FoldStats(16, tasks, folds, 2).update(x[a:a + 250], a) for a in range(0, 900, 250)]
    merged = parts[0]
    for p in parts[1:]:
        merged.merge(p)
    for name in ("count", "s1", "G", "cls_n", "cls_s"):  # float32 shards: float32 rounding per shard
        a, b = getattr(merged, name), getattr(whole, name)
        torch.testing.assert_close(a, b, rtol=2e-6, atol=2e-6 * float(b.abs().max()))
    torch.testing.assert_close(merged.fit().score(x, 0), whole.fit().score(x, 0), rtol=1e-4, atol=1e-4)
    x64 = x.double()  # float64 shards: equal to float64 rounding
    whole = FoldStats(16, tasks, folds, 2).update(x64, 0)
    merged = FoldStats(16, tasks, folds, 2)
    for a in range(0, 900, 250):
        merged.merge(FoldStats(16, tasks, folds, 2).update(x64[a:a + 250], a))
    torch.testing.assert_close(merged.fit().score(x64, 0), whole.fit().score(x64, 0), rtol=1e-9, atol=1e-9)


def test_heldout_accuracy_within_one_point_of_the_logistic_probe():
    # one held-out split: train on 6,000 rows, test on 3,000, both probes where both fit (n >> d)
    x, y = _data(9000, 64, seed=2)
    te = np.arange(9000) >= 6000
    folds = te.astype(np.int64)  # fold 0 = test rows: its model is fitted on the training rows
    st = FoldStats(64, y[None], np.where(te, 0, 1), 2).update(x, 0)
    z = st.fit().score(x, 0)[:, 0, 0].numpy()
    acc_lda = ((z[te] > 0) == y[te]).mean()
    acc_log = LinearProbe(C=1.0).fit(x[~te].numpy(), y[~te]).score(x[te].numpy(), y[te])
    assert 0.7 < acc_log < 0.95, acc_log  # a real signal, not a trivial one
    assert abs(acc_lda - acc_log) <= 0.01, (acc_lda, acc_log)
    del folds
    # and through the readout table, cross-validated, with the control task and permuted labels
    acts = {"lm.0.resid": x[:3000], "lm.1.resid": 0.5 * x[:3000] + 1.0}
    a = probe_layers(acts, y[:3000], n_boot=0, progress=False)
    b = probe_layers(acts, y[:3000], n_boot=0, progress=False, estimator="lda")
    assert (b.mi_estimator == "lda").all()
    assert np.abs(a.accuracy.to_numpy() - b.accuracy.to_numpy()).max() <= 0.01
    assert np.abs(b.control_accuracy - 0.5).max() < 0.05 and np.abs(b.mi_perm_bits).max() < 0.05


def test_disk_store_shard_by_shard_equals_memory(tmp_path):
    x, y = _data(1000, 24, K=3, seed=3)
    xs = torch.stack([x, 2 * x - 3], 1)  # [n, 2 positions, d]
    mem = ActivationStore({"lm.0.resid": xs, "lm.1.resid": x.to(torch.bfloat16).float()},
                          meta={"positions": ["last", "image_mean"]})
    disk = mem.save(tmp_path / "store", shard_size=128)
    t_mem = stats_table(mem, y, n_boot=20)
    t_disk = stats_table(ActivationStore.open(tmp_path / "store"), y, n_boot=20)
    assert list(t_disk.point) == ["lm.0.resid", "lm.0.resid", "lm.1.resid"]
    assert list(t_disk.position[:2]) == ["last", "image_mean"] and pd.isna(t_disk.position[2])
    np.testing.assert_allclose(t_disk.accuracy, t_mem.accuracy)
    np.testing.assert_allclose(t_disk.mi_bits, t_mem.mi_bits, atol=1e-6)
    # the same scores as the scorer on the in-memory matrix
    folds = make_folds(y, None, cv=5, seed=0)
    tasks = label_tasks(y, None, True, True, 0)[0]
    Z = stats_heldout(disk, "lm.0.resid", tasks, folds, 3, position="image_mean")
    ref = StatsScorer().heldout(xs[:, 1][None].clone(), tasks, folds, 3, None).logits[0]
    np.testing.assert_allclose(Z.numpy(), ref, rtol=1e-4, atol=2e-4)  # shards of 128 rows vs 4,096: float32 rounding


def test_two_ranks_equal_one_process(tmp_path):
    x, y = _data(1200, 32, seed=4)
    store = ActivationStore({"lm.0.resid": x}).save(tmp_path / "store", shard_size=100)  # 12 shards, 6 per rank
    np.save(tmp_path / "y.npy", y)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parents[1])}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
           str(tmp_path / "store"), str(tmp_path / "y.npy"), str(tmp_path / "out")]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    r0, r1 = (torch.load(tmp_path / f"out.rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["rows"] == r1["rows"] == 600  # each rank read its own half of the shards
    folds = make_folds(y, None, cv=5, seed=0)
    tasks = label_tasks(y, None, True, True, 0)[0]
    one = FoldStats(32, tasks, folds, 2)
    for a in range(0, 1200, 100):
        one.update(x[a:a + 100], a)
    for r in (r0, r1):
        torch.testing.assert_close(r["count"], one.count)
        torch.testing.assert_close(r["G"], one.G, rtol=1e-10, atol=1e-7)
        torch.testing.assert_close(r["cls_s"], one.cls_s, rtol=1e-10, atol=1e-7)
    Z1 = stats_heldout(store, "lm.0.resid", tasks, folds, 2, distributed=False)
    torch.testing.assert_close(r0["Z"], Z1, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(r1["Z"], r0["Z"], rtol=0, atol=0)  # every rank holds the same result
    t1 = stats_table(store, y, n_boot=50, distributed=False)
    np.testing.assert_allclose(r0["accuracy"], t1.accuracy)
    np.testing.assert_allclose(r0["mi_bits"], t1.mi_bits, atol=1e-6)


def test_bad_input():
    from probekit.errors import InputError

    with pytest.raises(InputError, match="shrinkage"):
        FoldStats(3, np.zeros((1, 10), dtype=int) + np.arange(10) % 2, np.arange(10) % 2, 2).update(
            torch.randn(10, 3), 0).fit(shrinkage=2.0)
    with pytest.raises(InputError, match="do not fit"):
        FoldStats(3, np.zeros((1, 10), dtype=int), np.arange(10) % 2, 2).update(torch.randn(4, 3), 8)
