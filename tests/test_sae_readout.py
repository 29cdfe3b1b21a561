"""The SAE-latent readout: the sparse scorer, the ladder organism (target material found, coin flip reads
nothing), the table's columns and verdict, the HTML page with thumbnails."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import probekit
from probekit.errors import InputError
from probekit.hooks.store import ActivationStore
from probekit.readout import probe_layers
from probekit.readout.sae_latents import SparseProbeScorer, fold_f_scores, sae_readout
from probekit.readout.table import COLUMNS
from probekit.report.sae_report import SAEReport
from probekit.sae import SAE, train_sae


def test_fold_f_scores_match_scipy():
    from scipy.stats import f_oneway

    g = torch.Generator().manual_seed(0)
    X = torch.randn(2, 60, 5, generator=g, dtype=torch.float64)
    codes = torch.arange(60) % 3
    X[0, :, 1] += codes.double()
    train = torch.arange(60) % 4 != 0
    F = fold_f_scores(X, codes, train, 3)
    for p in range(2):
        for j in range(5):
            x = X[p, train, j].numpy()
            want = f_oneway(*(x[codes[train].numpy() == c] for c in range(3))).statistic
            assert F[p, j].item() == pytest.approx(want, rel=1e-9)


def test_sparse_scorer_reads_a_label_held_by_few_features_and_never_chooses_on_the_test_fold(one_thread):
    g = torch.Generator().manual_seed(1)
    y = torch.arange(300) % 2
    x = torch.randn(300, 40, generator=g)
    x[:, 7] += 1.5 * (2 * y - 1)  # one feature carries the label
    t = probe_layers({"lm.0.resid": x}, y, estimator=SparseProbeScorer(k=2), n_boot=100, progress=False)
    assert list(t.columns) == COLUMNS and t.mi_estimator[0] == "sparse-2"
    assert t.accuracy[0] > 0.85 and bool(t.leaks[0])
    null = probe_layers({"lm.0.resid": torch.randn(300, 40, generator=g)}, y, estimator="sparse", n_boot=100,
                        progress=False)
    assert 0.4 < null.accuracy[0] < 0.6 and not bool(null.leaks[0])


@pytest.fixture(scope="module")
def ladder(tmp_path_factory, one_thread):
    """The ladder organism (LadderConfig.small, one seed), an SAE on its last layer trained on other scenes."""
    from probekit.data.scenes import make_scenes
    from probekit.studies.ladder.organism import LadderConfig, eval_scenes, train_organism

    cfg = LadderConfig.small(out=str(tmp_path_factory.mktemp("ladder")), seed=0)
    model, acc, _, _ = train_organism(cfg)
    assert acc["accuracy"] > 0.9
    train = make_scenes(800, size=cfg.image_size, seed=cfg.seed + 7, ask=cfg.ask)
    st = probekit.collect(model, [s.image for s in train], [s.question for s in train], points="lm.1.resid",
                          positions=("last", "image"), batch_size=64, progress=False)
    sae = train_sae(st, "lm.1.resid", None, d_sae=256, k=16, epochs=6, seed=0)
    sae.position = "last"
    ev = eval_scenes(cfg)
    store = probekit.collect(model, [s.image for s in ev], [s.question for s in ev], points="lm.1.resid",
                             positions="last", batch_size=64, progress=False)
    return sae, store, ev


def test_ladder_target_material_latents_are_found_and_the_coin_flip_reads_nothing(ladder):
    sae, store, ev = ladder
    material = sae_readout(store, sae, [str(s.meta["target_material"]) for s in ev], n_boot=200)
    t, lat = material.table, material.latents
    assert list(t.columns[:len(COLUMNS)]) == COLUMNS and t.point.tolist() == ["lm.1.resid"]
    assert bool(t.leaks[0]) and t.accuracy_lo[0] > t.chance[0] and t.accuracy[0] > 0.6
    hits = material.detected()
    assert len(hits) >= 1 and hits.accuracy.iloc[0] > 0.55
    assert (hits.p_adjusted < 0.05).all() and (hits.mi_bits > hits.mi_perm_bits).all()
    assert lat["rank"].tolist() == list(range(1, len(lat) + 1)) and (lat.fire_rate >= 0.01).all()
    best = int(hits.latent.iloc[0])
    assert len(material.top[("lm.1.resid", best)]) == 8
    control = sae_readout(store, sae, [str(s.meta["random"]) for s in ev], n_boot=200)
    assert not control.table.leaks.any() and not control.latents.leaks.any()
    assert control.table.mde_accuracy[0] < 0.65  # a null with power: 0.65 would have been detected


def test_sae_page_shows_thumbnails_of_the_top_images(ladder, tmp_path):
    sae, store, ev = ladder
    r = sae_readout(store, sae, [str(s.meta["target_material"]) for s in ev], n_boot=100, n_top=2, n_images=3)
    page = SAEReport(r, images=[s.image for s in ev], labels=[s.meta["target_material"] for s in ev]).save(
        tmp_path / "sae.html").read_text()
    assert page.count('style="margin:1px">') == sum(len(v) for v in r.top.values()) == 6
    assert "Latents that carry the label" in page and "lm.1.resid" in page and "would detect" in page


def test_bad_inputs():
    store = ActivationStore({"lm.0.resid": torch.randn(30, 4)})
    with pytest.raises(InputError, match="saes must be probekit SAEs"):
        sae_readout(store, [torch.zeros(2)], np.arange(30) % 2)
    with pytest.raises(InputError, match="20 labels for 30 stored samples"):
        sae_readout(store, SAE.random(4, 8, "topk", k=2, point="lm.0.resid"), np.arange(20) % 2)
    with pytest.raises(InputError, match="k must be a positive int"):
        SparseProbeScorer(k=0)
