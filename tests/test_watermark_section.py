"""The watermark study's write-up: every number of the section comes from the run's tables (synthetic here)."""

from pathlib import Path

import numpy as np
import pandas as pd

from probekit.studies.watermark import dose as WD
from probekit.studies.watermark.study import analyse, verdict_lines
from probekit.studies.watermark.writeup import section

POINTS = ["lm.0.resid", "lm.1.resid", "lm.2.resid"]
SCORES = ["loss", "min_k", "min_k_pp"]


def _table(hits=(), auc=0.5, points=POINTS):
    rows = [(src, p, s) for src in ("logit-lens", "logit-lens minus base") for p in points for s in SCORES]
    rows += [("probe", p, "features") for p in points]
    rows += [(src, p, "loss") for src in ("patched base-into-tuned", "patched tuned-into-base") for p in points]
    rows += [(src, "logits", s) for src in ("output", "output minus base") for s in SCORES]
    return pd.DataFrame([{"point": p, "source": src, "score": s, "auc": auc, "auc_lo": auc - 0.07, "auc_hi": auc + 0.07,
                          "tpr_at_1fpr": 0.01, "detected": (src, p, s) in hits, "mde_auc": 0.63} for src, p, s in rows])


def _run(kind, seed, fraction, hits=(), auc=0.5, collapsed=False, rng=None):
    pairs = pd.DataFrame([{"pair": i, "scene": 0, "name": f"{lab}{i}", "label": lab} for i in range(30)
                          for lab in ("seen", "unseen")])
    cols = ["reading:output:logits:loss", "reading:logit-lens:lm.0.resid:loss", "reading:logit-lens:lm.2.resid:loss",
            "shape:output:logits:loss"]
    scores = pd.DataFrame({c: rng.normal(size=60) for c in cols})
    p = 0.0 if kind == "p=0 control" else 1.0
    cond = {"p=0 control": f"p=0 (no name), seed {seed}", "U3 control": f"fraction {fraction:g}, U3 read, seed {seed}"}
    row = {"kind": kind, "seed": seed, "fraction": fraction, "p": p, "readings": int(round(fraction * 40)) if p else 0,
           "collapsed": collapsed, "condition": cond.get(kind, f"fraction {fraction:g}, seed {seed}"), "seconds": 90.0,
           "residual_detected": False}
    table = _table(hits, auc)
    return {"row": row, "table": table, "guard": table.head(2).assign(detected=False), "attribution": None,
            "pairs": pairs, "scores": scores, "summary": "No membership detected at any of 27 rows (...)"}


def _res():
    rng = np.random.default_rng(0)
    cfg = WD.DoseConfig(fractions=(0.0, 0.05, 0.5), seeds=(0, 1), n_users=30, u3=(0.5,))
    leak_hits = {("output minus base", "logits", "loss"), ("logit-lens minus base", "lm.2.resid", "loss"),
                 ("logit-lens", "lm.1.resid", "loss"), ("patched tuned-into-base", "lm.0.resid", "loss")}
    runs = []
    for s in (0, 1):
        runs += [_run("p=0 control", s, 0.0, rng=rng), _run("task-irrelevant", s, 0.0, rng=rng),
                 _run("leak", s, 0.05, rng=rng),
                 _run("leak", s, 0.5, hits=leak_hits, auc=0.7, rng=rng, collapsed=s == 1 and False),
                 _run("U3 control", s, 0.5, rng=rng)]
    runs[1]["row"]["collapsed"] = True  # fraction 0, seed 0: reading collapsed
    res = {"runs": runs, "rows": pd.DataFrame([r["row"] for r in runs]), "guard_shift": None,
           "protocol": pd.DataFrame(), "config": cfg, "seconds": 4200.0,
           "ocr": {"n": 200, "char_accuracy": 0.94, "char_accuracy_lo": 0.93, "char_accuracy_hi": 0.95, "exact_match": 0.72}}
    res.update(analyse(res))
    return res


def test_section_reports_the_dose_table_the_layers_and_the_paired_nulls_from_the_runs():
    res = _res()
    text = section(res, {}, Path("docs"), "probekit study watermark --full")
    assert "in 70.0 min" in text and "fractions 0, 0.05, 0.5 = 0, 2, 20 readings per name" in text
    assert "| output minus base (any score) | 0/2 [0.00, 0.66] | 0/2 [0.00, 0.66] | 0/2 [0.00, 0.66] | 2/2 [0.34, 1.00] " \
           "| 0/2 [0.00, 0.66] |" in text
    assert "| output loss | 0/2" in text and "| logit lens lm.1 | 0/2 [0.00, 0.66] | 0/2 [0.00, 0.66] | 0/2 [0.00, 0.66] " \
           "| 2/2" in text
    assert ("An output row (raw or minus base) was detected in 2 run(s); a layer below the last (logit lens, lens minus "
            "base, probe or patching score at `lm.0` / `lm.1`) was detected in 2 of them: fraction 0.5, seed 0: lm.0.resid, "
            "lm.1.resid; fraction 0.5, seed 1: lm.0.resid, lm.1.resid. Runs that read no U1 name (fraction 0, the "
            "controls): 0 of 6 had any method detect.") in text
    assert "| patched lm.0 (either direction) | 0/2 [0.00, 0.66] | 0/2 [0.00, 0.66] | 0/2 [0.00, 0.66] | 2/2" in text
    assert "| patched lm.1 (either direction) | 0/2" in text and "| patched lm.1 (either direction) | 0/2 [0.00, 0.66] " \
        "| 0/2 [0.00, 0.66] | 0/2 [0.00, 0.66] | 0/2" in text
    assert ("detected below the last layer: a lens score (logit lens or lens minus base) in 2, the membership probe in "
            "0, a patching score in 2.") in text
    assert "| output minus base | logits | loss | 0.70 [0.70, 0.70], 0.01, 2/2 | 0.50 [0.50, 0.50], 0.01, 0/2 |" in text
    # the paired part: fraction 0 lost its seed-0 run (collapsed) and says so; its rows are words, not blanks
    assert "Dropped runs (direct prompt 0.00 on both pools: reading collapsed): fraction 0, seed 0." in text
    assert "Fraction 0 pools 1 seed(s)." in text
    assert text.count("| reading: output loss |") == 1 and "inconclusive" in text
    zero = res["paired"][res["paired"].fraction == 0.0]
    assert len(zero) == 3 and (zero.n_units == 30).all()  # one pool (seeds 0, 1 share it), lm.2 = the output, dropped
    assert "**Layer-wise below the output: detected wherever the output is** (2 of 2 runs)." in text
    assert "the raw output loss in 0/2, 0/2, 0/2" in text and "smallest dose whose shift exceeds the MDE" in text
    lines = verdict_lines(res)
    assert lines[0].startswith("p=0 (no name), seed 0: No membership detected") and lines[-1].startswith("reader OCR")
    assert any(x.startswith("paired task-irrelevant test (fraction 0 vs p=0): reading: output loss") for x in lines)


def test_the_tables_written_rebuild_the_same_section(tmp_path):
    """``probekit study watermark`` writes every table the section is made from; reload() gives the same text."""
    from probekit.studies.printout import write_tables
    from probekit.studies.watermark.study import reload, tables

    res = _res()
    write_tables(tables(res), tmp_path)
    again = reload(tmp_path)
    assert "re-rendered from the tables it wrote" in section(again, {}, Path("docs"), "c")  # it says so
    assert again.pop("reloaded") is True
    assert section(again, {}, Path("docs"), "c") == section(res, {}, Path("docs"), "c")
    assert len(again["runs"]) == len(res["runs"]) and again["config"] == res["config"]


def test_a_run_whose_output_detects_and_no_layer_below_says_why_with_its_numbers():
    """The agreement table keeps, per such run, the smallest p below the last layer (raw and corrected) and the causal
    share of the gap carried up to the deepest layer below it; the section prints them."""
    from probekit.studies.watermark.writeup import _missed

    table = _table(hits={("output minus base", "logits", "loss")}, auc=0.6)
    below = ~table.source.str.startswith("output") & (table.point != "lm.2.resid")
    table["p_value"] = np.where(below, 0.3, 0.001)
    table.loc[below & (table.point == "lm.0.resid") & (table.source == "logit-lens") & (table.score == "loss"),
              "p_value"] = 0.02
    table["p_adjusted"] = np.minimum(1.0, table.p_value * 10)
    att = pd.DataFrame({"point": POINTS, "share_tuned": [0.1, 0.4, 0.9], "share_tuned_lo": [-2.0, -1.5, 0.3],
                        "share_tuned_hi": [2.5, 1.9, 1.2]})
    run = _run("leak", 0, 0.1, rng=np.random.default_rng(1))
    run.update(table=table, attribution=att)
    ag = WD.agreement([run])
    r = ag.iloc[0]
    assert r.layers == "none" and r.min_p_below == 0.02 and r.min_p_adjusted_below == 0.2
    assert r.share_point == "lm.1.resid" and (r.share, r.share_lo, r.share_hi) == (0.4, -1.5, 1.9)
    text = "".join(_missed(ag))
    assert "fraction 0.1, seed 0: p 0.020 (0.20 corrected), share up to lm.1.resid 0.40 [-1.50, 1.90]" in text
    assert _missed(ag.assign(layers="lm.0.resid")) == []  # nothing to explain where a layer below was detected
    assert r.localised == "none"  # the patching rows at lm.1: p 0.3 (0.6 for the layer): the sequence stops there
    # with the patching rows at lm.1 at p 0.01 and 0.04 (0.02 for the layer) it reaches lm.1 and stops at lm.0
    patched_lm1 = table.source.str.startswith("patched") & (table.point == "lm.1.resid")
    table.loc[patched_lm1, "p_value"] = [0.01, 0.04]
    got = WD.agreement([run]).iloc[0]
    assert got.localised == "lm.1.resid" and got.layers == "none"  # the verdict's rows below: still none
