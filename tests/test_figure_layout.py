"""Layout of the report figures and pages (issue 22: frictions a new user hit).

Structure, not snapshots: which panel a trace sits in, marker modes, line dashes against the
words that describe them, the template, the leakage table's columns and CSS, page titles.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import nbformat
import pandas as pd
import plotly.io as pio
import pytest

from probekit.report import figures as plots
from probekit.report.figures import ladder_figure
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


# ---------------------------------------------------------------- 3. the leakage table fits the page


def css_value(selector: str, prop: str) -> str | None:
    """``prop`` of the last CSS rule whose selector list has ``selector`` (the one that wins)."""
    value = None
    for sel, body in re.findall(r"([^{}]+)\{([^}]*)\}", CSS):
        if selector in [s.strip() for s in sel.split(",")]:
            m = re.search(rf"(?:^|;)\s*{re.escape(prop)}\s*:\s*([^;]+)", body)
            value = m.group(1).strip() if m else value
    return value


def em(v: str) -> float:
    return float(v.removesuffix("em"))


def wide_table() -> pd.DataFrame:
    """Long names a real model has: a Q-Former, two-digit layers, long position names."""
    t = leakage_table(pre=("vision.23.resid", "qformer.11.xattn", "projector"),
                      positions=("answer_mean", "prompt_last"), layers=40)
    t.loc[0, "mi_perm_bits"] = -0.0123  # a 3-decimal negative floor, as the table prints it
    return t


def text_em(text: str, bold: bool = False) -> float:
    """Width of ``text`` in em, per character as in DejaVu Sans (the widest common sans-serif):
    digits 0.64, capitals 0.7, other letters 0.62, spaces and punctuation 0.36; bold 10% wider."""
    w = sum(0.64 if c.isdigit() else 0.36 if c in " .,:;()[]/-'<>" else 0.7 if c.isupper() else 0.62 for c in text)
    return w * (1.1 if bold else 1.0)


def test_leakage_table_fits_a_1400px_window():
    """At most 10 columns, and their narrowest widths add up to less than the page's text width.

    A column can be no narrower than its longest unbreakable text: a numeric cell never wraps,
    a text cell and a heading wrap at spaces and hyphens. Widths come from :func:`text_em` with
    the table's own font size and cell padding from the page's CSS. At 1400 px the page's text
    is ``max-width`` wide (1000 px).
    """
    r = ScanReport(wide_table(), settings={"model": "m"})
    html = r.to_html()
    block = html.split("<h2>Leakage table</h2>", 1)[1]
    table_tag = re.search(r"<table[^>]*>", block).group(0)
    cls = re.search(r'class="([^"]+)"', table_tag)
    sel = f"table.{cls.group(1)}" if cls else "table"
    rows, cols, numeric = leakage_rows(normalise(r.table))
    assert len(cols) <= 10
    assert ("p_adjusted", "p (family-wise)") in cols and ("leaks", "leaks (else: would detect)") in cols  # the verdict stays in view
    font = 16 * em(css_value(sel, "font-size") or css_value("table", "font-size"))
    pad = (css_value(f"{sel} td", "padding") or css_value("td", "padding")).split()
    pad_px = 2 * font * em(pad[1 if len(pad) > 1 else 0]) + 1
    wraps = (css_value(f"{sel} th", "white-space") or "normal") != "nowrap"

    def unbreakable(text: str, nowrap: bool, bold: bool = False) -> float:
        words = [text] if nowrap else re.split(r"(?<=[ \-])", text)
        return max(text_em(w.strip(), bold) for w in words)

    total = 0.0
    for key, heading in cols:
        cells = [unbreakable(str(row.get(key, "")), key in numeric) for row in rows]
        total += font * max(cells + [unbreakable(heading, not wraps, bold=True)]) + pad_px
    page = int(re.search(r"body\{[^}]*max-width:(\d+)px", CSS).group(1))
    assert total <= page, f"the leakage table needs about {total:.0f} px, the page has {page}"


# ---------------------------------------------------------------- 4. one template


def test_ladder_figure_uses_the_template_of_every_other_figure():
    others = [plots.leakage_curves(leakage_table()), plots.leakage_heatmap(leakage_table()),
              plots.compare_curves(leakage_table(), leakage_table(shift=0.2))]
    template = others[0].layout.template
    assert all(o.layout.template == template for o in others[1:])
    lad = ladder_figure(ladder_table())
    assert lad.layout.template == template
    assert lad.layout.template.layout.plot_bgcolor == pio.templates["plotly_white"].layout.plot_bgcolor


# ---------------------------------------------------------------- 5. titles that say what a page is


def small_report(acc: float) -> ScanReport:
    lo, hi = wilson(acc)
    t = pd.DataFrame({"point": ["lm.0.resid", "lm.1.resid"], "position": "last", "accuracy": [0.5, acc],
                      "accuracy_lo": [0.43, lo], "accuracy_hi": [0.57, hi], "chance": 0.5})
    return ScanReport(t, settings={"model": "tiny"})


def heading(page: str) -> tuple[str, str, str]:
    title = re.search(r"<title>(.*?)</title>", page).group(1)
    h1 = re.search(r"<h1>(.*?)</h1>", page).group(1)
    intro = re.search(r'<p class="intro">(.*?)</p>', page)
    return title, h1, intro.group(1) if intro else ""


def test_save_takes_a_title_and_an_intro(tmp_path):
    r = small_report(0.9)
    assert heading(r.to_html())[:2] == ("probekit scan report", "probekit scan report")
    page = r.save(tmp_path / "a.html", title="My <scan>", intro="What & why.").read_text()
    assert heading(page) == ("My &lt;scan&gt;", "My &lt;scan&gt;", "What &amp; why.")
    c = compare(small_report(0.9), small_report(0.6))
    assert heading(c.save(tmp_path / "c.html", title="Before and after").read_text())[:2] == ("Before and after",) * 2


def test_demo_pages_say_which_is_the_scan_and_which_the_coin_flip_control(tmp_path):
    from probekit.demo import write_reports

    found, control = write_reports(small_report(0.9), small_report(0.55), tmp_path)
    assert (found.name, control.name) == ("report.html", "control.html")
    ft, fh, fi = heading(found.read_text())
    ct, ch, ci = heading(control.read_text())
    assert ft == fh and ct == ch and ft != ct
    assert "material" in ft and "control" not in ft.lower()
    assert "coin-flip" in ct and "control" in ct
    assert "coin flip" in ci and "not in the image" in ci and "false positive" in ci
    assert "material" in fi
