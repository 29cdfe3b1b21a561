"""probekit._stats: the one home of intervals, bootstraps, p-values from intervals and Holm."""

import math

import numpy as np
import pytest
from scipy import stats

from probekit import _stats as S


def test_z95_is_the_normal_quantile():
    assert S.Z95 == pytest.approx(stats.norm.ppf(0.975), abs=1e-15)


def test_wilson_matches_published_values():
    # Newcombe (1998), Statistics in Medicine 17:857, table I: 81/263 -> 0.2553 to 0.3662;
    # 15/148 -> 0.0624 to 0.1605; 0/20 -> 0 to 0.1611
    for (k, n), (lo_ref, hi_ref) in {(81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605),
                                     (0, 20): (0.0, 0.1611)}.items():
        lo, hi = S.wilson(k, n)
        assert isinstance(lo, float) and lo == pytest.approx(lo_ref, abs=1e-4) and hi == pytest.approx(hi_ref, abs=1e-4)
    lo, hi = S.wilson(np.array([81, 15, 0]), np.array([263, 148, 20]))  # vectorised: the same numbers
    assert np.allclose(lo, [S.wilson(81, 263)[0], S.wilson(15, 148)[0], 0.0], atol=1e-15)
    assert S.wilson(20, 20) == (pytest.approx(1 - 0.1611, abs=1e-4), 1.0)
    assert S.wilson(0, 7)[0] == 0.0 and S.wilson(7, 7)[1] == 1.0  # exact ends, not 1e-17 off
    assert all(math.isnan(v) for v in S.wilson(0, 0))


def test_holm():
    assert S.holm([0.01, 0.04, 0.03, 0.5]).round(2).tolist() == [0.04, 0.09, 0.09, 0.5]
    out = S.holm([0.02, np.nan, 0.01])  # NaN is not a test: m = 2
    assert out[0] == pytest.approx(0.02) and np.isnan(out[1]) and out[2] == pytest.approx(0.02)
    assert S.holm([0.6, 0.7]).tolist() == [1.0, 1.0]  # capped at 1
    from probekit.readout.significance import holm

    assert holm is S.holm


def test_p_from_ci():
    se = 0.1 / S.Z95  # interval 0.5 .. 0.7 around 0.6
    assert S.p_from_ci(0.6, 0.5, 0.7, 0.5) == pytest.approx(0.025, abs=1e-12)  # z = Z95, one-sided
    assert S.p_from_ci(0.5, 0.4, 0.6, 0.5) == pytest.approx(0.5)
    assert S.p_from_ci(0.6 + se, 0.5 + se, 0.7 + se, 0.5) == pytest.approx(stats.norm.sf(1 + S.Z95))
    assert math.isnan(S.p_from_ci(0.6, 0.6, 0.6, 0.5))  # no width, no information
    assert S.p_from_ci(0.6, 0.6, 0.6, 0.5, min_se=1e-9) == 0.0
    p = S.p_from_ci(np.array([0.6, 0.5]), np.array([0.5, 0.4]), np.array([0.7, 0.6]), 0.5)
    assert p.shape == (2,) and p[0] == pytest.approx(0.025)
    assert S.p_difference_from_ci(0.1, 0.0, 0.2) == pytest.approx(0.05)  # two-sided
    assert S.p_difference_from_ci([0.0, 0.1], [0.0, 0.1], [0.0, 0.1]).tolist() == [1.0, 0.0]
    from probekit.organisms.facts_metrics import p_from_ci

    assert p_from_ci(0.8, 0.7, 0.9, 0.5) == pytest.approx(S.p_from_ci(0.8, 0.7, 0.9, 0.5))


def test_bootstrap_mean_covers_the_mean_of_a_known_distribution():
    # exponential with mean 2 (skewed): the percentile interval covers 2 in about 95% of samples
    covered = []
    for seed in range(60):
        x = np.random.default_rng([7, seed]).exponential(2.0, size=200)
        m, lo, hi = S.bootstrap_mean(x, seed=seed, n_boot=1000)
        assert lo < m < hi and m == pytest.approx(x.mean())
        covered.append(lo <= 2.0 <= hi)
    assert 0.85 <= np.mean(covered) <= 1.0
    # scipy.stats.bootstrap draws the same resamples as the hand-written helper it replaced
    x = np.random.default_rng(3).exponential(size=50)
    means = x[np.random.default_rng(5).integers(0, 50, size=(2000, 50))].mean(1)
    _, lo, hi = S.bootstrap_mean(x, seed=5, n_boot=2000)
    assert lo == pytest.approx(np.quantile(means, 0.025), abs=1e-12)
    assert hi == pytest.approx(np.quantile(means, 0.975), abs=1e-12)
    assert S.bootstrap_mean([3.0]) == (3.0, 3.0, 3.0) and all(math.isnan(v) for v in S.bootstrap_mean([]))


def test_cluster_bootstrap_covers_the_mean_and_widens_for_clusters():
    rng = np.random.default_rng(0)
    # 50 clusters of 8 samples sharing a cluster effect: mean 1, strongly correlated within
    effect = rng.normal(0, 1, size=50)
    x = 1.0 + np.repeat(effect, 8) + 0.1 * rng.normal(size=400)
    clusters = np.repeat(np.arange(50), 8)
    sums = np.zeros((50, 1)); np.add.at(sums, clusters, x[:, None])
    lo_c, hi_c = S.cluster_bootstrap(sums, np.bincount(clusters), n_boot=2000, seed=0)
    lo_i, hi_i = S.cluster_bootstrap(x[:, None], np.ones(400), n_boot=2000, seed=0)
    assert lo_c[0] < x.mean() < hi_c[0] and lo_c[0] <= 1.0 <= hi_c[0]
    assert (hi_c - lo_c)[0] > 2 * (hi_i - lo_i)[0]  # samples of a cluster are not independent
    # several statistics on the same resamples, blocks of resamples give the same answer
    both = S.cluster_bootstrap(np.c_[sums, 2 * sums], np.bincount(clusters), n_boot=2000, seed=0)
    assert np.allclose(both[0], [lo_c[0], 2 * lo_c[0]]) and np.allclose(both[1], [hi_c[0], 2 * hi_c[0]])


def test_group_permutations_are_one_label_per_group_and_reproducible():
    """One label per group: every permutation gives each group one label and keeps the class counts; the same
    seed gives the same draws (the verdict's rows share them)."""
    from probekit._stats import permutations

    groups = np.repeat(np.arange(40), 3)
    codes = (groups % 2).astype(int)
    idx = permutations(codes, groups, 50, seed=2)
    assert (idx[0] == np.arange(120)).all() and (idx == permutations(codes, groups, 50, seed=2)).all()
    perm = codes[idx]
    assert (perm.reshape(51, 40, 3).std(2) == 0).all() and (perm.sum(1) == codes.sum()).all()
    assert len({tuple(r) for r in perm[1:]}) > 45


def test_sign_flip_null_and_shift():
    from probekit._stats import min_detectable_shift, sign_flip_null

    d = np.array([[1.0, -1.0, 2.0, np.nan], [0.5, 0.5, 0.5, 9.0]])
    null = sign_flip_null(d, n_flip=30, seed=0)
    assert null.shape == (2, 31) and np.allclose(null[:, 0], [2 / 3, 0.5])  # the NaN unit left out of both rows
    assert (null >= 0).all() and (null <= np.abs(d[:, :3]).mean(1, keepdims=True) + 1e-12).all()
    assert np.isnan(min_detectable_shift(1.0, 1, 1)) and min_detectable_shift(1.0, 400, 10) < min_detectable_shift(1.0, 100, 10)
