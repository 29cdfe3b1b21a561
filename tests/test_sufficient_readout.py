"""The sufficient-statistics readout in a scan: refused where its verdict would not hold, and a real verdict
(not the never-detected placeholder) where it runs."""

import numpy as np
import pytest
import torch

import probekit
from probekit.errors import InputError
from probekit.readout.sufficient import stats_table


def test_stats_table_detects_a_planted_signal_and_not_a_null():
    g = torch.Generator().manual_seed(0)
    n = 1200
    y = np.random.default_rng(0).integers(0, 2, n)
    null = torch.randn(n, 32, generator=g)
    planted = null.clone()
    planted[:, 0] += 0.6 * torch.as_tensor(2 * y - 1, dtype=torch.float32)  # a weak signal in one feature
    t = stats_table({"null": null, "planted": planted}, list(y), cv=5, seed=0, n_boot=200).set_index("point")
    assert t.test.eq("from CI").all()  # no NaN placeholder permutation nulls read as "never detected"
    assert t.leaks["planted"] and t.accuracy["planted"] > 0.58 and t.p_adjusted["planted"] < 1e-6
    assert not t.leaks["null"] and abs(t.accuracy["null"] - 0.5) < 0.05


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return probekit.load(probekit.tiny.build("llava", tmp_path_factory.mktemp("m") / "m"))


def test_the_sufficient_readout_is_refused_below_its_unit_count_before_any_forward(model, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a forward pass ran")

    monkeypatch.setattr(model.hf, "forward", boom)
    imgs = probekit.tiny.fixture_images(40, 32)
    with pytest.raises(InputError, match="at least 1000 independent units.*has 40") as e:
        probekit.scan(model, imgs, labels=[i % 2 for i in range(40)], readouts=["sufficient"], progress=False)
    assert "readouts=['probes']" in e.value.fix
    groups = [i // 2 for i in range(1200)]  # 600 groups of 2: the groups are the units
    with pytest.raises(InputError, match="has 600"):
        probekit.scan(model, probekit.tiny.fixture_images(1200, 16), labels=[g % 2 for g in groups], groups=groups,
                      readouts=["sufficient"], progress=False)


def test_the_sufficient_readout_fills_the_scan_table(model):
    from probekit.tiny import fixture_images

    imgs = fixture_images(1000, 16, seed=3)
    bright = [int(np.asarray(im).mean() > np.median([np.asarray(j).mean() for j in imgs[:200]])) for im in imgs]
    rep = probekit.scan(model, imgs, labels=bright, points="lm.*.resid", positions="image_mean",
                        readouts=["sufficient"], n_boot=100, progress=False, batch_size=64)
    t = rep.table
    assert set(t.mi_estimator) == {"lda"} and len(t) == model.n_layers
    assert t.leaks.all() and (t.accuracy > 0.65).all()  # brightness is in every layer's mean over image tokens (0.70, 0.69)
