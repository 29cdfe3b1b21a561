"""Membership readouts per layer on a small organism that really memorised its members, beside a matched
control that cannot reveal them, and the distribution-shift guard on a deliberately shifted split.

The organism: a tiny LLaVA (4 layers) fine-tuned to answer "What is the name?" with one name per image on
the 16 member images. The non-members are 16 other images with the same 16 names (same answers: the
outputs alone do not differ between the sets). The control is the same base fine-tuned the same way on
16 third images: neither set was seen, so nothing may be detected.
"""

import numpy as np
import pytest

import probekit
from probekit.data.synthetic import Sample
from probekit.errors import InputError
from probekit.organisms.finetune import finetune

NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "oscar",
         "peggy", "rupert", "sybil", "trent"]
Q = "What is the name?"


def _rows(images, names):
    return [{"image": im, "prompt": Q, "answer": a} for im, a in zip(images, names)]


@pytest.fixture(scope="module")
def organism(tmp_path_factory, one_thread):
    path = probekit.tiny.build("llava", tmp_path_factory.mktemp("m") / "base", num_layers=4)
    images = probekit.tiny.fixture_images(48, 32, seed=5)
    members, nonmembers, third = _rows(images[:16], NAMES), _rows(images[16:32], NAMES), _rows(images[32:], NAMES)
    models = {}
    for name, train in (("tuned", members), ("control", third)):
        m = probekit.load(path)
        finetune(m, [Sample(r["image"], Q, r["answer"], "name") for r in train], steps=100, batch_size=8, lr=3e-3,
                 seed=0, progress=False)
        models[name] = m
    return probekit.load(path), models, members, nonmembers


def test_memorised_members_are_detected_at_the_output_and_layer_by_layer_and_the_control_is_not(organism):
    base, models, members, nonmembers = organism
    kw = dict(cv=4, n_perm=200, n_boot=100, progress=False)
    rep = probekit.membership(models["tuned"], members, nonmembers, base=base, **kw)
    t = rep.table
    out = t[(t.source == "output") & (t.score == "loss")].iloc[0]
    assert out.detected and out.auc_lo > 0.5 and out.auc > 0.85
    lens = t[(t.source == "logit-lens") & (t.score == "loss")]
    assert lens.detected.any() and (lens[lens.detected].auc_lo > 0.5).all()
    assert not rep.confounded and rep.summary().startswith("Membership detected")
    # the causal attribution: patching the base's residual in removes a measured share of the gap at some layer
    assert rep.attribution is not None and rep.attribution.share_tuned.max() > 0.3
    # the per-sample patching scores read it layer by layer: the tuned residual at the first layer, decoded by the
    # base's own later blocks, already separates members (the control below detects no row, these included)
    first = t[(t.source == "patched tuned-into-base") & (t.point == "lm.0.resid")].iloc[0]
    assert first.detected and first.auc_lo > 0.5
    # localised down to the first layer by the fixed sequence below the last (lm.3, the output's), p 0.00995 each
    # (the smallest p of 200 permutations, 1/201, doubled for the two directions)
    loc = rep.localisation
    assert loc.point.tolist() == ["lm.2.resid", "lm.1.resid", "lm.0.resid"] and loc.localised.all()
    assert np.allclose(loc.p, 2 / 201) and "Localised: part of the leak is formed by lm.0.resid" in rep.summary()
    ctl = probekit.membership(models["control"], members, nonmembers, base=base, **kw)
    assert not ctl.table.detected.any(), ctl.table[ctl.table.detected]
    assert ctl.summary().startswith("No membership detected") and "would have detected AUC >=" in ctl.summary()
    assert not ctl.localisation.tested.any() and "Localised" not in ctl.summary()  # the gate stays shut
    c = ctl.table[(ctl.table.source == "output") & (ctl.table.score == "loss")].iloc[0]
    assert c.auc_lo < 0.5 < c.auc_hi


def test_a_shifted_split_is_called_confounded_first(organism):
    """Members bright, non-members dark, an untrained model: the blind baseline separates them from the pixels."""
    base, _, _, _ = organism
    bright = [im.point(lambda v: min(255, v // 2 + 128)) for im in probekit.tiny.fixture_images(16, 32, seed=8)]
    dark = [im.point(lambda v: v // 2) for im in probekit.tiny.fixture_images(16, 32, seed=9)]
    rep = probekit.membership(base, _rows(bright, NAMES), _rows(dark, NAMES), cv=4, n_perm=200, n_boot=100,
                              progress=False)
    assert rep.confounded and rep.summary().startswith("Confounded:")
    g = rep.guard[rep.guard.point == "inputs"].iloc[0]
    assert g.detected and g.auc > 0.9


def test_report_files_and_bad_input(organism, tmp_path):
    base, models, members, nonmembers = organism
    rep = probekit.membership(models["tuned"], members[:8], nonmembers[:8], cv=2, n_perm=99, n_boot=50,
                              progress=False)
    html = rep.save(tmp_path / "m.html").read_text()
    assert rep.summary().splitlines()[0] in html.replace("&gt;", ">")
    assert "Blind baseline" in html and "plotly" in html
    assert '"kind": "membership"' in rep.save(tmp_path / "m.json").read_text()
    with pytest.raises(InputError, match="answer"):
        probekit.membership(base, [{"image": members[0]["image"], "prompt": Q}], nonmembers)
    with pytest.raises(InputError, match="members and non-members"):
        probekit.membership(base, [dict(r, group="g") for r in members[:4]], [dict(r, group="g") for r in nonmembers[:4]])
    with pytest.raises(InputError, match="k must be"):
        probekit.membership(base, members, nonmembers, k=2)
    assert np.isfinite(rep.table.auc).all()


def test_cli_checks_every_input_before_loading_then_writes_the_report(tmp_path, monkeypatch, capsys):
    from probekit.cli import main

    base = probekit.tiny.build("llava", tmp_path / "base")
    for folder, seed in (("mem", 1), ("non", 2)):
        (tmp_path / folder).mkdir()
        for i, im in enumerate(probekit.tiny.fixture_images(6, 32, seed=seed)):
            im.save(tmp_path / folder / f"{folder}{i}.png")
    rows = [f"{f}{i}.png,{NAMES[i]}" for f in ("mem", "non") for i in range(6)]
    (tmp_path / "answers.csv").write_text("image,answer\n" + "\n".join(rows[:-1]) + "\n")  # non5 has no row
    import probekit.models.loading as loading  # where the CLI loads from (probekit.load is the same function)

    loads = []
    real = loading.load
    monkeypatch.setattr(loading, "load", lambda *a, **k: loads.append(a) or real(*a, **k))
    args = ["membership", "--model", str(base), "--members", str(tmp_path / "mem"), "--nonmembers", str(tmp_path / "non"),
            "--answers", str(tmp_path / "answers.csv"), "--prompts", Q, "--cv", "2", "--out", str(tmp_path / "m.html")]
    assert main(args) == 2 and not loads
    assert "non5.png" in capsys.readouterr().err
    (tmp_path / "answers.csv").write_text("image,answer\n" + "\n".join(rows) + "\n")
    assert main(args) == 0 and len(loads) == 1
    out = capsys.readouterr().out
    assert (tmp_path / "m.html").is_file() and out.splitlines()[0].startswith(("No membership", "Inconclusive", "Confounded"))


def _lens(model, seed=7, steps=60):
    """A tuned lens of ``model`` fitted on images neither set contains."""
    store = probekit.collect(model, probekit.tiny.fixture_images(24, 32, seed=seed), Q, points=["lm.*.resid"],
                             positions=("last", "image_mean"), progress=False)
    return probekit.TunedLens.fit(model, store, steps=steps, progress=False)


def _by_hand(model, tl, rows, point):
    """Mean log-probability of the true answer tokens through ``tl`` at ``point``, one sample at a time."""
    import torch

    from probekit.hooks.recorder import Recorder

    out = []
    for r in rows:
        inputs = model.prepare([r["image"]], [r["prompt"]], padding_side="right", answers=[r["answer"]])
        n, L = int(model.answer_lengths(inputs, [r["answer"]])[0]), inputs["input_ids"].shape[1]
        with Recorder(model, [point]) as rec, torch.no_grad():
            model.hf(**inputs, use_cache=False)
            h = model.lm_activation(point, rec.cache[point], 1)[0, L - n - 1:L - 1].float()
            logits = model.head(model.final_norm(tl(h, point).to(model.dtype))).float()
        out.append(float(torch.log_softmax(logits, -1).gather(-1, inputs["input_ids"][0, L - n:, None]).mean()))
    return np.asarray(out)


def _auc(member, non):
    return float(np.mean([(m > x) + 0.5 * (m == x) for m in member for x in non]))


def test_tuned_lens_minus_base_rows_are_the_models_tuned_lens_score_minus_the_bases(organism):
    base, models, members, nonmembers = organism
    tuned = models["tuned"]
    tl, base_tl = _lens(tuned), _lens(base)
    rep = probekit.membership(tuned, members, nonmembers, base=base, tuned_lens=tl, base_tuned_lens=base_tl, cv=4,
                              n_perm=200, n_boot=100, attribution=False, progress=False)
    t = rep.table
    rows = t[t.source == "tuned-lens minus base"]
    assert sorted(rows.point.unique()) == ["lm.0.resid", "lm.1.resid", "lm.2.resid", "lm.3.resid"]
    assert len(rows) == 12 and rows.auc_lo.notna().all() and rows.detected.dtype == bool and rows.mde_auc.notna().all()
    assert rep.settings["base_tuned_lens"]
    for point in ("lm.0.resid", "lm.1.resid"):
        tm, tn = _by_hand(tuned, tl, members, point), _by_hand(tuned, tl, nonmembers, point)
        bm, bn = _by_hand(base, base_tl, members, point), _by_hand(base, base_tl, nonmembers, point)
        row = lambda src: t[(t.source == src) & (t.point == point) & (t.score == "loss")].iloc[0]  # noqa: E731
        assert row("tuned-lens").auc == pytest.approx(_auc(tm, tn), abs=1e-9)
        assert row("tuned-lens minus base").auc == pytest.approx(_auc(tm - bm, tn - bn), abs=1e-9)
    # without the base's own tuned lens there is nothing to subtract: no tuned-lens minus base rows
    plain_rep = probekit.membership(tuned, members, nonmembers, base=base, tuned_lens=tl, cv=4, n_perm=99, n_boot=50,
                                    attribution=False, progress=False)
    assert "tuned-lens" in set(plain_rep.table.source) and "tuned-lens minus base" not in set(plain_rep.table.source)


def test_base_tuned_lens_is_checked_before_any_forward_pass(organism, monkeypatch):
    import sys

    base, models, members, nonmembers = organism
    tuned = models["tuned"]
    tl, base_tl = _lens(tuned, steps=5), _lens(base, steps=5)

    def no_forwards(*a, **k):
        raise AssertionError("ran the model before checking the lenses")

    monkeypatch.setattr(sys.modules["probekit.membership"], "_model_scores", no_forwards)
    call = lambda **kw: probekit.membership(tuned, members, nonmembers, progress=False, **kw)  # noqa: E731
    with pytest.raises(InputError, match="base_tuned_lens needs base="):
        call(tuned_lens=tl, base_tuned_lens=base_tl)
    with pytest.raises(InputError, match="base_tuned_lens needs base="):
        call(base=base, base_tuned_lens=base_tl)
    with pytest.raises(InputError, match="base_tuned_lens must be a TunedLens"):
        call(base=base, tuned_lens=tl, base_tuned_lens="lens.safetensors")
    with pytest.raises(InputError, match="base_tuned_lens was fitted on another model"):
        call(base=base, tuned_lens=tl, base_tuned_lens=tl)  # the tuned model's lens passed as the base's
    with pytest.raises(InputError, match="tuned_lens was fitted on another model"):
        call(base=base, tuned_lens=base_tl, base_tuned_lens=base_tl)
    partial = probekit.TunedLens(base.d_model, ["lm.0.resid"], meta=dict(base_tl.meta))
    with pytest.raises(InputError, match="no translator for 'lm.1.resid'"):
        call(base=base, tuned_lens=tl, base_tuned_lens=partial)


def test_the_summary_names_the_shallowest_detected_layer_whatever_the_row_order():
    import pandas as pd

    from probekit.report.membership_report import MembershipReport

    rows = [("lm.2.resid", "logit-lens", True), ("lm.1.resid", "logit-lens", False),
            ("lm.0.resid", "patched base-into-tuned", True), ("logits", "output", True)]
    t = pd.DataFrame([{"point": p, "source": s, "score": "loss", "auc": 0.7, "auc_lo": 0.6, "auc_hi": 0.8,
                       "tpr_at_1fpr": 0.1, "p_value": 0.01, "p_adjusted": 0.02 if d else 0.3, "detected": d,
                       "mde_auc": 0.64} for p, s, d in rows])
    line = MembershipReport(t, guard=t.head(0), attribution=None, settings={}).summary().splitlines()[0]
    assert line.endswith("first layer: lm.0.resid (patched base-into-tuned, loss)") and "at 3 of 4 rows" in line
