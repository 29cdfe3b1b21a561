"""What summaries and study printouts state agrees with the tables they describe (issue 22).

No wording snapshots: each test reads the counts and names a line states and checks them
against the table it came from.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from probekit.report import ScanReport, compare

# ---------------------------------------------------------------- Comparison.summary


def _row(point: str, position: str, acc: float, hw: float, source: str = "residual") -> dict:
    return dict(point=point, position=position, source=source, n=200, accuracy=acc, accuracy_lo=acc - hw,
                accuracy_hi=acc + hw, chance=0.5, entropy_bits=1.0, mi_bits=0.2, mi_lo=0.1, mi_hi=0.3,
                mi_perm_bits=-0.01)


def _residual_and_output(n_layers: int, positions=("last",), output=("logits",)) -> pd.DataFrame:
    """Residual rows at every position plus output (top-k logits) rows: scan()'s shape."""
    rows = [_row(f"lm.{i}.resid", pos, 0.7 + 0.02 * i, 0.06) for pos in positions for i in range(n_layers)]
    rows += [_row(p, "last", 0.75, 0.05, source="logits-topk") for p in output]
    return pd.DataFrame(rows)


def _counts(text: str) -> dict:
    """The counts the difference lines state: totals, changed rows, rows whose CI excludes 0."""
    lines = text.splitlines()[2:]  # lines 1-2 are each model's own verdict, on its own table
    body = "\n".join(lines)
    totals = [int(n) for n in re.findall(r"\b\d+ of (\d+) (?:points|rows)", body)]
    totals += [int(n) for n in re.findall(r"any of (\d+) (?:points|rows)", body)]
    totals += [int(n) for n in re.findall(r"at all (\d+) (?:points|rows)", body)]
    changed = re.search(r"change detected at (\d+) of", body)
    excl = re.search(r"excludes 0 at (\d+) of", body)
    return {"totals": totals, "changed": int(changed.group(1)) if changed else 0,
            "excludes_0": int(excl.group(1)) if excl else None, "text": body}


def _assert_counts_agree(c) -> dict:
    """Every count of the difference lines is one of the paired table's, worked out here from its CIs."""
    from probekit._stats import holm, p_difference_from_ci

    t = c.table
    ok = np.isfinite(t["diff"]) & np.isfinite(t["diff_lo"]) & np.isfinite(t["diff_hi"])
    tested = t[ok]
    changed = int((holm(p_difference_from_ci(tested["diff"], tested["diff_lo"], tested["diff_hi"])) < 0.05).sum())
    excludes = int(((tested["diff_lo"] > 0) | (tested["diff_hi"] < 0)).sum())
    got = _counts(c.summary())
    assert got["totals"], got["text"]
    assert set(got["totals"]) == {len(tested)}, got["text"]  # one N everywhere: the rows with a tested difference
    assert got["changed"] == changed, got["text"]
    if got["excludes_0"] is not None:
        assert got["excludes_0"] == excludes, got["text"]
        assert got["excludes_0"] >= got["changed"]  # a Holm-corrected change's uncorrected CI excludes 0
    left = len(t) - len(tested)
    assert (f"{left} of the table's {len(t)} rows" in got["text"]) == (left > 0), got["text"]
    return got


def test_no_change_counts_every_row_output_rows_included():
    # issue 22: "no change detected at any of 6 points" then "... the same in base and tuned at all 4 rows"
    t = _residual_and_output(4, output=("logits", "logits.k5"))
    c = compare(ScanReport(t), ScanReport(t.copy()))
    got = _assert_counts_agree(c)
    assert got["totals"][0] == len(c.table) == 6


def test_a_changed_output_row_is_counted_by_every_line():
    # issue 22 (quickstart): "change detected at 1 of 7 points" then "excludes 0 at 0 of 5 rows"
    base = _residual_and_output(5, output=("logits", "logits.k5"))
    tuned = base.copy()
    tuned.loc[tuned.point == "logits", ["accuracy", "accuracy_lo", "accuracy_hi"]] = [0.45, 0.40, 0.50]
    tuned.loc[tuned.point == "lm.0.resid", "accuracy"] += 0.01  # a small residual change, CI includes 0
    c = compare(ScanReport(base), ScanReport(tuned))
    got = _assert_counts_agree(c)
    assert got["changed"] == 1 and got["excludes_0"] == 1 and got["totals"][0] == 7
    assert "Largest change: logits @ last" in got["text"]  # the largest change is the changed row


def test_nan_differences_and_several_positions():
    base = _residual_and_output(3, positions=("last", "image_mean"))
    tuned = base.copy()
    tuned.loc[(tuned.point == "lm.2.resid") & (tuned.position == "image_mean"), ["accuracy", "accuracy_lo",
                                                                               "accuracy_hi"]] = [0.40, 0.35, 0.45]
    tuned.loc[tuned.point == "lm.0.resid", ["accuracy_lo", "accuracy_hi"]] = np.nan  # no CI: no test
    c = compare(ScanReport(base), ScanReport(tuned))
    got = _assert_counts_agree(c)
    assert len(c.table) == 7 and got["totals"][0] == 5 and got["changed"] == 1
    # rows without any difference but a zero change elsewhere: still one N
    same = base.copy()
    same.loc[same.point == "lm.1.resid", ["accuracy", "accuracy_lo", "accuracy_hi"]] = np.nan
    _assert_counts_agree(compare(ScanReport(base), ScanReport(same)))


def test_only_output_rows_have_a_difference():
    base = _residual_and_output(2)
    tuned = base.copy()
    tuned.loc[tuned.source == "residual", ["accuracy", "accuracy_lo", "accuracy_hi"]] = np.nan
    tuned.loc[tuned.point == "logits", ["accuracy", "accuracy_lo", "accuracy_hi"]] = [0.45, 0.40, 0.50]
    c = compare(ScanReport(base), ScanReport(tuned))
    got = _assert_counts_agree(c)
    assert got["changed"] == 1 and "Largest change: logits @ last" in got["text"]


def test_each_models_verdict_counts_its_own_table():
    base = _residual_and_output(4)
    tuned = base[base.point != "lm.3.resid"].reset_index(drop=True)  # a row only the base has
    c = compare(ScanReport(base), ScanReport(tuned))
    lines = c.summary().splitlines()
    for line, t in zip(lines[:2], (base, tuned)):
        assert re.search(rf"\b(of|any of) {len(t)} points", line), line
    _assert_counts_agree(c)


# ---------------------------------------------------------------- probekit study: verdicts, then files


def _ci(v: float, hw: float = 0.05) -> tuple[float, float, float]:
    return v, v - hw, v + hw


def _utility(forget: float, retain: float) -> dict:
    out = {}
    for split, v in (("forget", forget), ("retain", retain), ("unseen", 0.25)):
        for mod in ("image", "text"):
            out[f"{split}_{mod}"], out[f"{split}_{mod}_lo"], out[f"{split}_{mod}_hi"] = _ci(v)
    return out


def made_up_unlearning() -> dict:
    """The shape of ``run_study(StudyConfig.small())``'s result: one split, NPO, no transfer profiles."""
    probes = []
    for model, profiles, hit in (("tuned", "trained", True), ("tuned", "never seen", False), ("base", "trained", False)):
        for features in ("residual", "lens"):
            for i in (0, 1):
                for pos in ("last", "image_mean"):
                    good = hit and i == 1 and pos == "last"
                    acc = 0.75 if good else 0.26
                    probes.append(dict(model=model, profiles=profiles, features=features, point=f"lm.{i}.resid",
                                       layer=i, position=pos, n=144, accuracy=acc, accuracy_lo=acc - 0.06,
                                       accuracy_hi=acc + 0.06, chance=0.25, mi_bits=0.1, p=1e-9 if good else 0.5,
                                       detected=good))
    mia = [dict(model=m, attack=a, auc=auc, auc_lo=auc - 0.03, auc_hi=auc + 0.03, tpr_at_1fpr=0.1, tpr_lo=0.0,
                tpr_hi=0.2, n_members=192, n_nonmembers=192)
           for m, auc in (("tuned", 0.85), ("base", 0.5)) for a in ("loss", "min_k", "min_k_pp")]
    unlearning = [dict(split=15, method=m, forget_profiles=4, seconds=3.0, **_utility(f, r))
                  for m, f, r in (("none", 0.9, 0.9), ("npo", 0.2, 0.3))]
    up = [dict(features=f, point=f"lm.{i}.resid", position=pos, accuracy=0.5, accuracy_lo=0.4, accuracy_hi=0.6,
               chance=0.25, n=24, split=15, method=m, p=0.01 if m == "none" and i == 1 else 0.5,
               detected=m == "none" and i == 1)
          for m in ("none", "npo") for f in ("residual", "lens") for i in (0, 1) for pos in ("last", "image_mean")]
    return {"config": {"out": "x", "splits": (15,), "n_transfer": 0}, "train": {"final_loss": 0.1, "seconds": 9.0,
                                                                               "samples": 300},
            "utility_tuned": _utility(0.9, 0.9), "utility_base": _utility(0.25, 0.22),
            "probes": pd.DataFrame(probes), "mia": pd.DataFrame(mia), "transfer": pd.DataFrame(),
            "unlearning": pd.DataFrame(unlearning),
            "unlearning_mia": pd.DataFrame([{**r, "split": 15, "method": m} for m in ("none", "npo") for r in mia[:3]]),
            "unlearning_probes": pd.DataFrame(up), "seconds": 12.0}


def _sections(out: str, starting: str) -> tuple[list[str], list[str], list[str]]:
    """The printout after the starting line: verdict lines, wrote lines, what follows them; checks the order."""
    lines = [x for x in out.splitlines() if x.strip()]
    assert lines[0].startswith(f"probekit study {starting}: ")
    body = lines[1:]
    wrote = [i for i, x in enumerate(body) if x.startswith("wrote ")]
    assert wrote, out
    assert wrote == list(range(wrote[0], wrote[-1] + 1)), out  # the paths together, after the verdicts
    assert re.fullmatch(r"\(\d+ s; .+ in .+\)", body[-1]), body[-1]
    return body[:wrote[0]], [body[i][len("wrote "):] for i in wrote], body[wrote[-1] + 1:-1]


def test_study_unlearning_prints_verdicts_then_paths_and_writes_no_empty_csv(monkeypatch, tmp_path, capsys):
    import probekit.studies.unlearning.study as U
    from probekit.cli import main

    res = made_up_unlearning()
    monkeypatch.setattr(U, "run_study", lambda cfg: Path(cfg.out).mkdir(parents=True) or res)
    out = tmp_path / "run"
    assert main(["study", "unlearning", "--small", "--out", str(out)]) == 0
    verdicts, wrote, after = _sections(capsys.readouterr().out, "unlearning")
    # the CSVs: every non-empty table, each with rows; the empty transfer table is not written, and why is said
    tables = {k for k, v in res.items() if isinstance(v, pd.DataFrame) and len(v)}
    assert {Path(p).name for p in wrote} == {f"{k}.csv" for k in tables}
    assert all(len(pd.read_csv(p)) == len(res[Path(p).stem]) for p in wrote)
    assert not (out / "transfer.csv").exists()
    assert [x for x in after if "transfer.csv" in x and "n_transfer=0" in x], after
    # verdict lines come first, and their counts are the tables'
    assert verdicts and not any(x.startswith("wrote") for x in verdicts)
    pr = res["probes"]
    for (model, profiles), g in pr.groupby(["model", "profiles"], sort=False):
        line = [x for x in verdicts if f"{model} model on {profiles} profiles" in x]
        assert len(line) == 1, verdicts
        n = int(g.detected.sum())
        assert (f"detected at {n} of {len(g)} rows" if n else f"any of {len(g)} rows") in line[0]
    npo = [x for x in verdicts if x.startswith("npo ")]
    up = res["unlearning_probes"]
    assert len(npo) == 1, verdicts
    after_n, before_n = (int(up[up.method == m].detected.sum()) for m in ("npo", "none"))
    assert re.search(rf"forget profiles: (nothing detected at any of|detected at {after_n} of) 8 rows \(before: detected "
                     rf"at {before_n} of 8 rows\)", npo[0]), npo[0]


def _scan_table(acc: float) -> pd.DataFrame:
    return pd.DataFrame({"point": ["lm.0.resid", "lm.1.resid"], "position": "last", "accuracy": [0.5, acc],
                         "accuracy_lo": [0.43, acc - 0.07], "accuracy_hi": [0.57, acc + 0.07], "chance": 0.5})


def test_study_memorization_prints_verdicts_then_paths(monkeypatch, tmp_path, capsys):
    import probekit.studies.memorization.study as mem
    from probekit.cli import main
    from probekit.report.verdicts import verdict

    reports = {("base", 0): ScanReport(_scan_table(0.52)), ("p=1", 0): ScanReport(_scan_table(0.9))}
    res = {"table": pd.DataFrame({"model": ["base", "p=1"], "probe_accuracy": [0.52, 0.9]}),
           "gradient_cosine_summary": pd.DataFrame({"p": [1.0], "cos_mean": [0.1]}),
           "unlearning": pd.DataFrame(), "removal": None, "reports": reports, "seconds": 3.0}
    monkeypatch.setattr(mem, "run_memorization", lambda cfg: Path(cfg.out).mkdir(parents=True) or res)
    assert main(["study", "memorization", "--out", str(tmp_path / "m")]) == 0
    verdicts, wrote, after = _sections(capsys.readouterr().out, "memorization")
    assert len(verdicts) == len(reports)
    for line, rep in zip(verdicts, reports.values()):  # each scan's own verdict, once
        assert line.endswith(": " + verdict(rep.table))
    assert {Path(p).name for p in wrote} == {"table.csv", "gradient_cosine_summary.csv"}
    assert not (tmp_path / "m" / "unlearning.csv").exists() and any("unlearning.csv" in x for x in after)


def test_study_watermark_prints_verdicts_then_paths(monkeypatch, tmp_path, capsys):
    import probekit.studies.watermark.study as ws
    from probekit.cli import main

    def run(kind, summary):
        table = pd.DataFrame({"point": ["logits"], "source": ["output"], "score": ["loss"], "auc": [0.5]})
        return {"row": {"condition": kind, "kind": kind}, "table": table, "summary": summary + "\nOutput attack loss: ..."}

    summaries = ["No membership detected at any of 27 rows (family-wise test; would have detected AUC >= 0.63)",
                 "Membership detected at 2 of 27 rows (permutation test, family-wise 0.05); first layer: lm.1.resid"]
    runs = [run("fraction 0, seed 0", summaries[0]), run("fraction 0.5, seed 0", summaries[1])]
    res = {"runs": runs, "rows": pd.DataFrame([r["row"] for r in runs]), "guard_shift": None,
           "paired": pd.DataFrame(), "dose": pd.DataFrame({"method": ["output loss"], "rate": [0.5]}),
           "ocr": {"char_accuracy": 0.9, "char_accuracy_lo": 0.88, "char_accuracy_hi": 0.92},
           "gradients": pd.DataFrame({"batch_size": [2], "cos": [0.1]}), "seconds": 5.0}
    monkeypatch.setattr(ws, "run_study", lambda full: res)
    assert main(["study", "watermark", "--out", str(tmp_path / "w")]) == 0
    verdicts, wrote, _ = _sections(capsys.readouterr().out, "watermark")
    for v in summaries:  # each run's own verdict line, once
        assert sum(v in line for line in verdicts) == 1
    assert {Path(p).name for p in wrote} == {"rows.csv", "dose.csv", "gradients.csv", "membership.csv"}


def _tiny_ladder(**kw):
    """LadderConfig.small, smaller still: the printout, not the finding, is under test."""
    from probekit.studies.ladder.organism import LadderConfig

    base = dict(out="probekit-ladder-small", ask="red", num_layers=2, n_train=64, steps=12, n_test=40, n_eval=100,
                lens_steps=10, n_boot=50, ks=(2, None), progress=False, attributes=("target_material", "random"),
                seeds=(0,))
    return LadderConfig(**{**base, **kw})


def test_study_ladder_prints_each_verdict_once_and_names_the_full_row_one_way(monkeypatch, tmp_path, capsys):
    import probekit.studies.ladder.organism as lad
    from probekit.cli import main

    kept = {}
    real = lad.run_ladder

    def run(cfg):
        kept["res"] = real(cfg)
        return kept["res"]

    monkeypatch.setattr(lad.LadderConfig, "small", classmethod(lambda cls, **kw: _tiny_ladder(**kw)))
    monkeypatch.setattr(lad, "run_ladder", run)
    assert main(["study", "ladder", "--small", "--out", str(tmp_path / "l")]) == 0
    out = capsys.readouterr().out
    res = kept["res"]
    for attr, v in res["verdicts"].items():  # printed once: progress lines do not repeat them
        assert out.count(f"{attr}: {v['all']}") == 1 and out.count(v["all"]) == 1, out
    assert "[ladder" not in out
    # the full-vocabulary row has one name: the table's column, the verdicts, the CSV's k_label
    vocab = res["vocab"]
    assert f"k={vocab}" not in out and "logits k=full" in out
    named = set(re.findall(r"logits k=(\w+)", out))
    assert named <= {str(k) for k in (2,)} | {"full"}, named
    assert set(pd.read_csv(tmp_path / "l" / "ladder.csv").k_label.dropna().astype(str)) == {"2", "full"}


def test_ladder_verdict_names_the_full_row_full():
    from probekit.readout.ladder import ladder_verdict

    null = np.random.default_rng(0).normal(size=(2, 201))
    null[:, 0] = 9.0  # both far above their permutations
    t = pd.DataFrame({"source": ["logits", "logits"], "point": ["logits", "logits"], "k": [2.0, 2053.0],
                      "k_label": ["2", "full"], "accuracy": [0.9, 0.95], "chance": 0.5, "n": 200, "n_units": 200,
                      "perm_null": list(null)})
    line = ladder_verdict(t)[1]
    assert line.endswith(": logits k=2, logits k=full") and "2053" not in line


# ---------------------------------------------------------------- the demo's progress lines


def test_demo_progress_lines_say_what_each_step_does(tmp_path, capsys):
    from probekit.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=str(tmp_path / "demo"), steps=8, n_train=48, n_eval=80, num_layers=2, n_boot=30,
                        ks=(2, None), progress=True))
    lines = [x for x in capsys.readouterr().out.splitlines() if x.strip()]
    assert lines and not [x for x in lines if "[ladder" in x], lines
    steps = [re.sub(r"^\[\s*\d+ s\] ", "", x) for x in lines]
    assert all(s != x for s, x in zip(steps, lines)), lines  # each line: the time so far, then the step
    # in words, the steps a newcomer sees: fine-tuning (with its step count), the two scans, the reports
    assert any(s.startswith("Fine-tuning") and "8 steps" in s for s in steps), steps
    assert any(s.startswith("Scanning") and "material" in s for s in steps), steps
    assert any(s.startswith("Scanning") and "coin flip" in s for s in steps), steps
    assert steps[-1].startswith("Writing the two HTML reports")
