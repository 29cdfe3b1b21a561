"""The remover comparison on the watermark leak organism: the choice rule, the summary and the section from
the run's own rows, and a tiny end-to-end run that is resumable from its files."""

import math
import time

import numpy as np
import pandas as pd
import pytest

from probekit.studies.watermark import removal as R
from probekit.studies.watermark.dose import DoseConfig
from probekit.studies.watermark.removal_writeup import section, verdict_lines


def test_choose_keeps_the_unseen_names_reading_and_else_takes_the_gentlest():
    before = {"seen": 0.9, "unseen": 0.6}
    sweep = [{"seen": 0.88, "unseen": 0.6}, {"seen": 0.5, "unseen": 0.58}, {"seen": 0.0, "unseen": 0.0}]
    assert R.choose(before, sweep) == 1  # index 2 forgets most but reads nothing: refused (0 < 0.9 * 0.6)
    assert R.choose(before, [{"seen": 0.1, "unseen": 0.5}, {"seen": 0.0, "unseen": 0.0}]) == 0  # none kept: gentlest
    # the gain is the seen drop minus the unseen drop: a setting that costs both equally gains nothing
    assert R.choose(before, [{"seen": 0.8, "unseen": 0.6}, {"seen": 0.7, "unseen": 0.55}]) == 1  # 0.15 > 0.10


def _rows():
    out = []
    for seed in (0, 1):
        for method, seen, unseen, auc, det, inner in (("none", 0.9, 0.6, 0.70, True, 2), ("npo", 0.88, 0.6, 0.69, True, 1),
                                                      ("ablate", 0.7, 0.58, 0.55 + 0.02 * seed, False, seed),
                                                      ("leace", 0.0, 0.0, 0.45, False, 0)):
            out.append({"seed": seed, "method": method, "direct_seen": seen, "direct_unseen": unseen,
                        "task_acc": 0.8, "kl_clean": 0.0 if method == "none" else 0.01, "out_auc": auc,
                        "out_detected": det, "output_detected": det, "inner_detected": inner,
                        "patched_detected": inner, "probe_detected": 0, "lens_detected": 0, "patched_auc_max": 0.6, "inner_auc_max": 0.6, "mde_auc": 0.64})
    return pd.DataFrame(out)


def test_summary_and_section_come_from_the_rows():
    rows = _rows()
    s = R.summary_table(rows).set_index("method")
    assert s.forget_drop["ablate"] == pytest.approx(0.70 - 0.56) and s.forget_drop["none"] == 0
    assert s.gap["ablate"] == pytest.approx(0.12) and s.gap_drop["ablate"] == pytest.approx(0.30 - 0.12)
    assert s.inner_detected_runs["ablate"] == 1 and s.out_detected["none"] == 2 and s.out_detected["ablate"] == 0
    res = {"config": R.RemovalConfig(seeds=(0, 1)), "summary": s.reset_index(), "rows": rows, "seconds": 600.0,
           "choices": [{"npo": {"setting": {"lr": 1e-5}, "sweep": [{"lr": 1e-5, "seen": 0.9, "unseen": 0.6},
                                                                    {"lr": 3e-5, "seen": 0.2, "unseen": 0.1}]}},
                       {"npo": {"setting": {"lr": 3e-5}, "sweep": [{"lr": 3e-5, "seen": 0.7, "unseen": 0.58},
                                                                    {"lr": 1e-4, "seen": 0.0, "unseen": 0.0}]}}],
           "fit_before": {0: {"seen": 0.9, "unseen": 0.6}, 1: {"seen": 0.9, "unseen": 0.6}}, "sae": [None, None]}
    text = section(res, "img/x.png", "probekit study watermark --sae --full")
    assert "| npo | lr 1e-05; lr 3e-05 | 0.88 [0.88, 0.88] |" in text
    assert "| ablate | – | 0.70 [0.70, 0.70] | 0.58 [0.58, 0.58] | 0.12 [0.12, 0.12] |" in text
    assert "| 0.14 [0.13, 0.15] | 0/2 | 1/2 (0 / 0 / 1) |" in text  # ablate: forget drop 0.15, 0.13; patching, seed 1
    # ablate keeps reading and leaves no output detection but a layer still reads it; leace broke reading
    assert "No output detection left in any run: ablate; of these a layer below the last still reads" in text
    assert "Reading broken (unseen names' direct prompt below 90% of the untouched model's): leace." in text
    assert "the smallest learning rate that broke the unseen names' reading, per seed: npo 3e-05/0.0001." in text
    assert verdict_lines(res)[2].startswith("ablate: direct prompt seen 0.70 / unseen 0.58")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, one_thread):
    # a few names seen a few times: the code path and the bookkeeping, not a finding (the study has those)
    cfg = R.RemovalConfig(seeds=(0,), methods=("npo", "ablate"), fit_scenes=1, n_task=8, lrs=(1e-5, 1e-3), unlearn_steps=5,
                          n_perm=99, n_boot=50, dose=DoseConfig(fractions=(0.5,), n_users=4, sightings=10, u3=()))
    out = tmp_path_factory.mktemp("removal")
    t0 = time.perf_counter()
    res = R.run_removal(cfg, verbose=False, out=out)
    return cfg, out, res, time.perf_counter() - t0


def test_every_remover_is_measured_the_same_way_and_the_run_resumes(tiny_run):
    cfg, out, res, first = tiny_run
    rows = res["rows"].set_index("method")
    assert list(rows.index) == ["none", "npo", "ablate"]
    assert rows.kl_clean["none"] == pytest.approx(0.0, abs=1e-9)  # the fine-tune against itself
    assert rows.kl_clean["ablate"] > 1e-6 and rows.kl_clean["npo"] > 0  # each changed the clean next token
    # the fine-tuning remover's learning rate is the one the rule picks from its own sweep on the held-out views
    ch = res["choices"][0]["npo"]
    assert ch["setting"]["lr"] == cfg.lrs[R.choose(_fit_before(out), ch["sweep"])]
    for m in rows.index:  # every method carries the same audit: the membership table with its verdict rows
        t = res["membership"][res["membership"].method == m]
        assert {"output minus base", "patched base-into-tuned", "probe"} <= set(t.source)
        assert 0 <= rows.out_auc[m] <= 1 and not math.isnan(rows.mde_auc[m])
    again = time.perf_counter()
    res2 = R.run_removal(cfg, verbose=False, out=out)  # read back, not rerun
    assert time.perf_counter() - again < first / 3
    pd.testing.assert_frame_equal(res2["rows"].drop(columns="seconds").reset_index(drop=True),
                                  pd.read_csv(out / "seed0.csv").drop(columns="seconds"), check_dtype=False)
    assert np.allclose(res2["summary"].out_auc, res["summary"].out_auc)


def _fit_before(out):
    import json

    return json.loads((out / "seed0.json").read_text())["fit_before"]
