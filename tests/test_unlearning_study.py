"""The fictitious-profile organism and the unlearning study (issue 12, part 4), CI-sized.

One module-scoped run of ``StudyConfig.small()`` (24 trained profiles, 24 never seen, 450 steps on
one thread) backs the study tests: facts learned, the job read per layer from trained profiles and
not from never-seen ones or the untrained base, membership inference separating trained from
never-seen profiles only after training, and NPO lowering forget-set accuracy.
"""

from __future__ import annotations

import numpy as np
import pytest

from probekit.errors import InputError
from probekit.experiments import facts_metrics as FM
from probekit.organisms import profiles as P


def test_world_splits_and_portraits():
    w = P.make_world(n_profiles=20, n_unseen=8, n_transfer=4, seed=3)
    assert len({p.name for p in w.profiles}) == 32
    assert set(w.forget(5)) <= set(w.forget(10)) <= set(w.forget(15))
    assert not set(w.forget(15)) & set(w.retain(15)) and len(w.forget(15)) + len(w.retain(15)) == 20
    trained_pids = {s.pid for s in w.train}
    assert not trained_pids & set(w.unseen)
    # transfer groups are taught in one modality only
    assert {s.modality for s in w.train if s.pid in w.text_only and s.attribute != "link"} == {"text"}
    assert {s.modality for s in w.train if s.pid in w.image_only} == {"image"}
    a, b = np.asarray(P.portrait(w.profiles[0])), np.asarray(P.portrait(w.profiles[1]))
    assert np.abs(a.astype(int) - b).mean() > 20  # visually distinct people
    portraits = [np.asarray(P.portrait(p)).astype(int) for p in w.profiles]
    for i in range(5):  # a transformed view is nearer its own portrait than anyone else's
        t = np.asarray(P.portrait(w.profiles[i], view=100)).astype(int)
        d = [np.abs(q - t).mean() for q in portraits]
        assert 0 < d[i] < 0.8 * min(d[:i] + d[i + 1:])
    assert P.make_world(20, 8, 4, seed=3).profiles[5] == w.profiles[5]  # seeded


def test_world_rejects_bad_input():
    with pytest.raises(InputError, match="n_transfer"):
        P.make_world(n_profiles=10, n_transfer=3)
    with pytest.raises(InputError, match="image_size"):
        P.make_world(n_profiles=10, image_size=30)
    with pytest.raises(InputError, match="distinct names"):
        P.make_world(n_profiles=400)


def test_study_rejects_bad_settings_before_work(tmp_path):
    from probekit.experiments.unlearning_study import StudyConfig, run_study

    for kw, what in ((dict(methods=("forget-it",)), "unknown unlearning"), (dict(splits=(0,)), "percentages"),
                     (dict(n_unseen=4), "too few"), (dict(n_transfer=3), "n_transfer")):
        with pytest.raises(InputError, match=what):
            run_study(StudyConfig.small(out=str(tmp_path / "o"), **kw))
        assert not (tmp_path / "o").exists()  # nothing written


def test_ci_p():
    assert FM.p_from_ci(0.8, 0.7, 0.9, 0.5) < 1e-6 and FM.p_from_ci(0.5, 0.4, 0.6, 0.5) == pytest.approx(0.5)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from probekit.experiments.unlearning_study import StudyConfig, run_study

    return run_study(StudyConfig.small(out=str(tmp_path_factory.mktemp("facts"))))


def test_answer_words_are_single_tokens(study, tmp_path_factory):
    from probekit.models.loading import load

    tok = load(next(p for p in __import__("pathlib").Path(study["config"]["out"]).iterdir()
                    if p.name.startswith("tuned"))).processor.tokenizer
    for values in P.ATTRIBUTES.values():
        assert all(len(tok(" " + v, add_special_tokens=False)["input_ids"]) == 1 for v in values)


def test_facts_are_learned(study):
    u, b = study["utility_tuned"], study["utility_base"]
    for mod in ("image", "text"):
        assert u[f"forget_{mod}_lo"] > 0.45, u  # chance 0.25 (4 options)
        assert u[f"retain_{mod}_lo"] > 0.45, u
        assert b[f"forget_{mod}"] < 0.5, b  # the untrained base cannot know them
    assert u["cloze_retain_text"] > 0.4


def test_fact_read_per_layer_positive_and_negative(study):
    pr = study["probes"]
    pos = pr[(pr.model == "tuned") & (pr.profiles == "trained")]
    assert pos.detected.any(), pos
    assert (pos[pos.detected].accuracy_lo > pos[pos.detected].chance).all()
    assert float(pos.accuracy.max()) > 0.5  # chance 0.25
    for model, profiles in (("tuned", "never seen"), ("base", "trained")):
        neg = pr[(pr.model == model) & (pr.profiles == profiles)]
        assert not neg.detected.any(), neg  # nothing detected
        assert float(neg.accuracy.max()) < 0.45


def test_membership_inference_separates_only_after_training(study):
    m = study["mia"].set_index(["model", "attack"])
    for attack in ("loss", "min_k", "min_k_pp"):
        assert m.loc[("tuned", attack), "auc_lo"] > 0.6
        base = m.loc[("base", attack)]
        assert base.auc_lo < 0.5 < base.auc_hi or abs(base.auc - 0.5) < 0.08


def test_npo_lowers_forget_accuracy(study):
    u = study["unlearning"].set_index("method")
    for mod in ("image", "text"):
        assert u.loc["none", f"forget_{mod}"] - u.loc["npo", f"forget_{mod}"] > 0.3
    mia = study["unlearning_mia"].set_index(["method", "attack"])
    assert mia.loc[("npo", "loss"), "auc"] < mia.loc[("none", "loss"), "auc"] - 0.15
    up = study["unlearning_probes"]
    assert set(up.method) == {"none", "npo"} and {"residual", "lens"} == set(up.features)
    assert ((up.accuracy_lo <= up.accuracy + 1e-9) & (up.accuracy <= up.accuracy_hi + 1e-9)).all()


def test_write_section_keeps_the_rest_of_the_page(study, tmp_path):
    from probekit.experiments import unlearning_report as R

    names = {"unlearning-probes", "unlearning-after", "unlearning-utility"}
    assert set(R.save_pngs(study, tmp_path / "img")) == names
    md = tmp_path / "results.md"
    md.write_text("# Other study\n\nkeep me\n")
    R.write_section(study, md, tmp_path / "img")
    written = R.write_section(study, md, tmp_path / "img")  # replaced, not appended twice
    text = md.read_text()
    assert text.startswith("# Other study") and "keep me" in text
    for name in names:  # the PNGs are drawn (matplotlib, offline) and the page shows them
        png = tmp_path / "img" / f"results-{name}.png"
        assert png in written and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert f"(img/results-{name}.png)" in text
    assert text.count(R.MARK[0]) == 1 and "nothing detected" in text and "| npo |" in text
