"""Mutual-information estimates against a known ground truth and against each other."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import integrate, stats
from sklearn.feature_selection import mutual_info_classif

from probekit.errors import InputError
from probekit.readout.controls import control_labels
from probekit.readout.information import ksg_mi
from probekit.readout.layers import mutual_information
from probekit.readout.probes import probe_layers
from probekit.readout.table import COLUMNS

MU = 1.0


def true_mi_bits(mu: float) -> float:
    """I(X;Y) for Y ~ Bernoulli(1/2), X | Y ~ N(+-mu, 1) along one axis (other axes are noise
    and carry nothing): H(Y) - E[h(sigmoid(2 mu x))] with x from the mixture."""

    def integrand(x: float) -> float:
        p = 1.0 / (1.0 + math.exp(-min(2 * mu * x, 700)))
        h = 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
        return h * 0.5 * (stats.norm.pdf(x, mu) + stats.norm.pdf(x, -mu))

    return 1.0 - integrate.quad(integrand, -30, 30, limit=400)[0]


def gaussian_classes(n: int, d: int, mu: float, seed: int):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.standard_normal((n, d))
    x[:, 0] += mu * (2 * y - 1)
    return x, y


def test_true_mi_reference_value():
    # Monte Carlo check of the integral with 10^6 samples.
    rng = np.random.default_rng(0)
    x = rng.standard_normal(1_000_000) + MU * rng.choice([-1, 1], 1_000_000)
    p = 1 / (1 + np.exp(-2 * MU * x))
    mc = 1 + np.mean(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    assert abs(true_mi_bits(MU) - mc) < 2e-3
    assert 0.48 < true_mi_bits(MU) < 0.49


@pytest.mark.parametrize("seed", [0, 1])
def test_probe_bound_recovers_ground_truth(seed):
    truth = true_mi_bits(MU)
    x, y = gaussian_classes(5000, 10, MU, seed)
    df = mutual_information(torch.tensor(x, dtype=torch.float32), y, seed=seed, progress=False)
    row = df.iloc[0]
    assert row.mi_lo <= truth + 1e-9  # a lower bound: the CI covers the truth or lies below
    assert row.mi_lo <= row.mi_bits <= row.mi_hi
    assert abs(row.mi_bits - truth) < 0.05
    assert row.mi_hi - row.mi_lo < 0.08
    assert abs(row.mi_perm_bits) < 0.01 and abs(row.control_mi_bits) < 0.01
    assert row.entropy_bits == pytest.approx(1.0, abs=1e-3)
    assert row.log_loss == pytest.approx((row.entropy_bits - row.mi_bits) * math.log(2))


def test_independent_labels_give_no_information():
    """With labels independent of X the CI includes 0."""
    x, _ = gaussian_classes(5000, 10, MU, 0)
    y = np.random.default_rng(7).integers(0, 2, 5000)
    row = mutual_information(torch.tensor(x, dtype=torch.float32), y, progress=False).iloc[0]
    assert row.mi_lo <= 0.0 <= row.mi_hi
    assert abs(row.mi_bits) < 0.005 and abs(row.mi_perm_bits) < 0.005
    assert abs(row.accuracy - 0.5) < 0.03 and abs(row.selectivity) < 0.05


def test_null_mi_interval_is_calibrated():
    """Held-out null calibration: n=300, labels independent of X, 60 draws (6 label sets x 10
    points of independent noise). The 95% MI interval must contain 0 in >= 90% of draws: it
    does in 98% of these (96% of 300 draws); it did in 83% (79% of 300) when the bootstrap
    recomputed H(Y) on each resample, the rest lying entirely below 0. Independent labels leak in
    no more tables than the family-wise level allows."""
    draws = []
    for r in range(6):
        g = torch.Generator().manual_seed(100 + r)
        y = torch.randint(0, 2, (300,), generator=g)
        acts = {f"lm.{i}.resid": torch.randn(300, 8, generator=g) for i in range(10)}
        draws.append(mutual_information(acts, y, n_boot=300, control=False, seed=r, progress=False))
    df = pd.concat(draws, ignore_index=True)
    inside = (df.mi_lo <= 0) & (0 <= df.mi_hi)
    assert len(df) == 60 and inside.mean() >= 0.9, inside.mean()
    assert (df.mi_hi > df.mi_lo).all() and (df.mi_lo <= df.mi_bits).all() and (df.mi_bits <= df.mi_hi).all()
    # six null tables, each family-wise at 0.05 (the verdict's own calibration: tests/test_verdict_calibration.py):
    # two or more leaking tables would happen in 3% of runs
    tables_leaking = sum(bool(d.leaks.any()) for d in draws)
    assert tables_leaking <= 1 and (df.p_adjusted >= df.p_value).all(), tables_leaking


def test_ksg_matches_probe_bound_and_sklearn_in_1d():
    truth = true_mi_bits(MU)
    x, y = gaussian_classes(5000, 10, MU, 3)
    knn = ksg_mi(x[:, 0], y)
    probe = mutual_information(torch.tensor(x[:, :1]), y, n_boot=0, progress=False).mi_bits[0]
    assert abs(knn - probe) < 0.05 and abs(knn - truth) < 0.05
    # the same estimator as scikit-learn's 1-D one (which reports nats)
    assert knn == pytest.approx(mutual_info_classif(x[:, :1], y, random_state=0)[0] / math.log(2), abs=1e-6)
    # a noise dimension adds nothing; Ross's estimator in 2-D stays close
    assert abs(ksg_mi(x[:, :2], y) - truth) < 0.05
    # independent labels: about zero
    assert abs(ksg_mi(x[:, 0], np.random.default_rng(0).integers(0, 2, 5000))) < 0.02


def test_knn_estimator_option():
    x, y = gaussian_classes(3000, 10, MU, 4)
    acts = {"lm.0.resid": torch.tensor(x, dtype=torch.float32)}
    score = mutual_information(acts, y, estimator="knn", n_boot=0, progress=False)
    pca = mutual_information(acts, y, estimator="knn", n_components=1, n_boot=0, progress=False)
    probe = mutual_information(acts, y, n_boot=0, progress=False)
    assert list(score.columns) == list(probe.columns) == COLUMNS
    assert abs(score.mi_bits[0] - probe.mi_bits[0]) < 0.05
    assert score.mi_estimator[0] == "knn" and pca.mi_estimator[0] == "knn-pca1"
    assert np.isnan(score.mi_lo[0]) and abs(score.mi_perm_bits[0]) < 0.03
    assert pca.mi_bits[0] > 0.3  # x[:, 0] has the largest variance, so PC1 carries the signal
    with pytest.raises(InputError, match="estimator"):
        mutual_information(acts, y, estimator="mine", progress=False)


def test_probe_layers_reuses_mutual_information_columns():
    x, y = gaussian_classes(600, 6, MU, 5)
    acts = {"lm.0.resid": torch.tensor(x, dtype=torch.float32)}
    a = probe_layers(acts, y, n_boot=100, progress=False)
    b = mutual_information(acts, y, n_boot=100, progress=False)
    assert list(a.columns) == list(b.columns) == COLUMNS
    assert a.drop(columns=["position"]).equals(b.drop(columns=["position"]))


def test_group_bootstrap_is_wider_and_controls_follow_groups():
    rng = np.random.default_rng(0)
    G, per = 60, 20
    groups = np.repeat(np.arange(G), per)
    y = np.repeat(rng.integers(0, 2, G), per)  # label is a property of the group
    x = rng.standard_normal((G * per, 8)) + np.repeat(rng.standard_normal((G, 8)), per, 0)
    x[:, 0] += 0.8 * (2 * y - 1)
    acts = {"lm.0.resid": torch.tensor(x, dtype=torch.float32)}
    with_groups = mutual_information(acts, y, groups=groups, progress=False).iloc[0]
    without = mutual_information(acts, y, progress=False).iloc[0]
    assert with_groups.mi_hi - with_groups.mi_lo > without.mi_hi - without.mi_lo
    ctl = control_labels(y, groups, seed=0)
    assert all(len(set(ctl[groups == g])) == 1 for g in range(G))  # one label per group
    assert abs(ctl.mean() - y.mean()) <= per / len(y)  # class proportions kept
    assert not np.array_equal(ctl, y)
    perm = control_labels(y, None, seed=0)
    assert sorted(perm) == sorted(y)  # without groups: a permutation


def test_multiclass_mi_bound():
    rng = np.random.default_rng(0)
    n, K = 3000, 4
    y = rng.integers(0, K, n)
    x = rng.standard_normal((n, 5))
    x[:, :2] += 3.0 * np.stack([np.cos(y * np.pi / 2), np.sin(y * np.pi / 2)], 1)
    df = mutual_information({"lm.0.resid": torch.tensor(x, dtype=torch.float32)}, y, progress=False)
    row = df.iloc[0]
    assert row.n_classes == K and row.entropy_bits == pytest.approx(2.0, abs=0.01)
    assert 1.2 < row.mi_bits <= row.entropy_bits and row.accuracy > 0.85
    assert abs(ksg_mi(x[:, :2], y) - row.mi_bits) < 0.1
