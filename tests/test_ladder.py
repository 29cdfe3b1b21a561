"""Apple's leakage ladder: scenes, the readout ladder, Holm verdicts, scan(ladder=...) and the organism."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import probekit
from probekit.data.scenes import ATTRIBUTES, make_scenes
from probekit.errors import InputError
from probekit.report.figures import ladder_figure
from probekit._stats import min_detectable_accuracy
from probekit.readout.ladder import ladder_features, ladder_verdict, leakage_ladder, pca_features


# ---------------------------------------------------------------- scenes


def test_scenes_are_deterministic_balanced_and_labelled():
    a, b = make_scenes(40, seed=3), make_scenes(40, seed=3)
    assert [np.asarray(x.image).tobytes() == np.asarray(y.image).tobytes() for x, y in zip(a, b)] == [True] * 40
    assert [x.answer for x in a].count("Yes") == 20
    for s in a:
        assert set(ATTRIBUTES) <= set(s.meta)
        assert 3 <= s.meta["n_objects"] <= 9 and s.image.size == (60, 60)
        colour = s.question.split()[-1].rstrip("?")
        assert (colour == s.meta["target_colour"]) == (s.answer == "Yes")
    assert {s.meta["corruption"] for s in a} == {"none", "blur", "noise"}
    fixed = make_scenes(10, seed=0, ask="blue")
    assert {s.question for s in fixed} == {"Is the centre object blue?"}
    assert all((s.meta["target_colour"] == "blue") == (s.answer == "Yes") for s in fixed)
    # the negative control comes from its own generator: same coin flips whatever the scenes look like
    assert [s.meta["random"] for s in make_scenes(30, seed=5, p_corrupt=0.0)] == [s.meta["random"] for s in make_scenes(30, seed=5)]


@pytest.mark.parametrize("kw, word", [({"n": 0}, "n must"), ({"size": 20}, "too small"), ({"grid": 4}, "odd"),
                                      ({"colours": ("red", "pink")}, "colours"), ({"ask": "green"}, "ask"),
                                      ({"p_corrupt": 2.0}, "p_corrupt")])
def test_scenes_bad_input(kw, word):
    with pytest.raises(InputError, match=word):
        make_scenes(**{"n": 4, **kw})


# ---------------------------------------------------------------- the verdict and the readout ladder


def test_ladder_verdict_is_the_one_verdict_with_its_power():
    """Rows far above their permutations are detected (adjusted p 1/(B+1)); rows inside them are not, and the
    null line gives the accuracy the test would have detected."""
    rng = np.random.default_rng(0)
    null = rng.normal(size=(2, 401))
    null[0, 0] = 10.0
    t = pd.DataFrame({"source": "residual", "point": ["a", "b"], "k": np.nan, "accuracy": [0.70, 0.51],
                      "chance": 0.5, "n": 400, "n_units": 400, "perm_null": list(null)})
    out, verdict = ladder_verdict(t)
    assert out.p_adjusted[0] == 1 / 401 and out.p_adjusted[1] > 0.05
    assert list(out.detected) == [True, False] and verdict.startswith("detected in 1 of 2 rows (permutation test")
    nothing = ladder_verdict(t.assign(perm_null=list(rng.normal(size=(2, 401)))))[1]
    mde = float(min_detectable_accuracy(400, 0.5, 2))
    assert nothing == f"nothing detected (would have detected accuracy >= {mde:.2f} at 80% power) in 2 rows " \
                      "(permutation test, family-wise alpha 0.05)"
    assert 0.55 < mde < 0.6
    with pytest.raises(InputError, match="alpha"):
        ladder_verdict(t, alpha=1.5)


def _toy(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    logits = torch.randn(n, 40, generator=g)
    logits[:, 7] += 1.5 * y  # the label moves the "Yes" logit only
    return {"lm.0.resid": torch.randn(n, 6, generator=g) + 1.5 * y[:, None], "lm.1.resid": torch.randn(n, 6, generator=g),
            "logits": logits}, y


def test_ladder_features_k2_is_the_answer_tokens():
    acts, _ = _toy()
    f = ladder_features(acts, ks=(2, 5, None), answer_ids=[7, 3])
    logp = torch.log_softmax(acts["logits"], -1)
    assert torch.equal(f[("logits", "logits", 2.0)], logp[:, [7, 3]])
    assert torch.equal(f[("logits", "logits", 40.0)], logp)
    assert f[("logits", "logits", 5.0)].shape[1] > 5  # values plus which tokens they are
    assert ("residual", "lm.1.resid", ) == tuple(k[:2] for k in f if k[1] == "lm.1.resid")[0]
    with pytest.raises(InputError, match="answer_ids"):
        ladder_features(acts, answer_ids=[99])
    with pytest.raises(InputError, match="ks"):
        ladder_features(acts, ks=(0,))


def test_leakage_ladder_finds_the_planted_label_and_not_a_random_one():
    acts, y = _toy()
    t = leakage_ladder(acts, y, ks=(2, 10, None), answer_ids=[7, 3], n_boot=100, progress=False)
    assert list(t.source) == ["residual", "residual", "logits", "logits", "logits"]
    k2 = t[(t.source == "logits") & (t.k == 2)].iloc[0]
    assert k2.accuracy_lo > 0.65 and k2.n_features == 2
    assert ladder_verdict(t[t.point == "lm.1.resid"])[1].startswith("nothing detected")
    coin = np.random.default_rng(1).integers(0, 2, len(y))
    t0, verdict = ladder_verdict(leakage_ladder(acts, coin, ks=(2, 10, None), answer_ids=[7, 3], n_boot=100, progress=False))
    assert verdict.startswith("nothing detected") and t0.accuracy.max() < 0.6
    fig = ladder_figure(t)
    assert [tr.name for tr in fig.data] == ["residual", "logits"]
    assert list(fig.data[1].x) == ["2", "10", "full"]


class _Lens:
    """A fixed linear 'lens': layer i decodes h through its own matrix to 40 logits."""

    def __init__(self):
        g = torch.Generator().manual_seed(5)
        self.w = {f"lm.{i}.resid": torch.randn(6, 40, generator=g) for i in range(2)}

    def decode(self, h, point):
        return h.float() @ self.w[point]


def test_matched_rungs_have_the_dimension_of_the_output_top_k():
    acts, y = _toy()
    lens = _Lens()
    f = ladder_features(acts, lens=lens, ks=(2, 5, None), answer_ids=[7, 3], matched=True)
    for p in ("lm.0.resid", "lm.1.resid"):
        assert f[("residual-pca", p, 2.0)].shape == (300, 2) and f[("residual-pca", p, 5.0)].shape == (300, 5)
        lp = torch.log_softmax(acts[p] @ lens.w[p], -1)
        assert torch.allclose(f[("tuned-lens-topk", p, 2.0)], lp[:, [7, 3]])  # k = 2: the answer tokens, as the output's
        top5 = f[("tuned-lens-topk", p, 5.0)]
        assert torch.allclose(top5[:, :5], lp.topk(5, -1).values)  # the 5 sorted log-probs, then which tokens
    assert not any(k[0] == "residual-pca" and k[2] == 40.0 for k in f)  # no matched rung for the full vocabulary
    t = leakage_ladder(acts, y, lens=lens, ks=(2, 5), answer_ids=[7, 3], n_boot=100, progress=False, matched=True)
    assert set(t.source) == {"residual", "tuned-lens", "logits", "residual-pca", "tuned-lens-topk"}
    pca = t[t.source == "residual-pca"]
    assert sorted(pca.n_features.unique()) == [2, 5] and list(pca.layer.unique()) == [0, 1]
    # the planted label lives in every coordinate of lm.0: its first principal components carry it
    assert pca[(pca.point == "lm.0.resid") & (pca.k == 2)].accuracy.iloc[0] > 0.8
    assert ladder_verdict(t)[1].count("residual-pca lm.0.resid k=") == 2


def test_pca_features_are_the_principal_components():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(500, 3, generator=g) * torch.tensor([5.0, 2.0, 0.5])
    rot, _ = torch.linalg.qr(torch.randn(3, 3, generator=g))
    x = z @ rot.T + 10.0
    f = pca_features(x, 2)
    sd = f.std(0)
    assert f.shape == (500, 2) and abs(float(f.mean(0).abs().max())) < 1e-4
    assert 4.5 < sd[0] < 5.5 and 1.8 < sd[1] < 2.2  # the two largest spreads, in order
    assert abs(float(torch.corrcoef(f.T)[0, 1])) < 1e-4


def test_seed_summary_is_a_t_interval_over_seeds():
    from scipy import stats

    from probekit.studies.ladder.organism import seed_summary

    rows = [dict(attribute="a", source="residual", point="lm.0.resid", layer=0.0, k=np.nan, k_label="", seed=s,
                 accuracy=acc, chance=0.5, detected=det, n_features=64, mi_bits=0.1)
            for s, acc, det in ((0, 0.60, True), (1, 0.70, True), (2, 0.68, False))]
    out = seed_summary(pd.DataFrame(rows)).iloc[0]
    half = stats.t.ppf(0.975, 2) * np.std([0.60, 0.70, 0.68], ddof=1) / np.sqrt(3)
    assert out.accuracy == pytest.approx(0.66) and out.n_seeds == 3 and out.seeds_detected == 2
    assert out.acc_lo == pytest.approx(0.66 - half) and out.acc_hi == pytest.approx(0.66 + half)
    assert np.isnan(out.k) and out.layer == 0


# ---------------------------------------------------------------- scan(ladder=...)


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    return probekit.load(probekit.tiny.build("llava", tmp_path_factory.mktemp("m") / "m", image_size=60, patch_size=20))


def test_scan_ladder_rungs_and_json_round_trip(tiny_llava):
    from probekit.readout.lens import TunedLens

    scenes = make_scenes(40, seed=0)
    imgs, prompts = [s.image for s in scenes], [s.question for s in scenes]
    # a short tuned lens keeps the test to seconds (scan fits a 300-step one when given tuned_lens=True)
    tl = TunedLens.fit(tiny_llava, probekit.collect(tiny_llava, imgs, prompts, points="lm.*.resid", progress=False),
                       steps=10, progress=False)
    r = probekit.scan(tiny_llava, imgs, labels=[s.meta["target_size"] for s in scenes], prompt=prompts, cv=3,
                      positions="last", topk=None, n_boot=50, progress=False, ladder=True,
                      answer_tokens=("Yes", "No"), tuned_lens=tl)
    lad = r.ladder
    assert set(lad.source) == {"residual", "tuned-lens", "logits"}
    assert sorted(lad.loc[lad.source == "logits", "n_features"])[0] == 2
    assert list(lad.loc[lad.source == "logits", "k_label"]) == ["2", "5", "10", "50", "full"]  # ladder=True: the default sweep
    assert len(lad[lad.source == "residual"]) == tiny_llava.n_layers
    assert "ladder" in r.figures()
    back = probekit.ScanReport.from_json(r.to_json())
    cols = ["point", "source", "k", "k_label", "n_features", "accuracy", "accuracy_lo", "accuracy_hi", "mi_bits"]
    # (all columns but `temperature`: JSON has no inf, an uninformative probe's inf comes back as NaN)
    assert back.ladder[cols].equals(lad[cols])
    assert json.loads(r.to_json())["settings"]["answer_tokens"] == ["Yes", "No"]


def test_scan_ladder_bad_settings_fail_before_any_forward(tiny_llava, monkeypatch):
    import sys

    import probekit.hooks.collect  # noqa: F401  (lazily imported by probekit; load it to patch it)

    # scan imports collect when called (probekit is imported lazily), so patch it where scan takes it from
    monkeypatch.setattr(sys.modules["probekit.hooks.collect"], "collect", lambda *a, **k: pytest.fail("collected before checking"))
    imgs = [s.image for s in make_scenes(10)]
    with pytest.raises(InputError, match="single tokens|not one"):
        probekit.scan(tiny_llava, imgs, labels=[i % 2 for i in range(10)], cv=2, ladder=(2,), answer_tokens=("Yes", "metallic"))
    with pytest.raises(InputError, match="last"):
        probekit.scan(tiny_llava, imgs, labels=[i % 2 for i in range(10)], cv=2, ladder=(2,), positions="image_mean")
    with pytest.raises(InputError, match="ks"):
        probekit.scan(tiny_llava, imgs, labels=[i % 2 for i in range(10)], cv=2, ladder=(-1,))
    with pytest.raises(InputError, match="no labels"):
        probekit.scan(tiny_llava, imgs, ladder=(2,))
    with pytest.raises(InputError, match="tuned_lens"):
        probekit.scan(tiny_llava, imgs, labels=[i % 2 for i in range(10)], cv=2, ladder=(2,), tuned_lens="yes")


# ---------------------------------------------------------------- the organism (CI version)


@pytest.fixture(scope="module")
def organism(tmp_path_factory):
    from probekit.studies.ladder.organism import LadderConfig, run_ladder

    return run_ladder(LadderConfig.small(out=str(tmp_path_factory.mktemp("ladder"))))


def test_organism_learns_yes_no_and_leaks_material_but_not_a_coin_flip(organism):
    acc = organism["task_accuracy"]
    assert acc["accuracy_lo"] > 0.85 and acc["n"] == 200 and min(acc["per_seed"]) > 0.85, acc  # both seeds learned it
    assert organism["untrained_accuracy"]["accuracy"] < 0.7
    t = organism["table"]
    mat = t[t.attribute == "target_material"]
    chance = mat.chance.iloc[0]
    # the target's material, never asked about, is read from the residual stream with a wide margin (measured 0.68 vs 0.51)
    resid = mat[mat.source == "residual"]
    assert resid.accuracy.max() > chance + 0.10 and organism["verdicts"]["target_material"]["residual"].startswith("detected")
    # ... and from the output alone: the top-5 log-probabilities (measured 0.68)
    top5 = mat[(mat.source == "logits") & (mat.k == 5)].iloc[0]
    assert top5.detected and top5.p_adjusted < 0.05
    coin = t[t.attribute == "random"]
    assert organism["verdicts"]["random"]["all"].startswith("nothing detected in any of 2 seeds")
    # nothing near significance in any seed (maxT does not inflate a null row's p by the family size as Holm
    # did, so the adjusted p-values of a null spread over (0.05, 1], measured 0.42 at the lowest)
    assert coin.accuracy.max() < coin.chance.iloc[0] + 0.05 and bool((coin.p_adjusted > 0.2).all())
    assert not coin.detected.any()
    # two seeds, every rung of each (matched rungs included), summarised over seeds
    assert sorted(t.seed.unique()) == [0, 1]
    s = organism["summary"]
    assert set(s.n_seeds) == {2} and {"residual-pca", "tuned-lens-topk"} <= set(s.source)
    r = s[(s.attribute == "target_material") & (s.source == "logits") & (s.k == 5)].iloc[0]
    per = t[(t.attribute == "target_material") & (t.source == "logits") & (t.k == 5)].accuracy
    assert r.accuracy == pytest.approx(per.mean()) and r.acc_lo <= r.accuracy <= r.acc_hi
    assert organism["verdicts"]["target_material"]["residual"].startswith("detected in 2 of 2 seeds")


def test_organism_docs_section_is_replaced_in_place(organism, tmp_path):
    from probekit.studies.ladder.organism import write_section

    md = tmp_path / "results.md"
    md.write_text("# other study\n\nkept text\n")
    write_section(organism, md, tmp_path / "img")
    write_section(organism, md, tmp_path / "img")
    text = md.read_text()
    assert text.startswith("# other study\n\nkept text\n") and text.count("<!-- ladder -->") == 1
    assert "Held-out yes/no accuracy" in text and "nothing detected" in text and "**2 seeds**" in text
    assert "### At matched dimension" in text and "| target_material | 5 |" in text
    assert (tmp_path / "img" / "results-ladder.png").stat().st_size > 10_000
    assert (tmp_path / "img" / "lens-grid.png").stat().st_size > 10_000  # the figure of docs/concepts.md


def test_organism_logit_lens_says_the_answer_at_the_last_layer(organism):
    g = organism["lens_grid"]
    last = g[(g.position == "-1") & (g.layer == g.layer.max())].set_index("answer")
    # the model answers each scene correctly (accuracy > 0.85), so the lens on its last block,
    # averaged over the scenes of one true answer, puts that answer on top
    assert last.loc["Yes", "token"].strip() == "Yes" and last.loc["No", "token"].strip() == "No", last
    assert last.prob.min() > 0.6
    assert set(g.input_token[g.position == "-1"]) == {":"}  # the column sits on "ASSISTANT:"'s colon


def test_study_ladder_cli_prints_and_writes_the_docs_section(organism, tmp_path, monkeypatch, capsys):
    import probekit.studies.ladder.organism as lad
    from probekit.cli import main

    seen = []
    monkeypatch.setattr(lad, "run_ladder", lambda cfg: seen.append(cfg) or organism)
    out = tmp_path / "run"
    out.mkdir()
    assert main(["study", "ladder", "--small", "--out", str(out), "--docs", str(tmp_path / "docs")]) == 0
    assert seen[-1].ask == "red" and seen[-1].steps == lad.LadderConfig.small().steps
    printed = capsys.readouterr().out
    assert "random: nothing detected" in printed and "yes/no accuracy" in printed
    assert (out / "ladder.csv").exists() and not (tmp_path / "docs").exists()  # --small writes no docs
    assert main(["study", "ladder", "--out", str(out), "--docs", str(tmp_path / "docs")]) == 0
    assert seen[-1].steps == lad.LadderConfig().steps and seen[-1].num_layers == 4
    assert "`probekit study ladder`" in (tmp_path / "docs" / "results.md").read_text()
