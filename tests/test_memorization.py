"""The memorisation study: gradient cosine, membership metrics, controls, the small study end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import probekit
from probekit.data.synthetic import make_task
from probekit.data.watermark import apply_watermarks, make_profiles
from probekit.organisms.finetune import finetune
from probekit.organisms.gradients import GradientCosine, batch_order, flat_cosine
from probekit.organisms.mia import answer_logprobs, loss_score, mia_metrics, min_k_score, tpr_at_fpr
from probekit.studies.memorization.study import MemorizationConfig, positive_control, run_memorization, write_results
from probekit.organisms.unlearn import METHODS, unlearn
from probekit import tiny


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny.build("llava", tmp_path_factory.mktemp("mem") / "m", seed=0, image_size=96, patch_size=12)


def _train(p: float, n: int = 12):
    samples = make_task(n, size=96, seed=3)
    clean = [s.image for s in samples]
    imgs, _ = apply_watermarks(clean, make_profiles(4, 0), p, seed=1, mode="username")
    for s, im in zip(samples, imgs):
        s.image = im
    return samples, clean


def test_batch_order_matches_finetune_epochs():
    order = batch_order(5, 4, 2, seed=0)
    assert [len(b) for b in order] == [2, 2, 2, 2]
    assert sorted(order[0] + order[1] + [order[2][0]]) == [0, 1, 2, 3, 4]


def test_gradient_cosine_is_one_without_watermarks(ckpt):
    samples, clean = _train(0.0)
    m = probekit.load(ckpt)
    gc = GradientCosine(m, samples, clean, steps=3, batch_size=4, seed=0)
    finetune(m, samples, steps=3, batch_size=4, lr=1e-3, seed=0, progress=False, on_step=gc)
    assert len(gc.values) == 3
    assert all(abs(v - 1.0) < 1e-12 for v in gc.values), gc.values
    assert gc.summary()["marked_frac"] == 0.0


def test_gradient_cosine_below_one_with_watermarks_and_training_unchanged(ckpt):
    samples, clean = _train(1.0)
    a, b = probekit.load(ckpt), probekit.load(ckpt)
    plain = finetune(a, samples, steps=3, batch_size=4, lr=1e-3, seed=0, progress=False)
    gc = GradientCosine(b, samples, clean, steps=3, batch_size=4, seed=0)
    watched = finetune(b, samples, steps=3, batch_size=4, lr=1e-3, seed=0, progress=False, on_step=gc)
    assert all(v < 1.0 - 1e-9 for v in gc.values), gc.values
    assert all(-1.0 <= v <= 1.0 for v in gc.values)
    # measuring must not change the training trajectory: same losses, bit-identical weights
    assert plain == watched
    sa, sb = a.hf.state_dict(), b.hf.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_flat_cosine_hand_case():
    assert flat_cosine([torch.tensor([1.0, 0.0])], [torch.tensor([0.0, 2.0])]) == 0.0
    assert flat_cosine([torch.tensor([1.0]), torch.tensor([1.0])], [torch.tensor([-3.0]), torch.tensor([-3.0])]) == -1.0


def test_membership_metrics_hand_made():
    perfect = mia_metrics([0.1, 0.2, 0.3, 0.7, 0.8, 0.9], [0, 0, 0, 1, 1, 1], n_boot=100)
    assert perfect["auc"] == 1.0 and perfect["tpr_at_1fpr"] == 1.0
    assert perfect["auc_lo"] == 1.0 and perfect["tpr_lo"] == 1.0
    inverted = mia_metrics([0.9, 0.8, 0.1, 0.2], [0, 0, 1, 1], n_boot=20)
    assert inverted["auc"] == 0.0 and inverted["tpr_at_1fpr"] == 0.0
    # members 0.9, 0.8, 0.3; non-members 0.85, 0.1, 0.2: with no false positive allowed only 0.9 is caught
    y, s = np.array([1, 1, 1, 0, 0, 0]), np.array([0.9, 0.8, 0.3, 0.85, 0.1, 0.2])
    assert tpr_at_fpr(y, s, 0.01) == pytest.approx(1 / 3)
    assert mia_metrics(s, y, n_boot=10)["auc"] == pytest.approx(7 / 9)  # pairs ranked right: 3 + 2 + 2 of 9


def test_loss_and_min_k_scores():
    toks = [np.array([-1.0, -2.0, -3.0, -4.0, -5.0]), np.array([-0.5])]
    assert loss_score(toks).tolist() == [-3.0, -0.5]
    assert min_k_score(toks, 0.2).tolist() == [-5.0, -0.5]
    assert min_k_score(toks, 0.4).tolist() == [-4.5, -0.5]


def test_positive_control_is_found(ckpt, tmp_path):
    cfg = MemorizationConfig(out=str(tmp_path), n_train=96, control_steps=30, control_n_eval=128, n_boot=100)
    rows, _ = positive_control(cfg, 0, ckpt)
    tuned = rows[(rows.source == "residual") & rows.model.str.startswith("tuned")]
    best = tuned.loc[tuned.accuracy.idxmax()]
    assert best.accuracy_lo > best.chance + 0.2, best.to_dict()
    assert best.leaks and best.p_adjusted < 1e-3  # a finding after Holm over every point scanned


def test_small_study_end_to_end_negative_control(tmp_path):
    cfg = MemorizationConfig(out=str(tmp_path), ps=(0.0, 1.0), steps=6, n_train=48, n_eval=48, n_test=24,
                             controls=False, removal=True, n_boot=100)
    res = run_memorization(cfg)
    t = res["table"]
    for col in ("probe_accuracy", "direct_accuracy", "loss_auc"):
        assert {col, f"{col}_lo", f"{col}_hi"} <= set(t.columns)
        assert (t[f"{col}_lo"] <= t[col]).all() and (t[col] <= t[f"{col}_hi"]).all()
    assert set(t.model) == {"base", "p=0", "p=1"}
    g = res["gradient_cosine"]
    assert np.allclose(g[g.p == 0].cos_mean, 1.0, rtol=0, atol=1e-6) and (g[g.p > 0].cos_mean < 1.0 - 1e-6).all()  # p = 0: the same batch twice
    # negative control: nothing planted (p = 0), so seen vs unseen is at chance at every layer
    pr = res["probes"]
    neg = pr[(pr.model == "p=0") & (pr.source == "residual")]
    assert len(neg) and ((neg.accuracy_lo <= neg.chance) & (neg.chance <= neg.accuracy_hi)).all(), neg
    assert not neg.leaks.any() and (t[t.model == "p=0"].layers_leaking == 0).all()
    assert not math.isnan(res["removal"]["presence"].cost["kl_mean"])
    # the results page draws its figures offline (matplotlib) and shows every one of them
    docs = tmp_path / "docs"
    pngs = [p for p in write_results(res, docs / "results.md", docs / "img") if p.suffix == ".png"]
    assert {"results-gradient-cosine.png", "results-probes.png", "results-compare.png"} <= {p.name for p in pngs}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000 for p in pngs)
    page = (docs / "results.md").read_text()
    assert all(f"(img/{p.name})" in page for p in pngs)


@pytest.mark.parametrize("method", METHODS)
def test_unlearning_methods_run_and_raise_forget_loss(ckpt, method):
    forget, _ = _train(1.0, n=4)
    retain = make_task(4, size=96, seed=9)
    m = probekit.load(ckpt)
    before = -loss_score(answer_logprobs(m, forget)).mean()
    losses = unlearn(m, forget, retain, method, steps=3, batch_size=4, lr=1e-3)
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert -loss_score(answer_logprobs(m, forget)).mean() > before


def test_results_page_keeps_the_other_studies_sections():
    from probekit.studies.memorization.study import _other_sections

    page = ("# memorisation\nold numbers\n\n<!-- ladder -->\nL\n<!-- /ladder -->\n"
            "<!-- study:unlearning -->\nU\n<!-- /study:unlearning -->\n<!-- notes -->\nN\n<!-- /notes -->\n")
    kept = [page[a:b] for a, b in _other_sections(page)]
    assert kept == ["<!-- ladder -->\nL\n<!-- /ladder -->", "<!-- study:unlearning -->\nU\n<!-- /study:unlearning -->"]
    assert _other_sections("# memorisation only\n") == []
