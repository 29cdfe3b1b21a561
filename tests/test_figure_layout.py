"""Layout of the report figures and pages (issue 22: frictions a new user hit).

Structure, not snapshots: which panel a trace sits in, marker modes, line dashes against the
words that describe them, the template, the leakage table's columns and CSS, page titles.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pandas as pd
import plotly.io as pio
import pytest

from probekit import plots
from probekit.ladder_figure import ladder_figure
from probekit.report import ScanReport, compare
from probekit.report.html import CSS
from probekit.report.pages import CAPTIONS, leakage_rows
from probekit.report.tables import normalise

ROOT = Path(__file__).resolve().parents[1]


def wilson(p: float, n: int = 200, z: float = 1.96) -> tuple[float, float]:
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return c - h, c + h


def leakage_table(shift: float = 0.0, pre: tuple[str, ...] = ("vision.0.resid", "vision.1.resid", "projector"),
                  positions: tuple[str, ...] = ("last", "image_mean"), layers: int = 6) -> pd.DataFrame:
    """scan()-shaped: residual rows per layer and position, and output (top-k logits) rows at EVERY position."""
    rows = []
    pts = list(pre) + ["lm.embed"] + [f"lm.{i}.resid" for i in range(layers)]
    for pos in positions:
        for j, p in enumerate(pts):
            acc = min(0.99, 0.55 + (0.4 - shift) * j / len(pts))
            lo, hi = wilson(acc)
            rows.append(dict(point=p, position=pos, source="residual", n=200, accuracy=acc, accuracy_lo=lo,
                             accuracy_hi=hi, chance=0.5, entropy_bits=1.0, mi_bits=acc - 0.5, mi_lo=acc - 0.55,
                             mi_hi=acc - 0.45, mi_perm_bits=-0.01, control_accuracy=0.52, selectivity=acc - 0.52))
        acc = 0.7 - shift / 2 + (0.03 if pos == positions[0] else 0.0)
        lo, hi = wilson(acc)
        rows.append(dict(point="logits", position=pos, source="logits-topk", n=200, accuracy=acc, accuracy_lo=lo,
                         accuracy_hi=hi, chance=0.5, entropy_bits=1.0, mi_bits=0.1, mi_lo=0.05, mi_hi=0.15,
                         mi_perm_bits=-0.01, control_accuracy=0.5, selectivity=acc - 0.5))
    return pd.DataFrame(rows)


def ladder_table() -> pd.DataFrame:
    return pd.DataFrame({"source": ["residual", "residual", "tuned-lens", "logits", "logits"],
                         "layer": [0, 1, 1, None, None], "k": [None, None, None, 2, 10],
                         "accuracy": [0.6, 0.9, 0.8, 0.6, 0.7], "accuracy_lo": [0.55, 0.85, 0.75, 0.55, 0.65],
                         "accuracy_hi": [0.65, 0.95, 0.85, 0.65, 0.75], "chance": 0.5})


def axis_key(ref: str) -> str:
    """A trace's ``xaxis`` ("x", "x3") as a layout key ("xaxis", "xaxis3")."""
    return "xaxis" + ref[1:]


def x_axes(fig) -> dict[str, object]:
    lay = fig.layout
    return {k: lay[k] for k in lay if re.fullmatch(r"xaxis\d*", k)}


def panel_axes(fig) -> tuple[str, str]:
    """(layer axis, output axis) layout keys, found by their titles (plotly's <br> read as a space)."""
    axes = x_axes(fig)
    titled = {k: (a.title.text or "").replace("<br>", " ") for k, a in axes.items()}
    layer = [k for k, t in titled.items() if t.startswith("language-model layer")]
    out = [k for k, t in titled.items() if "output" in t and "top-k logits" in t and k not in layer]
    assert layer, f"no layer axis among {titled}"
    assert out, f"no output (top-k logits) panel among the x axes {titled}"
    return layer[0], out[0]


def same_column(fig, key: str) -> set[str]:
    """The layout keys of every x axis sharing ``key``'s domain (the same column, any row)."""
    dom = tuple(fig.layout[key].domain)
    return {k for k, a in x_axes(fig).items() if tuple(a.domain) == dom}


def output_traces(fig) -> list:
    """Traces that draw the output rows (their hover text names the ``logits`` point)."""
    return [tr for tr in fig.data if tr.text is not None and any(str(t).startswith("<b>logits @") for t in tr.text)]


# ---------------------------------------------------------------- 1. output rows: their own panel


@pytest.mark.parametrize("metric", ["accuracy", "mi_bits"])
def test_output_rows_are_markers_in_a_narrow_panel_at_the_right_never_bands_across_layers(metric):
    fig = plots.leakage_curves(leakage_table(), metric)
    layer, out = panel_axes(fig)
    ld, od = fig.layout[layer].domain, fig.layout[out].domain
    assert od[0] >= ld[1] and (od[1] - od[0]) < 0.5 * (ld[1] - ld[0])  # to the right, and narrow
    on_layer = [tr for tr in fig.data if axis_key(tr.xaxis or "x") == layer]
    assert on_layer and not [tr for tr in on_layer if tr in output_traces(fig)]
    # nothing on the layer axis is a flat level line or band except the grey references (chance, floor, H(Y))
    refs = {"chance (majority class)", "permuted-label floor", "H(Y): the most it can be"}
    for tr in on_layer:
        if tr.name not in refs:
            assert tr.fill is None or tr.name.endswith("95% CI") and len(set(tr.x)) > 2, tr.name
    outs = output_traces(fig)
    assert len(outs) == 2  # one per position
    for tr in outs:
        assert axis_key(tr.xaxis) == out and tr.mode == "markers" and tr.fill is None
        assert len(set(tr.x)) == 1 and tr.error_y.array is not None  # one x, its CI as an error bar
    assert len({tr.x[0] for tr in outs}) == 2  # side by side, not on top of each other
    # the output panel has no bands at all
    assert not [tr for tr in fig.data if axis_key(tr.xaxis or "x") == out and tr.fill == "toself"]
    # the two positions keep their colours there
    colour = {tr.name: tr.line.color for tr in fig.data if tr.mode == "lines+markers"}
    assert {tr.marker.color for tr in outs} == {colour["last"], colour["image_mean"]}


def test_base_vs_tuned_output_rows_stay_in_the_output_panel():
    fig = plots.compare_curves(leakage_table(), leakage_table(shift=0.2))
    layer, out = panel_axes(fig)
    cols_out = same_column(fig, out)
    assert not same_column(fig, layer) & cols_out
    outs = output_traces(fig)
    # base and tuned at two positions (top), two differences (bottom); each one marker series at one x
    assert len(outs) == 6
    for tr in outs:
        assert axis_key(tr.xaxis) in cols_out and tr.mode == "markers" and len(set(tr.x)) == 1
    by_axis: dict[str, list] = {}
    for tr in outs:
        by_axis.setdefault(tr.xaxis, []).append(tr.x[0])
    # top row: four series side by side; bottom row: two differences side by side
    assert sorted(len(xs) for xs in by_axis.values()) == [2, 4]
    assert all(len(set(xs)) == len(xs) for xs in by_axis.values())
    # the band-free layer panel: every band spans several layers, none is a level line
    for tr in fig.data:
        if axis_key(tr.xaxis or "x") in same_column(fig, layer) and tr.fill == "toself":
            assert len(set(tr.x)) > 2


def test_a_table_of_output_rows_only_still_draws():
    t = leakage_table()
    fig = plots.leakage_curves(t[t.source == "logits-topk"])
    assert [tr.mode for tr in output_traces(fig)] == ["markers", "markers"]


# ---------------------------------------------------------------- 2. the words for the chance line


DASH_WORDS = {"dashed": "dash", "dotted": "dot", "dash-dotted": "dashdot", "solid": "solid"}


def chance_dash(text: str) -> str:
    """The plotly dash that ``text`` gives the chance line ("the dotted grey line is chance")."""
    found = re.findall(r"\b(dash-dotted|dashed|dotted|solid)\b[^.]{0,30}?\bchance\b", text, flags=re.I)
    assert found, f"no line style named for chance in {text[:200]!r}"
    assert len({f.lower() for f in found}) == 1, found
    return DASH_WORDS[found[0].lower()]


def test_notebook_caption_and_docstring_name_the_chance_line_as_it_is_drawn():
    fig = plots.leakage_curves(leakage_table())
    drawn = {tr.line.dash for tr in fig.data if tr.name == "chance (majority class)"}
    assert len(drawn) == 1
    dash = drawn.pop()
    nb = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    said = [c.source for c in nb.cells if c.cell_type == "markdown" and re.search(r"line is chance", c.source)]
    assert said, "the quickstart no longer says how chance is drawn"
    for text in [*said, CAPTIONS["leakage"], plots.leakage_curves.__doc__]:
        assert chance_dash(text) == dash
    ladder = ladder_figure(ladder_table())
    assert {s.line.dash for s in ladder.layout.shapes} == {chance_dash(CAPTIONS["ladder"])}
