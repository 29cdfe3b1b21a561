"""The probekit.report package: the old import paths are gone, the table is normalised once, modules stay small."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import probekit
from probekit.report import ScanReport, compare

REPORT = Path(probekit.__file__).parent / "report"


def test_old_import_paths_are_gone_and_the_new_ones_name_the_objects():
    """0.x shims removed (CHANGELOG.md): probekit.plots, probekit.verdict, probekit.ladder_figure and
    probekit.steering.figures; steering no longer hands out a report figure."""
    from probekit import steering
    from probekit.report import figures

    root = Path(probekit.__file__).parent  # (a file check: an editable install elsewhere could still resolve them)
    for old in ("plots.py", "verdict.py", "ladder_figure.py", "steering/figures.py"):
        assert not (root / old).exists(), old
    with pytest.raises(AttributeError):
        probekit.plots  # noqa: B018
    assert "tradeoff_figure" not in steering.__all__ and "tradeoff_figure" in figures.__all__
    assert probekit.ScanReport is ScanReport and probekit.compare is compare
    with pytest.raises(AttributeError):
        steering.tradeoff_figure  # noqa: B018


def test_steering_import_stays_free_of_the_report_layer():
    code = ("import sys, probekit.steering as s\nfrom probekit.steering import Direction, ablate, evaluate\n"
            "print('plotly' in sys.modules, 'probekit.report' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "False False"


def test_table_is_normalised_at_construction_and_assignment():
    raw = pd.DataFrame({"point": ["projector", "lm.0.resid"], "position": [None, "last"], "accuracy": [0.7, 0.9],
                        "accuracy_lo": [0.6, 0.85], "accuracy_hi": [0.8, 0.95], "chance": 0.5}, index=[5, 9])
    r = ScanReport(raw)
    assert r.table.position.tolist() == ["—", "last"] and r.table.source.tolist() == ["residual"] * 2
    assert r.table.index.tolist() == [0, 1]
    assert raw.position.isna().sum() == 1 and "source" not in raw  # the caller's table is not changed
    assert ScanReport.from_json(r.to_json()) == r
    r.table = raw.iloc[:1]
    assert r.table.source.tolist() == ["residual"] and r.table.position.tolist() == ["—"]
    r.table = None
    assert r.table.empty and not r.has_leakage
    with pytest.raises(probekit.errors.InputError, match="no 'point' column"):
        ScanReport(pd.DataFrame({"accuracy": [0.5]}))
    with pytest.raises(probekit.errors.InputError, match="must be a pandas DataFrame"):
        ScanReport([1, 2])  # type: ignore[arg-type]


def test_page_escapes_text_as_html_escape_does():
    t = pd.DataFrame({"point": ["lm.0.resid"], "position": "last", "accuracy": [0.9], "accuracy_lo": [0.85],
                      "accuracy_hi": [0.95], "chance": 0.5})
    note = "<script>alert('x')</script> & \"quoted\""
    r = ScanReport(t, settings={"model": "<m>"}, notes=[note])
    page = r.to_html()
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quoted&quot;" in page
    assert "<title>probekit scan report</title>" in page and '<p class="sub">&lt;m&gt;</p>' in page
    c = compare(ScanReport(t, notes=[note]), ScanReport(t.assign(accuracy=0.6, accuracy_lo=0.55, accuracy_hi=0.65)))
    assert '<div class="notes">&lt;script&gt;' in c.to_html()
    assert json.loads(r.to_json())["notes"] == [note]


def test_report_modules_stay_small():
    sizes = {p.relative_to(REPORT).as_posix(): len(p.read_text().splitlines()) for p in REPORT.rglob("*.py")}
    assert {"scan_report.py", "comparison.py", "verdicts.py", "html.py", "pages.py", "serialise.py", "tables.py",
            "figures/leakage.py", "figures/tradeoff.py", "figures/ladder.py"} <= set(sizes)
    assert max(sizes.values()) <= 400, sizes


def test_fmt_ci_is_the_one_value_and_interval():
    """Every writer (tables, results pages, the demo, the CLI) prints a CI through fmt_ci: a missing
    value is '–', a missing end drops the bracket, a number that rounds to zero is never '-0.00'."""
    from probekit.report.text import ci_text, fmt_ci

    assert fmt_ci(0.934, 0.9, 0.951) == "0.93 [0.90, 0.95]"
    assert fmt_ci(None, 0.1, 0.2) == fmt_ci(float("nan"), 0.1, 0.2) == fmt_ci(float("inf"), 0.1, 0.2) == "–"
    assert fmt_ci(0.5, float("nan"), 0.6) == fmt_ci(0.5, 0.4, None) == "0.50"
    assert fmt_ci(-0.001, -0.004, 0.2) == "0.00 [0.00, 0.20]"
    assert fmt_ci(-0.0004, -0.0042, 0.0123, 3) == "0.000 [-0.004, 0.012]"
    assert ci_text({"accuracy": 0.8123, "accuracy_lo": 0.7, "accuracy_hi": 0.9}, "accuracy", 3) == "0.812 [0.700, 0.900]"
