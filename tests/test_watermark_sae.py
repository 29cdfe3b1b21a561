"""The SAE removers' code path on the watermark organism (the organism itself is being reworked elsewhere):
an SAE on the reader, both removers fitted on half the usernames and graded by evaluate() on the other half."""

from __future__ import annotations

from dataclasses import replace


def test_sae_removal_runs_on_the_reader_and_grades_on_held_out_usernames(one_thread):
    from probekit.studies.watermark.sae import SMALL, sae_removal
    from probekit.models.loading import load
    from probekit.studies.watermark import organism as W
    from probekit.organisms.reader import reader

    base = reader()
    c = W.resolve(replace(W.Condition(**SMALL), n_train=40, n_eval=48), base)
    seen, unseen = W.username_pools(c.n_users, c.seed)
    ev = W.eval_set(c, seen, unseen)
    res = sae_removal(load(base), c, ev, n_boot=50, epochs=2.0)
    s = res["sae"]
    assert s["point"] == "lm.2.resid" and s["train_rows"] == 2 * 40 * (1 + 64) and s["l0"] <= 16
    assert 0 <= s["kl_sae"] < s["kl_zero"]
    for method in ("sae_steer", "sae_clamp"):
        rep = res["reports"][method]
        assert rep.data["split"] == "seeded" and rep.data["fit_overlap"] == 0
        fit = set(rep.data["fit_index"])
        graded = {ev["groups"][i] for i in rep.data["eval_index"]}
        assert not graded & {ev["groups"][i] for i in fit}  # no username is both fitted on and graded
        assert len(res["latents"][method].latents) == 4
        assert set(rep.suppression.point) == {"lm.0.resid", "lm.1.resid", "lm.2.resid"}
        assert rep.cost["kl_mean"] >= 0 and "task_accuracy_after" in rep.cost
