"""What summaries and study printouts state agrees with the tables they describe (issue 22).

No wording snapshots: each test reads the counts and names a line states and checks them
against the table it came from.
"""

from __future__ import annotations

import math
import re

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
