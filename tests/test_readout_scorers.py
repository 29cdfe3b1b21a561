"""The readout seam: held-out scorers in a registry, one options value, the table built from scores."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from probekit._stats import wilson
from probekit.errors import InputError
from probekit.readout import ReadoutOptions, mutual_information, probe_layers, scorers
from probekit.readout.controls import label_tasks
from probekit.readout.leakage import leakage
from probekit.readout.scorers import HeldoutScores, Scorer, register_scorer


class Oracle(Scorer):
    """Toy readout: every sample's probability of class 1 is 0.9 when feature 0 is +1, 0.1
    when it is -1, for every label set (it ignores the labels, so it cannot fit a control)."""

    calls: list = []  # what every instance was given (the registry makes its own instance)

    def heldout(self, X, tasks, folds, n_classes, options, callback=None):
        Oracle.calls.append({"X": tuple(X.shape), "tasks": tasks.shape, "folds": sorted(set(folds.tolist())),
                           "n_classes": n_classes, "cv": options.cv})
        z = X[..., 0].double().numpy() * math.log(9.0)  # log-odds of class 1: +-log 9
        P, T = X.shape[0], tasks.shape[0]
        return HeldoutScores(np.broadcast_to(z[:, None, :, None], (P, T, X.shape[1], 1)).copy())


@pytest.fixture
def registry(monkeypatch):
    """A copy of the scorer registry, so a toy registered here does not outlive the test."""
    monkeypatch.setattr(scorers, "SCORERS", dict(scorers.SCORERS))
    return scorers.SCORERS


def _data(n=200):
    y = np.arange(n) % 2
    g = torch.Generator().manual_seed(0)
    acts = {f"lm.{i}.resid": torch.randn(n, 3, generator=g) for i in range(2)}
    for x in acts.values():
        x[:, 0] = torch.as_tensor(2.0 * y - 1)
    return acts, y


def test_a_registered_scorer_is_used_by_probe_layers_end_to_end(registry):
    register_scorer("oracle", Oracle)
    assert registry["oracle"] is Oracle and Oracle.name == "oracle"
    acts, y = _data()
    Oracle.calls.clear()
    df = probe_layers(acts, y, estimator="oracle", n_boot=200, calibrate=False, progress=False)
    assert Oracle.calls == [{"X": (2, 200, 3), "tasks": (3, 200), "folds": [0, 1, 2, 3, 4], "n_classes": 2, "cv": 5}]

    # the columns, computed by hand from the toy's probabilities
    tasks, _ = label_tasks(y, None, control=True, permutation=True, seed=0)
    q_ctl = np.where(tasks[1] == y, 0.9, 0.1)  # probability the toy gives each control label
    q_perm = np.where(tasks[2] == y, 0.9, 0.1)
    for row in df.itertuples():
        assert row.accuracy == 1.0 and (row.accuracy_lo, row.accuracy_hi) == pytest.approx(wilson(200, 200))
        assert row.log_loss == pytest.approx(-math.log(0.9), abs=1e-12)
        assert row.mi_bits == pytest.approx(1 + math.log2(0.9), abs=1e-12)  # H(Y) = 1 bit minus CE
        # every sample gains the same bits, so the bootstrap interval has no width
        assert row.mi_lo == pytest.approx(row.mi_bits, abs=1e-12) and row.mi_hi == pytest.approx(row.mi_bits, abs=1e-12)
        assert row.control_accuracy == pytest.approx(np.mean(tasks[1] == y))
        assert row.selectivity == pytest.approx(1 - np.mean(tasks[1] == y))
        assert row.control_mi_bits == pytest.approx(1 + np.log2(q_ctl).mean(), abs=1e-12)
        assert row.mi_perm_bits == pytest.approx(1 + np.log2(q_perm).mean(), abs=1e-12)
        # the verdict is the table's permutation test, whatever the scorer (one verdict for every readout):
        # the toy's labels are planted in the data, far above all 1,000 permutations
        assert row.p_value == pytest.approx(1 / 1001) and row.p_adjusted == pytest.approx(1 / 1001) and row.leaks
        assert row.mi_estimator == "oracle" and row.temperature == 1.0 and row.n_iter == 0 and row.converged

    # the same scorer as an instance, through mutual_information and leakage
    mi = mutual_information(acts, y, estimator=Oracle(), n_boot=0, calibrate=False, progress=False)
    assert mi.mi_bits.tolist() == pytest.approx(df.mi_bits.tolist(), abs=1e-12) and mi.mi_lo.isna().all()
    leak = leakage(acts, y, estimator="oracle", n_boot=0, calibrate=False, progress=False)
    assert (leak.mi_estimator == "oracle").all() and leak.accuracy.tolist() == [1.0, 1.0]


def test_unknown_scorers_and_options_are_named():
    acts, y = _data(40)
    with pytest.raises(InputError, match="estimator must be one of .*'knn'.*'probe'.*'sklearn'"):
        probe_layers(acts, y, estimator="mlp", progress=False)
    with pytest.raises(InputError, match="unknown readout option.*'n_bot'"):
        probe_layers(acts, y, n_bot=10, progress=False)
    with pytest.raises(InputError, match="n_boot"):
        ReadoutOptions(n_boot=-1)
    with pytest.raises(InputError, match="Scorer subclass"):
        register_scorer("bad", dict)


def test_options_value_is_one_setting_passed_through():
    acts, y = _data(120)
    opts = ReadoutOptions(cv=3, n_boot=50, seed=1, progress=False)
    merged = ReadoutOptions.of(opts, cv=5, n_boot=20)  # cv=5 is the default: it does not override
    assert (merged.cv, merged.n_boot, merged.seed) == (3, 20, 1)
    a = probe_layers(acts, y, options=opts)
    b = probe_layers(acts, y, cv=3, n_boot=50, seed=1, progress=False)
    cols = ["accuracy", "accuracy_lo", "mi_bits", "mi_lo", "mi_hi", "mi_perm_bits", "control_accuracy"]
    np.testing.assert_array_equal(a[cols].to_numpy(), b[cols].to_numpy())


def test_sklearn_scorer_matches_the_batched_probe():
    g = torch.Generator().manual_seed(1)
    y = np.arange(150) % 2
    x = torch.randn(150, 4, generator=g)
    x[:, 0] += torch.as_tensor(1.5 * y)
    fast = probe_layers({"lm.0.resid": x}, y, n_boot=0, progress=False, dtype=torch.float64, tol=1e-8)
    slow = probe_layers({"lm.0.resid": x}, y, n_boot=0, progress=False, estimator="sklearn", tol=1e-8)
    assert slow.mi_estimator[0] == "sklearn" and slow.converged[0]
    assert slow.accuracy[0] == fast.accuracy[0] and slow.control_accuracy[0] == fast.control_accuracy[0]
    assert slow.mi_bits[0] == pytest.approx(fast.mi_bits[0], abs=1e-4)
    assert slow.log_loss[0] == pytest.approx(fast.log_loss[0], abs=1e-4)


def test_solver_restores_the_thread_count_even_on_error(monkeypatch):
    from probekit.readout import _solver

    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []
        monkeypatch.setattr(_solver, "_solve", lambda *a, **k: (seen.append(torch.get_num_threads()), 1 / 0))
        X = torch.randn(1, 20, 3)
        with pytest.raises(ZeroDivisionError):
            _solver.solve(X, torch.zeros(1, 1, 20, dtype=torch.long), torch.ones(1, 1, 20), 2, 1.0)
        assert seen == [1]  # a small solve runs single-threaded ...
        assert torch.get_num_threads() == 2  # ... and gives the caller its setting back
    finally:
        torch.set_num_threads(old)


def test_importing_probekit_changes_no_environment():
    code = ("import os; before = dict(os.environ); import probekit, probekit.readout, probekit.readout.probes; "
            "changed = {k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)}; "
            "print(sorted(changed))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
