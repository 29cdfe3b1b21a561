"""Statistics live in probekit._stats: the intervals and resampling that used to be written inline in the
studies give the same numbers, bit for bit, from their one home, and no module outside it computes a
t quantile or a percentile of its own."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from probekit import _stats as S
from probekit.organisms.mia import mia_metrics

ROOT = Path(__file__).resolve().parents[1] / "probekit"


def _old_t_ci(x):  # experiments/watermark_study.py:_t_ci and memorization.py:_ci_over_seeds, as they were
    x = np.asarray(x, float)
    m = float(x.mean())
    if len(x) < 2:
        return m, math.nan, math.nan
    h = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return m, m - h, m + h


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17])
def test_t_interval_is_the_old_inline_interval(n):
    x = np.random.default_rng(n).normal(size=n)
    got, old = S.t_interval(x), _old_t_ci(x)
    assert got[0] == old[0]
    assert (math.isnan(got[1]) and math.isnan(old[1])) if n < 2 else got == old
    sd, k = np.array([0.1, 0.3, 0.0]), np.array([5, 2, 1])
    ladder = stats.t.ppf(0.5 + 0.95 / 2, np.maximum(k - 1, 1)) * sd / np.sqrt(k)  # organisms/ladder.py's
    assert np.array_equal(S.t_half_width(sd, k), ladder)


def test_bootstrap_indices_and_percentiles_are_the_old_draws():
    errs, lens = np.random.default_rng(1).integers(0, 3, 200).astype(float), np.full(200, 6.0)
    idx = np.random.default_rng(12345).integers(0, 200, size=(1000, 200))  # organisms/ocr.py's, as it was
    boots = 1 - errs[idx].sum(1) / lens[idx].sum(1)
    new = S.bootstrap_indices(200, 1000, np.random.default_rng(12345))
    assert np.array_equal(new, idx)
    assert S.percentile_interval(boots) == (float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975)))
    with_nan = np.r_[boots, np.nan]
    assert np.array_equal(np.array(S.percentile_interval(with_nan, nan=True)), np.nanpercentile(with_nan, [2.5, 97.5]))


def _old_draw_weights(member, units, n_boot, seed):  # readout/score_test.py:_draw_weights, as it was
    rng = np.random.default_rng([seed, 13])
    w = np.zeros((n_boot, len(member)))
    for c in (True, False):
        ids = np.unique(units[member == c])
        counts = np.stack([np.bincount(rng.integers(0, len(ids), len(ids)), minlength=len(ids)) for _ in range(n_boot)])
        col = {u: j for j, u in enumerate(ids)}
        idx = np.array([col.get(u, -1) for u in units])
        sel = (member == c) & (idx >= 0)
        w[:, sel] = counts[:, idx[sel]]
    return w


def test_unit_weights_and_unit_resample_are_the_old_group_bootstrap():
    rng = np.random.default_rng(3)
    member = rng.random(60) < 0.5
    groups = rng.integers(0, 12, 60)
    assert np.array_equal(S.unit_weights(member, groups, 50, 7), _old_draw_weights(member, groups, 50, 7))
    # experiments/membership.py:mia_metrics's resampling, as it was, against the function it now calls
    score = rng.normal(size=60) + member
    y = member.astype(int)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    units = [[idx[groups[idx] == k] for k in dict.fromkeys(groups[idx].tolist())] for idx in (pos, neg)]
    r_old, r_new = np.random.default_rng(0), np.random.default_rng(0)
    for _ in range(20):
        old = np.concatenate([u[j] for u in units for j in r_old.integers(0, len(u), len(u))])
        assert np.array_equal(S.unit_resample(units, r_new), old)
    m = mia_metrics(score, member, n_boot=200, groups=groups)
    assert 0.5 < m["auc_lo"] < m["auc"] < m["auc_hi"] <= 1.0


def test_z_power_and_mde_agree():
    assert S.z_power(S.min_detectable_z_effect(0.07, 0.01), 0.07, 0.01) == pytest.approx(0.8)
    assert S.z_power(0.0, 0.07, 0.05) == pytest.approx(0.05)


def test_no_t_quantile_or_percentile_outside_the_statistics_module():
    pattern = re.compile(r"stats\.t\.ppf|np\.(nan)?quantile\(|np\.(nan)?percentile\(")
    found = [f"{p.relative_to(ROOT)}:{i}" for p in ROOT.rglob("*.py") if p.parent.name != "_stats"
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []
