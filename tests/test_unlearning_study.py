"""The fictitious-profile organism and the unlearning study (issues 12 and 25), CI-sized.

One module-scoped run of ``StudyConfig.small()`` (24 trained profiles, 24 never seen, 450 steps on
one thread, a 33% forget split of 8 profiles; about two minutes) backs the study tests: facts
learned, the job read per layer from trained profiles and not from never-seen ones or the
untrained base, membership inference separating trained from never-seen profiles only after
training, the retrained reference, NPO lowering forget-set accuracy while destroying utility
(flagged), the steering remover fitted on held-out views and scored through ``evaluate()``, and
the relearning attack.
"""

from __future__ import annotations

import numpy as np
import pytest

from probekit.errors import InputError
from probekit.organisms import facts_metrics as FM
from probekit.studies.unlearning import profiles as P


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


def test_practice_profiles_learn_mllmu_bench_formats_outside_every_split():
    from probekit.studies.unlearning import mllmu_protocol as MP

    w = P.make_world(n_profiles=20, n_unseen=8, n_transfer=4, seed=3, n_practice=3)
    assert len(w.practice) == 3 and not set(w.practice) & (set(w.trained) | set(w.unseen) | set(w.text_only))
    fmt = [s for s in w.train if s.meta.get("format")]
    assert {s.pid for s in fmt} == set(w.practice)
    mc = [s for s in fmt if s.meta["format"] == "mc"]
    cz = [s for s in fmt if s.meta["format"] == "cloze"]
    assert len(mc) == 3 * 3 * 3 and len(cz) == 3 * 3 * 3  # per profile: 3 attributes x (2 portraits + by name)
    for s in mc:  # the lettered option that is the answer holds the fact
        letter_line = next(x for x in s.question.split("\n") if x.startswith(s.answer + ": "))
        assert letter_line[3:] == w.profile(s.pid).facts[s.attribute] and s.question.endswith(MP.MC_SUFFIX)
    assert all("[Blank]" in s.question and s.answer == w.profile(s.pid).facts[s.attribute] for s in cz)
    c = P.cloze_qa(w.profile(0), "age", "text")
    assert c.question == f"{w.profile(0).name} is __ years old." and c.answer == w.profile(0).facts["age"]


def test_world_rejects_bad_input():
    with pytest.raises(InputError, match="n_transfer"):
        P.make_world(n_profiles=10, n_transfer=3)
    with pytest.raises(InputError, match="image_size"):
        P.make_world(n_profiles=10, image_size=30)
    with pytest.raises(InputError, match="distinct names"):
        P.make_world(n_profiles=400)


def test_study_rejects_bad_settings_before_work(tmp_path):
    from probekit.studies.unlearning.study import StudyConfig, run_study

    for kw, what in ((dict(methods=("forget-it",)), "unknown unlearning"), (dict(splits=(0,)), "percentages"),
                     (dict(n_unseen=4), "too few"), (dict(n_transfer=3), "n_transfer"), (dict(splits=(4,)), "fewer than 2")):
        with pytest.raises(InputError, match=what):
            run_study(StudyConfig.small(out=str(tmp_path / "o"), **kw))
        assert not (tmp_path / "o").exists()  # nothing written


def test_ci_p():
    assert FM.p_from_ci(0.8, 0.7, 0.9, 0.5) < 1e-6 and FM.p_from_ci(0.5, 0.4, 0.6, 0.5) == pytest.approx(0.5)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from probekit.studies.unlearning.study import StudyConfig, run_study

    # the CI version, with one of the two SAE removers (both run in `probekit study unlearning --small`)
    return run_study(StudyConfig.small(out=str(tmp_path_factory.mktemp("facts")), methods=("npo", "ablate", "sae_clamp"),
                                       sae_epochs=8.0))


def test_answer_words_are_single_tokens(study, tmp_path_factory):
    from probekit.models.loading import load

    tok = load(next(p for p in __import__("pathlib").Path(study["config"]["out"]).iterdir()
                    if p.name.startswith("tuned"))).processor.tokenizer
    for values in P.ATTRIBUTES.values():
        assert all(len(tok(" " + v, add_special_tokens=False)["input_ids"]) == 1 for v in values)


def test_facts_are_learned(study):
    u, b = study["utility_tuned"], study["utility_base"]
    for mod in ("image", "text"):
        assert u[f"forget_{mod}_lo"] > 0.45, u  # chance 0.25 (4 options), likelihood ranking
        assert u[f"retain_{mod}_lo"] > 0.45, u
        assert b[f"forget_{mod}"] < 0.5, b  # the untrained base cannot know them
        assert u[f"unseen_{mod}_hi"] > 0.25 > u[f"unseen_{mod}_lo"] - 0.05  # never-seen profiles: near chance
        # MLLMU-Bench's lettered generation: without practice profiles the tiny model never replies with a letter
        assert u[f"gen_retain_{mod}_letters"] < 0.2 and u[f"gen_retain_{mod}"] <= u[f"gen_retain_{mod}_letters"]
    assert u["cloze_retain_text"] > 0.4
    # the generated [Blank] cloze matches a substring of 50 babbled tokens: never-seen profiles score above zero too
    assert u["clozegen_retain_text"] > u["clozegen_unseen_text"] > 0.0
    # ROUGE-L on 50 new tokens with the stemmer: the biography, then babble (the organism never learned to stop)
    assert 0.4 < u["rouge_forget_text"] < 0.8 and b["rouge_forget_text"] < 0.2


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


def test_npo_lowers_forget_accuracy_by_destroying_utility(study):
    u = study["unlearning"].set_index("method")
    for mod in ("image", "text"):
        assert u.loc["none", f"forget_{mod}"] - u.loc["npo", f"forget_{mod}"] > 0.3
    mia = study["unlearning_mia"].set_index(["method", "attack"])
    assert mia.loc[("npo", "loss"), "auc"] < mia.loc[("none", "loss"), "auc"] - 0.15
    # ... and retain multiple choice with it (measured 0.17/0.17, chance 0.25): flagged, not read as forgetting
    assert u.loc["npo", "retain_image_hi"] < 0.4 and u.loc["npo", "utility_destroyed"]
    assert not u.loc["none", "utility_destroyed"] and not u.loc["retrain", "utility_destroyed"]
    for m in u.index:  # the flag is the shared verdict on retain accuracy: not above chance after Holm
        assert u.loc[m, "utility_destroyed"] == (u.loc[m, "retain_p_holm_min"] >= 0.05)
    up = study["unlearning_probes"]
    assert set(up.method) == {"none", "retrain", "npo", "ablate", "sae_clamp"} and {"residual", "lens"} == set(up.features)
    assert set(up.fit) == {"retain profiles", "forget profiles (folds by profile)"}
    assert ((up.accuracy_lo <= up.accuracy + 1e-9) & (up.accuracy <= up.accuracy_hi + 1e-9)).all()


def test_retrained_reference_never_saw_the_forget_profiles(study):
    u = study["unlearning"].set_index("method")
    r = u.loc["retrain"]
    assert r.retain_image_lo > 0.6 and r.forget_image < 0.45 and r.forget_text < 0.5  # it knows retain, not forget
    assert (u.loc["none", "forget_image"] - r.forget_image) > 0.4
    for col in ("forget_image", "forget_text", "mia_auc"):  # distances: method minus the reference
        assert r[f"d_{col}"] == 0.0
        assert u.loc["npo", f"d_{col}"] == pytest.approx(u.loc["npo", col] - r[col])
    up = study["unlearning_probes"]
    ref = up[up.method == "retrain"]
    assert (ref.d_accuracy == 0).all() and up.d_accuracy.notna().all()


def test_membership_auc_forget_vs_never_seen_by_profile(study):
    m = study["unlearning_mia"]
    assert set(m.method) == {"none", "retrain", "npo", "ablate", "sae_clamp"}
    for r in m.itertuples():  # below_half: 1 - AUC above chance under the shared verdict
        assert r.auc_lo <= r.auc <= r.auc_hi
        assert not (r.below_half and r.auc_lo > 0.5) and (not r.below_half or r.auc < 0.5)
    u = study["unlearning"].set_index("method")
    assert u.loc["none", "mia_auc_lo"] > 0.6 and u.loc["none", "mia_auc"] == m[(m.method == "none") & (m.attack == "loss")].auc.iloc[0]


def test_steering_is_fitted_on_held_out_views_and_scored_through_evaluate(study):
    from probekit.studies.unlearning.removal import FIT_VIEWS

    a = study["unlearning"].set_index("method").loc["ablate"]
    n_forget = int(a.forget_profiles)
    assert a.steer_fit_overlap == 0 and a.steer_n_fit == n_forget * len(FIT_VIEWS)
    assert a.steer_n_eval == (n_forget + 16) * 4  # forget and 16 retain profiles: the clean portrait, 2 test portraits, by name
    ev = study["steering_eval"]
    before = ev[(ev.metric == "probe_accuracy") & (ev.point == "lm.1.resid")].iloc[0]
    assert before.before > 0.5 and before.after < before.before  # the job, read at the last layer, is suppressed
    assert ev[ev.metric == "kl_nats"].after.iloc[0] == pytest.approx(a.steer_kl) and a.steer_kl > 0


def test_relearning_attack_on_weight_edits_only(study):
    u = study["unlearning"].set_index("method")
    assert np.isnan(u.loc["ablate", "relearn_forget_image"])  # a hook: left out
    for m in ("none", "retrain", "npo"):
        assert 0 <= u.loc[m, "relearn_forget_image"] <= 1 and 0 <= u.loc[m, "relearn_mia_auc"] <= 1
    lost = u.loc["none", "forget_image"] - u.loc["npo", "forget_image"]
    delta = u.loc["npo", "relearn_forget_image"] - u.loc["npo", "forget_image"]
    assert lost > 0.2 and u.loc["npo", "relearn_delta_image"] == pytest.approx(delta)
    assert u.loc["npo", "relearn_recovered_image"] == pytest.approx(delta / lost)
    assert np.isnan(u.loc["none", "relearn_recovered_image"])  # nothing was removed: no share of it
    ml = study["membership_layers"]
    assert set(ml.stage) == {"after removal", "after relearning"}
    assert set(ml[ml.stage == "after relearning"].method) == {"none", "retrain", "npo"}
    assert set(ml.chance.round(2)) == {0.5}  # as many never-seen profiles as forget profiles


def test_write_section_keeps_the_rest_of_the_page(study, tmp_path):
    from probekit.studies.unlearning import report as R

    names = {"unlearning-probes", "unlearning-after", "unlearning-utility", "unlearning-relearn", "unlearning-pareto"}
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
    assert "| retrain |" in text and "**destroyed**" in text and "Layer-wise membership" in text
    assert "Every remover side by side" in text and "| 33 | sae_clamp {'clamp': " in text and "SAE: topk (k = 16)" in text
    lines = R.verdict_lines(study)
    npo = next(x for x in lines if x.startswith("npo at"))
    assert "**utility destroyed**" in npo and "distance from the retrained reference" in npo and "relearning" in npo


def test_sae_remover_is_fitted_on_held_out_views_and_every_method_pays_its_kl(study):
    from probekit.studies.unlearning.removal import FIT_VIEWS
    from probekit.studies.unlearning.sae import CLAMPS

    s = study["sae"]
    assert (s["point"], s["architecture"], s["k"], s["d_sae"]) == ("lm.1.resid", "topk", 16, 512)
    assert s["heldout_l0"] == 16 and s["heldout_fvu"] < 0.5 and s["loss_recovered"] > 0.8
    assert s["kl_sae"] < s["kl_zero"] and s["train_rows"] == len(P.make_world(24, 24, 0, seed=0).train) * 19
    u = study["unlearning"].set_index("method")
    c = u.loc["sae_clamp"]
    assert c.steer_fit_overlap == 0 and c.steer_n_eval == u.loc["ablate"].steer_n_eval
    assert len(__import__("json").loads(c.sae_latents)) == 4 and np.isnan(c.relearn_forget_image)
    sw = study["sae_sweep"]
    assert sw.clamp.tolist() == list(CLAMPS) and (sw.forget_fit_before == sw.forget_fit_before.iloc[0]).all()
    assert u.loc["none", "kl_clean"] == 0 and (u.drop(index="none").kl_clean > 0).all()
    assert u.loc["npo", "kl_clean"] > u.loc["sae_clamp", "kl_clean"]  # NPO destroyed utility: its KL is large
    assert {"sae_clamp"} <= set(study["unlearning_probes"].method) and {"sae_clamp"} <= set(study["membership_layers"].method)
    assert len(FIT_VIEWS) == 4


def test_power_of_a_null_is_the_one_sided_z_test():
    from scipy import stats

    from probekit._stats import min_detectable_z_effect as mde, z_power as power_one_sided

    se, a = 0.03, 0.025
    assert mde(se, a) == pytest.approx((stats.norm.ppf(1 - a) + stats.norm.ppf(0.8)) * se)
    assert power_one_sided(mde(se, a), se, a) == pytest.approx(0.8)
    assert power_one_sided(0.0, se, a) == pytest.approx(a)


def test_transfer_bootstraps_profiles_and_says_the_power_of_a_null(study):
    """On profiles the model never saw in either modality, transfer must not be detected, and the power
    numbers must follow from the per-profile spread (50 profiles per condition, the full config's count)."""
    from probekit.studies.unlearning.measures import transfer
    from probekit.studies.unlearning.study import StudyConfig
    from probekit.models.loading import load

    assert StudyConfig().n_transfer == 100  # 50 taught by name, 50 with the portrait
    w = P.make_world(n_profiles=24, n_unseen=24, n_transfer=100, seed=5)
    cfg = StudyConfig.small(n_boot=300)
    tuned = load(next(p for p in __import__("pathlib").Path(study["config"]["out"]).iterdir() if p.name.startswith("tuned")))
    t = transfer(tuned, w, cfg).set_index("group")
    assert list(t.profiles) == [50, 50] and list(t.questions) == [150, 150]
    assert not t.transfer_detected.any() and (t.other_lo < 0.25 + 0.02).all()
    for r in t.itertuples():
        assert 0.02 < r.se_other < 0.08 and r.mde == pytest.approx(2.8016 * r.se_other, rel=1e-3)  # z(0.975) + z(0.8)
        assert r.gap_lo <= r.gap <= r.gap_hi
