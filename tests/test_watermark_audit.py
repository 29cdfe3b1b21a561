"""The larger audit of the dose study: finished runs are read back checked, and its section says, from the runs,
whether every output detection is matched below the last layer and whether fraction 0 stayed quiet."""

import json

import numpy as np
import pandas as pd
import pytest

from probekit.errors import StoreError
from probekit.studies.watermark import audit as A
from test_watermark_section import _table


def _write(out, fraction, seed, hits=(), p_below=0.3, layers=3):
    label = f"fraction {fraction:g}, seed {seed}" if fraction else f"fraction 0, seed {seed}"
    points = [f"lm.{i}.resid" for i in range(layers)]
    t = _table(hits=hits, auc=0.6 if hits else 0.5, points=points)
    below = ~t.source.str.startswith("output") & (t.point != points[-1])
    t["p_value"] = np.where(below, p_below, 0.001 if hits else 0.4)
    t["p_adjusted"] = np.minimum(1.0, t.p_value * 10)
    tag = A.tag(fraction, seed, layers=layers)
    t.assign(condition=label).to_csv(out / f"table-{tag}.csv", index=False)
    pd.DataFrame({"point": points, "share_tuned": np.linspace(0.2, 0.9, layers),
                  "share_tuned_lo": np.linspace(-1.0, 0.4, layers), "share_tuned_hi": np.linspace(1.5, 1.1, layers),
                  "condition": label}).to_csv(out / f"attribution-{tag}.csv", index=False)
    row = {"condition": label, "kind": "leak" if fraction else "task-irrelevant", "fraction": fraction, "seed": seed,
           "p": 1.0, "readings": int(round(fraction * 40)), "seconds": 120.0}
    (out / f"row-{tag}.json").write_text(json.dumps(row))


OUT = {("output minus base", "logits", "loss")}
INNER = OUT | {("patched base-into-tuned", "lm.1.resid", "loss")}


def test_the_section_reads_the_runs_back_and_says_whether_the_layers_follow(tmp_path):
    for seed in (0, 1):
        _write(tmp_path, 0.0, seed)
        _write(tmp_path, 0.25, seed, hits=INNER)
    res = A.run(tmp_path, fractions=(0.0, 0.25), seeds=(0, 1), verbose=False)  # every run read back: no model
    text = A.section(res, "python -m probekit.study.watermark.audit")
    assert "| patched lm.1 (either direction) | 0/2 [0.00, 0.66] | 2/2 [0.34, 1.00] |" in text
    assert "detected in 2 run(s); a row at `lm.0` / `lm.1` (logit lens, lens minus base, probe or patching score) " \
           "in 2 of them" in text
    assert "Runs that read no name (fraction 0): 0 of 2 had any row detected." in text
    assert "**Below the last layer the leak is detected wherever the output detects it (2 of 2), and nothing at " \
           "fraction 0.**" in text
    assert "8 held-out scenes per name pair** (1,600 images" in text and "4 runs, 8 min" in text
    # a run where only the output detects: the verdict says so and the why-paragraph gives its numbers
    _write(tmp_path, 0.25, 1, hits=OUT, p_below=0.03)
    text = A.section(A.run(tmp_path, fractions=(0.0, 0.25), seeds=(0, 1), verbose=False), "c")
    assert "**Not every output detection is matched below the last layer** (1 of 2, by a row or the " \
           "localisation)." in text
    assert "names a layer below the last in 0 of these 2 runs. " in text  # lm.1's p: 0.03 doubled, above 0.05
    assert "fraction 0.25, seed 1: p 0.030 (0.30 corrected), share up to lm.1.resid 0.55 [-0.30, 1.30]" in text
    # the same run with its patching rows at p 0.02: the localisation reaches lm.0 (0.04 at each layer), so the
    # run is matched below the last and there is nothing left to explain
    _write(tmp_path, 0.25, 1, hits=OUT, p_below=0.02)
    text = A.section(A.run(tmp_path, fractions=(0.0, 0.25), seeds=(0, 1), verbose=False), "c")
    assert "names a layer below the last in 1 of these 2 runs: fraction 0.25, seed 1: lm.0.resid, 1 of them with " \
           "no row of the verdict below the last. " in text
    assert "wherever the output detects it (2 of 2, by a row or the localisation), and nothing at fraction 0.**" \
        in text and "Why no layer below the last" not in text


def test_a_run_read_back_is_checked(tmp_path):
    _write(tmp_path, 0.25, 0, hits=INNER)
    (tmp_path / "row-f0.25-s0.json").write_text(json.dumps({"condition": "fraction 0.5, seed 0"}))
    with pytest.raises(StoreError, match="is not the run 'fraction 0.25, seed 0'"):
        A.run(tmp_path, fractions=(0.25,), seeds=(0,), verbose=False)
    _write(tmp_path, 0.25, 0, hits=INNER)
    t = pd.read_csv(tmp_path / "table-f0.25-s0.csv").drop(columns="p_adjusted")
    t.to_csv(tmp_path / "table-f0.25-s0.csv", index=False)
    with pytest.raises(StoreError, match=r"its table lacks \['p_adjusted'\]"):
        A.run(tmp_path, fractions=(0.25,), seeds=(0,), verbose=False)
    (tmp_path / "row-f0.25-s0.json").write_text("{not json")
    with pytest.raises(StoreError, match="cannot read the audit's run f0.25-s0"):
        A.run(tmp_path, fractions=(0.25,), seeds=(0,), verbose=False)


def test_a_larger_pool_is_its_own_run_and_says_so(tmp_path):
    assert A.tag(0.25, 3) == "f0.25-s3" and A.tag(0.25, 3, names=400) == "f0.25-s3-n400"
    for seed in (0, 1):
        _write(tmp_path, 0.25, seed, hits=INNER)
        for f in tmp_path.glob(f"*-{A.tag(0.25, seed)}.*"):  # the same runs, filed as the 400-name pool's
            f.rename(f.with_name(f.name.replace(A.tag(0.25, seed), A.tag(0.25, seed, names=400))))
    res = A.run(tmp_path, scenes=2, fractions=(0.25,), seeds=(0, 1), names=400, verbose=False)
    text = A.section(res, "c")
    assert text.startswith("### A larger audit: 2 held-out scenes a name pair, 400 names a pool")
    assert "**400 names a pool** (the study: 100" in text and "(1,600 images; the study: 2, 400)" in text


def test_no_output_detection_is_not_called_a_mismatch(tmp_path):
    _write(tmp_path, 0.1, 0)
    text = A.section(A.run(tmp_path, fractions=(0.1,), seeds=(0,), verbose=False), "c")
    assert "detected in 0 run(s)" in text and "**No output row was detected: nothing to match below the last layer.**" in text
    assert "Not every output detection" not in text


def test_a_deeper_reader_is_its_own_run_with_a_row_per_layer(tmp_path):
    assert A.tag(0.25, 3, layers=6) == "f0.25-s3-L6" and A.tag(0.25, 3, names=400, layers=6) == "f0.25-s3-n400-L6"
    _write(tmp_path, 0.0, 0, layers=6)
    _write(tmp_path, 0.0, 1, layers=6)
    _write(tmp_path, 0.25, 0, hits=OUT | {("patched base-into-tuned", "lm.4.resid", "loss")}, layers=6)
    _write(tmp_path, 0.25, 1, hits=OUT, p_below=0.03, layers=6)
    res = A.run(tmp_path, fractions=(0.0, 0.25), seeds=(0, 1), layers=6, verbose=False)  # read back: no model
    text = A.section(res, "c")
    assert text.startswith("### A larger audit: 8 held-out scenes a name pair, a 6-block reader")
    assert "| logit lens lm.5 (= output) | 0/2 [0.00, 0.66] | 0/2 [0.00, 0.66] |" in text
    assert "| patched lm.4 (either direction) | 0/2 [0.00, 0.66] | 1/2 [0.09, 0.91] |" in text
    assert "patched lm.5" not in text and "logit lens lm.2 (= output)" not in text
    assert "a row at `lm.0`-`lm.4` (logit lens, lens minus base, probe or patching score) in 1 of them" in text
    # the why-paragraph reads the share up to the deepest layer below the last: lm.4 of 6 (0.2 + 4 * 0.14)
    assert "fraction 0.25, seed 1: p 0.030 (0.30 corrected), share up to lm.4.resid 0.76 [0.12, 1.18]" in text
    assert "8 held-out scenes a name, 6 blocks) the rows below the last layer lack the power to find the part of the " \
           "leak formed there in 1 of these runs.\n" in text  # its share's interval lies above 0
    assert "in the others" not in text  # the one run missed below is that run: no others to speak of


def test_chosen_fine_tunes_get_their_own_section_and_question(tmp_path, capsys):
    out, docs = tmp_path / "out", tmp_path / "docs"
    out.mkdir(), docs.mkdir()
    (docs / "results.md").write_text("# Results\n\n<!-- watermark-audit -->\nthe 8-scene section\n<!-- /watermark-audit -->\n")
    _write(out, 0.1, 3, hits=INNER)
    _write(out, 0.25, 2, hits=OUT, p_below=0.04)
    assert A.main(["--out", str(out), "--scenes", "32", "--runs", "0.1:3,0.25:2", "--docs", str(docs),
                   "--section", "watermark-audit-misses", "--question", "are the misses matched?"]) == 0
    md = (docs / "results.md").read_text()
    assert "the 8-scene section" in md  # the other section is kept
    got = md.split("<!-- watermark-audit-misses -->")[1]
    assert got.startswith("\n### A larger audit: 32 held-out scenes a name pair, 2 chosen fine-tunes\n")
    assert "`python -m probekit.studies.watermark.audit --scenes 32 --runs 0.1:3,0.25:2` (2 runs" in got
    assert "Chosen fine-tunes of the dose study (same names" in got and "in 0 of these 2 runs. No run at fraction 0 here. " in got and "The question, set before running: are the misses matched?" in got
    assert "| output minus base (any score) | 1/1 [0.21, 1.00] | 1/1 [0.21, 1.00] |" in got
    assert "Decided after" not in got  # nothing was: no such paragraph
    A.main(["--out", str(out), "--scenes", "32", "--runs", "0.1:3,0.25:2", "--docs", str(docs), "--section",
            "watermark-audit-misses", "--question", "q?", "--after", "the rule R."])
    assert "\n**Decided after these runs:** the rule R.\n<!-- /watermark-audit-misses -->" in \
        (docs / "results.md").read_text()
    assert "in 1 of them: fraction 0.1, seed 3: lm.1.resid; fraction 0.25, seed 2: none" in got
    with pytest.raises(SystemExit):
        A.main(["--out", str(out), "--runs", "0.1-3"])
    assert "--runs takes FRACTION:SEED pairs" in capsys.readouterr().err


def test_fine_tunes_on_new_seeds_are_not_called_the_studys(tmp_path):
    """Seeds past the study's draw their own pools and scenes: the section names them as new runs of its recipe."""
    _write(tmp_path, 0.0, 6)
    _write(tmp_path, 0.5, 7, hits=INNER)
    text = A.section(A.run(tmp_path, pairs=[(0.0, 6), (0.5, 7)], verbose=False), "c")
    assert text.startswith("### A larger audit: 8 held-out scenes a name pair, 2 fine-tunes on new seeds\n")
    assert "Fine-tunes on new seeds (6, 7: their own name pools and scenes, the dose study's recipe and settings)" \
        in text and "dose study (same names" not in text
    single = A.section(A.run(tmp_path, pairs=[(0.5, 7)], verbose=False), "c")
    assert single.startswith("### A larger audit: 8 held-out scenes a name pair, 1 fine-tune on a new seed\n")
    assert "(1 run, 2 min of runs" in single and "A fine-tune on a new seed (7: its own" in single
    _write(tmp_path, 0.1, 3, hits=INNER)
    mixed = A.section(A.run(tmp_path, pairs=[(0.1, 3), (0.5, 7)], verbose=False), "c")
    assert "Chosen fine-tunes of the dose study and on new seeds (7: their own" in mixed
    assert mixed.startswith("### A larger audit: 8 held-out scenes a name pair, 2 chosen fine-tunes, some on new seeds\n")


def test_the_shares_say_where_the_leak_forms_run_by_run():
    from probekit.studies.watermark.writeup import _placed

    missed = pd.DataFrame({"condition": ["a", "b", "c", "d"], "share_lo": [-0.68, 0.12, -1.2, 0.1],
                           "share_hi": [0.97, 1.18, 1.4, 0.9]})
    text = _placed(missed)
    assert text.startswith("Where the shares place the leak: in 2 runs (a; d) the interval lies below 1: part of the "
                           "leak (at least 1 minus the upper bound) forms in the last block")
    assert "; in 2 runs (b; d) the interval lies above 0: a part of the gap is formed below the last block" in text
    assert "; in 1 run (c) the interval holds both 0 and 1: these data do not place the leak" in text
    assert _placed(missed.iloc[0:0]) == ""


def test_the_section_says_how_well_the_fine_tunes_read():
    rows = [{"direct_seen": a, "direct_unseen": b, "collapsed": a == b == 0, "condition": c}
            for a, b, c in ((0.6, 0.5, "x"), (0.0, 0.0, "y"), (0.7, 0.4, "z"))]
    (line,) = A._reading([{"row": r} for r in rows])[1:]
    assert "read seen names at 0.00-0.70 (median 0.60) and unseen ones at 0.00-0.50 (median 0.40); reading " \
           "collapsed (0.00 on both) in y." in line and A._reading([{"row": dict(rows[1], condition="a, b")}, {"row": rows[1]}])[1].endswith("in a, b; y.")
    assert A._reading([{"row": {"condition": "x"}}]) == []
    one = A._reading([{"row": rows[0]}])[1]  # one run: its values, no range
    assert f"the fine-tune read seen names at {rows[0]['direct_seen']:.2f} and unseen ones at " in one
