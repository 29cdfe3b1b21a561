"""Figures, HTML, JSON and comparisons of probekit.report on hand-made tables."""

from __future__ import annotations

import json
import math
import os
import re
import stat

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from plotly.offline import get_plotlyjs

from probekit.report import figures as plots
from probekit.report.tables import normalise
from probekit.report.text import NO_POSITION
from probekit.errors import InputError
from probekit.report import Comparison, ScanReport, compare


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return c - h, c + h


def make_table(n_layers: int = 6, n_vision: int = 3, shift: float = 0.0, topk: bool = True) -> pd.DataFrame:
    """A leakage table shaped like scan()'s: accuracy rising with depth, image path first."""
    rows = []
    pts = [(f"vision.{i}.resid", float(i), "vision") for i in range(n_vision)]
    pts += [("projector", math.nan, "projector"), ("lm.embed", -1.0, "embed")]
    pts += [(f"lm.{i}.resid", float(i), "resid") for i in range(n_layers)]
    for pos in ("last", "image_mean"):
        for j, (p, layer, kind) in enumerate(pts):
            if pos == "last" and kind in ("vision", "projector"):
                continue
            acc = min(0.99, 0.5 + 0.45 * j / len(pts) - shift * j / len(pts) + (0.02 if pos == "last" else 0))
            lo, hi = wilson(acc, 200)
            mi = max(0.0, acc - 0.5) * 1.6
            rows.append(dict(point=p, layer=layer, kind=kind, position=pos, source="residual", n=200, n_classes=2,
                             accuracy=acc, accuracy_lo=lo, accuracy_hi=hi, chance=0.5, log_loss=0.5,
                             entropy_bits=1.0, mi_bits=mi, mi_lo=mi - 0.05, mi_hi=mi + 0.05, mi_perm_bits=-0.01,
                             control_accuracy=0.52, control_mi_bits=0.0, selectivity=acc - 0.52))
    if topk:
        lo, hi = wilson(0.7, 200)
        rows.append(dict(point="logits", layer=math.nan, kind="logits", position="last", source="logits-topk",
                         n=200, n_classes=2, accuracy=0.7, accuracy_lo=lo, accuracy_hi=hi, chance=0.5,
                         log_loss=0.6, entropy_bits=1.0, mi_bits=0.1, mi_lo=0.05, mi_hi=0.15, mi_perm_bits=-0.01,
                         control_accuracy=0.5, control_mi_bits=0.0, selectivity=0.2))
    return pd.DataFrame(rows)


def make_lens(n_layers: int = 6) -> pd.DataFrame:
    rows = []
    for pos in ("last", "image_mean"):
        for i in range(-1, n_layers):
            p = "lm.embed" if i < 0 else f"lm.{i}.resid"
            for r, tok in enumerate(["<image>", " Alice", "\n"], start=1):
                rows.append(dict(point=p, layer=float(i), position=pos, rank=r, token_id=r, token=tok,
                                 prob=(0.1 + 0.1 * (i + 1)) / r))
    return pd.DataFrame(rows)


def make_targets(n_layers: int = 6) -> pd.DataFrame:
    rows = []
    for t in ("alice_1987", "bob"):
        for i in range(-1, n_layers):
            rank = 10.0 ** (4 - (i + 1) * 0.6)
            prob = min(0.9, 1 / rank)
            rows.append(dict(point="lm.embed" if i < 0 else f"lm.{i}.resid", layer=float(i), position="last",
                             target=t, token_index=0, token_id=7, token=t[:3], n=50, rank_median=rank,
                             rank_mean=rank, prob=prob, prob_lo=prob * 0.7, prob_hi=min(1.0, prob * 1.3)))
    return pd.DataFrame(rows)


def bands(fig: go.Figure) -> list:
    return [tr for tr in fig.data if tr.fill == "toself"]


def curves(fig: go.Figure) -> list:
    return [tr for tr in fig.data if tr.mode == "lines+markers"]


def axis_titles(fig: go.Figure) -> dict[str, str | None]:
    lay = fig.layout
    return {k: lay[k].title.text for k in lay if re.fullmatch(r"[xy]axis\d*", k)}


# ---------------------------------------------------------------- figures


def test_leakage_curves_structure():
    fig = plots.leakage_curves(make_table())
    # image_mean: pre-LM panel + LM panel (band + line each); last: LM (band + line);
    # last logits-topk: one marker with its error bar in the output panel; chance: 3 panels
    assert len(fig.data) == 10
    assert len(curves(fig)) == 3
    assert len(bands(fig)) == 3 and all("rgba" in b.fillcolor for b in bands(fig))
    names = {tr.name for tr in fig.data if tr.showlegend is not False}
    assert names == {"last", "image_mean", "chance (majority class)"}
    topk = next(tr for tr in fig.data if tr.mode == "markers")
    assert topk.xaxis == "x3" and list(topk.x) == [0.0] and topk.error_y.array is not None
    assert topk.marker.color == next(tr for tr in curves(fig) if tr.name == "last").line.color
    titles = axis_titles(fig)
    assert titles["xaxis"].startswith("vision-tower layer") and titles["xaxis2"].startswith("language-model layer")
    assert titles["xaxis3"].startswith("output")
    assert "accuracy" in titles["yaxis"] and "95% CI" in titles["yaxis"]
    assert fig.layout.title.text
    # the LM panel's x is the layer number, lm.embed at -1
    lm = next(tr for tr in curves(fig) if tr.name == "last")
    assert list(lm.x) == [-1.0, 0, 1, 2, 3, 4, 5]
    # bands enclose the curve
    band = next(b for b in bands(fig) if b.name == "last 95% CI")
    assert np.max(band.y) >= np.max(lm.y) and np.min(band.y) <= np.min(lm.y)


def test_leakage_curves_mi_references_and_errors():
    fig = plots.leakage_curves(make_table(topk=False), metric="mi_bits")
    names = [tr.name for tr in fig.data if tr.showlegend is not False]
    assert "permuted-label floor" in names and any(n.startswith("H(Y)") for n in names)
    assert "bits" in axis_titles(fig)["yaxis"]
    with pytest.raises(InputError, match="not a column"):
        plots.leakage_curves(make_table(), metric="nope")
    with pytest.raises(InputError):
        plots.leakage_curves(make_table().iloc[:0])


def test_leakage_heatmap_annotated():
    t = make_table(topk=True)
    fig = plots.leakage_heatmap(t)
    hm = fig.data[0]
    assert hm.z.shape == (3 + 1 + 1 + 6 + 1, 2)  # vision 0-2, projector, embed, 6 layers, logits-topk row
    assert list(hm.y)[0] == "vision.0.resid" and list(hm.y)[-1] == "logits (logits-topk)"
    assert hm.texttemplate == "%{text}" and "0.50" in hm.text.ravel().tolist()
    assert hm.text[0, 0] == ""  # vision points have no "last" position: an empty cell, not 0
    titles = axis_titles(fig)
    assert titles["xaxis"] and titles["yaxis"]


def test_lens_grid_and_targets():
    fig = plots.lens_grid(make_lens())
    hm = fig.data[0]
    assert hm.z.shape == (7, 2) and hm.text[0][0] == "&lt;image&gt;"  # escaped, shown literally
    assert all(axis_titles(fig).values())
    fig = plots.target_curves(make_targets())
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.autorange == "reversed"
    assert len(curves(fig)) == 4 and len(bands(fig)) == 2  # rank + probability per target
    assert "rank" in axis_titles(fig)["yaxis"] and "probability" in axis_titles(fig)["yaxis2"]


def test_compare_curves_and_paired_table():
    base, tuned = make_table(), make_table(shift=0.3)
    fig = plots.compare_curves(base, tuned, names=("before", "after"))
    legend = {tr.name for tr in fig.data if tr.showlegend is not False}
    assert {"before", "after", "after − before"} <= legend
    diff = [tr for tr in curves(fig) if tr.name == "after − before"]
    # bottom row: pre-LM, LM and output panels (y4, y5, y6)
    assert diff and all(tr.yaxis in ("y4", "y5", "y6") for tr in diff)
    assert len(bands(fig)) >= 6
    assert "difference" in axis_titles(fig)["yaxis4"]  # the bottom row's first panel


# ---------------------------------------------------------------- compare


def hand_pair() -> tuple[ScanReport, ScanReport]:
    b = pd.DataFrame({"point": ["lm.0.resid", "lm.1.resid", "lm.2.resid"], "position": "last",
                      "accuracy": [0.6, 0.9, 0.8], "accuracy_lo": [0.5, 0.86, 0.75],
                      "accuracy_hi": [0.7, 0.94, 0.85], "chance": 0.5,
                      "mi_bits": [0.1, 0.6, 0.5], "mi_lo": [0.0, 0.5, 0.4], "mi_hi": [0.2, 0.7, 0.6]})
    t = b.iloc[1:].assign(accuracy=[0.6, 0.82], accuracy_lo=[0.57, 0.79], accuracy_hi=[0.63, 0.85],
                          mi_bits=[0.1, 0.45], mi_lo=[0.05, 0.35], mi_hi=[0.15, 0.55])
    return ScanReport(b, settings={"model": "base"}), ScanReport(t.reset_index(drop=True), settings={"model": "ft"})


def test_compare_diff_numbers():
    c = compare(*hand_pair())
    assert isinstance(c, Comparison)
    tab = c.table.set_index("point")
    assert list(tab.index) == ["lm.1.resid", "lm.2.resid"]  # only the rows both have
    # lm.1: 0.6 - 0.9 = -0.3; half-widths 0.04 and 0.03 -> 0.05
    assert tab.loc["lm.1.resid", "diff"] == pytest.approx(-0.3)
    assert tab.loc["lm.1.resid", "diff_lo"] == pytest.approx(-0.35)
    assert tab.loc["lm.1.resid", "diff_hi"] == pytest.approx(-0.25)
    # lm.2: 0.82 - 0.8 = 0.02; half-widths 0.05 and 0.03
    assert tab.loc["lm.2.resid", "accuracy_diff_hi"] == pytest.approx(0.02 + math.sqrt(0.05**2 + 0.03**2))
    # MI differences too: 0.45 - 0.5, half-widths 0.1 and 0.1
    assert tab.loc["lm.2.resid", "mi_bits_diff"] == pytest.approx(-0.05)
    assert tab.loc["lm.2.resid", "mi_bits_diff_lo"] == pytest.approx(-0.05 - math.sqrt(0.02))
    assert tab.loc["lm.1.resid", "accuracy_base"] == 0.9 and tab.loc["lm.1.resid", "accuracy_tuned"] == 0.6
    s = c.summary().splitlines()
    # base lm.0: z = 0.1 / (0.2 / 3.92) = 1.96, one-sided p 0.025, last in Holm's order (x1): leaks
    assert s[:3] == ["base: Leakage detected at 3 of 3 points (first at lm.0.resid @ last)",
                     "tuned: Leakage detected at 2 of 2 points (first at lm.1.resid @ last)",
                     "tuned − base (accuracy): change detected at 1 of 2 points (first at lm.1.resid @ last)"]
    assert len(s) == 6 and s[3].startswith("Largest change: lm.1.resid @ last") and "-0.30 [-0.35, -0.25]" in s[3]
    assert "1 of 2 points" in s[4]
    assert compare(*hand_pair(), metric="mi_bits").table["diff"].tolist() == pytest.approx([-0.5, -0.05])


def test_compare_errors(tmp_path):
    base, tuned = hand_pair()
    other = ScanReport(base.table.assign(position="image_mean"))
    with pytest.raises(InputError, match="no hook point and position in common"):
        compare(base, other)
    with pytest.raises(InputError, match="no leakage table"):
        compare(base, ScanReport(None, lens=make_lens()))
    with pytest.raises(InputError):
        compare(base, "not a report")  # type: ignore[arg-type]
    c = compare(base, tuned)
    html = c.save(tmp_path / "cmp.html").read_text()
    assert html.count(get_plotlyjs()) == 1 and "-0.30 [-0.35, -0.25]" in html
    assert "Largest change" in c._repr_html_()


# ---------------------------------------------------------------- report


def full_report() -> ScanReport:
    table = make_table()
    table.loc[0, ["mi_lo", "mi_hi"]] = np.nan  # a missing CI must not break anything
    return ScanReport(
        table, lens=make_lens(), targets=make_targets(),
        settings={"model": "tiny-llava", "family": "llava", "positions": ("last", "image_mean"),
                  "prompt": "What is the username?", "seed": 0, "cv": 5, "timing_s": {"collect": 1.5}},
        data={"n_images": 200, "label_counts": {"yes": 100, "no": 100}, "source": "synthetic"},
        notes=["A note the reader must see."],
    )


def test_figures_and_kinds():
    r = full_report()
    figs = r.figures()
    assert list(figs) == ["leakage", "mi", "heatmap", "lens", "targets"]
    assert all(isinstance(f, go.Figure) for f in figs.values())
    assert len(r.figure().data) == len(plots.leakage_curves(r.table).data)
    with pytest.raises(InputError, match="unknown figure kind"):
        r.figure("pie")
    note = "No labels were given: the report shows the logit-lens read-out only."
    lens_only = ScanReport(None, lens=make_lens(), notes=[note])
    assert list(lens_only.figures()) == ["lens"] and lens_only.figure(None).data[0].type == "heatmap"
    with pytest.raises(InputError, match="no labels were given"):
        lens_only.figure("leakage")
    assert lens_only.summary().startswith("No labels were given")


def test_summary_verdict_then_three_lines():
    lines = full_report().summary().splitlines()
    assert len(lines) == 4
    # vision.0 (0.50) and vision.1 (0.54 at n=200, z = 1.2) stay below the Holm threshold
    assert lines[0] == "Leakage detected at 17 of 19 points (first at vision.2.resid @ image_mean)"
    best = make_table().query("source == 'residual'").sort_values("accuracy").iloc[-1]
    assert lines[1].startswith(f"Most leakage: {best.point} @ {best.position}, accuracy 0.")
    assert "vs chance 0.50" in lines[1] and "bits" in lines[2] and "floor" in lines[3] and "Holm" in lines[3]


def test_save_html_self_contained(tmp_path):
    r = full_report()
    path = r.save(tmp_path / "new" / "dir" / "report.html")
    html = path.read_text(encoding="utf-8")
    assert html.count(get_plotlyjs()) == 1  # plotly.js inlined exactly once
    assert not re.search(r"<script[^>]+src=", html)  # nothing fetched from the network
    assert html.count('class="plotly-graph-div"') == 5
    assert "0.94 [" in html or re.search(r"\d\.\d\d \[\d\.\d\d, \d\.\d\d\]", html)
    for text in ("tiny-llava", "What is the username?", "A note the reader must see.", "label_counts",
                 "Leakage table", "lm.5.resid"):
        assert text in html
    assert os.listdir(path.parent) == ["report.html"]  # no temporary file left behind
    assert stat.S_IMODE(path.stat().st_mode) & 0o044  # readable by others, unlike mkstemp's 0600
    r.save(path)  # overwriting works
    with pytest.raises(InputError):
        r.save(tmp_path)  # a directory is not a file name


def test_json_round_trip():
    r = full_report()
    s = r.to_json()
    json.loads(s, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))  # NaN must be null
    back = ScanReport.from_json(s)
    assert back == r
    pd.testing.assert_frame_equal(back.table, r.table)
    pd.testing.assert_frame_equal(back.lens, r.lens)
    assert back.settings["positions"] == ["last", "image_mean"]  # tuples come back as lists
    assert math.isnan(back.table.loc[0, "mi_lo"])
    assert back.table.loc[back.table.point == "projector", "layer"].isna().all()
    empty = ScanReport(None, notes=["nothing"])
    assert ScanReport.from_json(empty.to_json()) == empty
    with pytest.raises(InputError):
        ScanReport.from_json('{"kind": "other"}')


def test_nan_rows_and_unnamed_positions():
    t = make_table(topk=False)
    t.loc[t.point == "lm.2.resid", ["accuracy", "accuracy_lo", "accuracy_hi", "mi_bits", "mi_lo", "mi_hi"]] = np.nan
    t["position"] = t["position"].where(t.position == "last", None)  # probe_layers leaves [n, d] points NaN
    r = ScanReport(t)
    for fig in r.figures().values():
        assert isinstance(fig, go.Figure)
    assert NO_POSITION in set(normalise(t).position)
    assert len(r.summary().splitlines()) == 4
    assert "nan" not in r._repr_html_().lower().replace("image_mean", "")


def test_repr_html_compact():
    r = full_report()
    first = r._repr_html_()
    second = r._repr_html_()
    assert "Leakage detected at" in second and "<table>" in second and "plotly-graph-div" in second
    assert len(second) < 200_000  # plotly.js is sent to a notebook at most once per kernel
    assert len(first) >= len(second)
    assert "model='tiny-llava'" in repr(r)


def test_real_probe_table():
    torch = pytest.importorskip("torch")
    from probekit.readout.probes import probe_layers

    g = torch.Generator().manual_seed(0)
    y = torch.arange(80) % 2
    acts = {"projector": torch.randn(80, 6, generator=g) + 0.5 * y[:, None]}
    acts.update({f"lm.{i}.resid": torch.randn(80, 2, 6, generator=g) + i * y[:, None, None] for i in range(3)})
    df = probe_layers(acts, y, cv=3, n_boot=50, progress=False, positions=["last", "image_mean"])
    r = ScanReport(df, settings={"model": "random"})
    assert set(r.figures()) == {"leakage", "mi", "heatmap"}
    lines = r.summary().splitlines()
    assert lines[0] == "Leakage detected at 5 of 7 points (first at projector)"
    assert lines[1].startswith("Most leakage: lm.2.resid")
    assert df.leaks.sum() == 5 and not df.loc[df.point == "lm.0.resid", "leaks"].any()
    assert ScanReport.from_json(r.to_json()) == r


# ---------------------------------------------------------------- verdicts

class _NoLeak:
    """The null line of a table of n = 200 samples at chance 0.5, with the power of its m tests."""

    def format(self, m: int, n: int = 200) -> str:
        from probekit._stats import min_detectable_accuracy

        mde = float(min_detectable_accuracy(n, 0.5, m))
        return f"No leakage detected at any of {m} points (family-wise test; would have detected accuracy >= {mde:.2f} at 80% power)"


NO_LEAK = _NoLeak()


def null_table(n_points: int = 20) -> pd.DataFrame:
    """20 points with nothing to find; one has accuracy 0.58 at n=200, whose uncorrected Wilson
    interval [0.51, 0.65] clears chance (one-sided exact p = 0.013), as one in twenty does."""
    rows = []
    for i in range(n_points):
        acc = 0.58 if i == 7 else 0.47 + 0.004 * i
        lo, hi = wilson(acc, 200)
        rows.append(dict(point=f"lm.{i}.resid", layer=float(i), position="last", source="residual", n=200,
                         accuracy=acc, accuracy_lo=lo, accuracy_hi=hi, chance=0.5, entropy_bits=1.0,
                         mi_bits=-0.031, mi_lo=-0.06, mi_hi=0.0, mi_perm_bits=-0.01,
                         p_value=stats_binom_sf(acc, 200)))
    return pd.DataFrame(rows)


def stats_binom_sf(acc: float, n: int) -> float:
    from scipy import stats

    return float(stats.binom.sf(round(acc * n) - 1, n, 0.5))


def test_null_reads_as_null():
    """The issue's case: the best of many null points must not read as a finding."""
    table = null_table()
    assert (table.accuracy_lo > table.chance).sum() == 1  # uncorrected, one interval clears chance
    r = ScanReport(table, settings={"model": "tiny"})
    lines = r.summary().splitlines()
    assert lines[0] == NO_LEAK.format(20)
    assert lines[1].startswith("Highest accuracy (not significant; adjusted p 0.2") and "lm.7.resid @ last" in lines[1]
    assert "Most leakage" not in r.summary()
    assert lines[2].startswith("Mutual information there: 0 (no evidence) of H(Y) = 1.00 bits") and "-0.03" not in lines[2]
    assert "1 of 20 uncorrected 95% intervals clear chance" in lines[3]
    assert (r.table.mi_bits == -0.031).all()  # the raw bound stays in the table
    html = r.to_html()
    body = html.split('<p class="sub">')[1].split("</p>", 1)[1]
    assert body.startswith(f'<div class="summary"><b>{NO_LEAK.format(20).replace(">=", "&gt;=")}</b>')
    assert "-0.031" in html  # raw value in the full table
    markers = [tr.marker.symbol for tr in r.figure("leakage").data if tr.mode == "lines+markers"]
    assert markers == [("circle-open",) * 20]  # open: not significant after correction
    assert r._repr_html_().startswith(f"<div><p><b>{NO_LEAK.format(20).replace('>=', '&gt;=')}</b>")


def test_verdict_corrects_for_points_and_needs_the_floor():
    """Holm over all rows; the p-value comes from the CI when the table has none."""
    from probekit.readout.significance import holm
    from probekit.report import verdict

    t = null_table().drop(columns="p_value")
    assert verdict(t) == NO_LEAK.format(20)
    # alone, the point is significant (p 0.013 < 0.05) but its bound -0.031 is below the floor
    assert verdict(t.iloc[[7]]) == NO_LEAK.format(1)
    assert verdict(t.iloc[[7]].assign(mi_bits=0.02)) == "Leakage detected at 1 of 1 points (first at lm.7.resid @ last)"
    # strong signal at two points, but at lm.12 the MI bound is not above the permuted floor
    lo, hi = wilson(0.8, 200)
    t.loc[[12, 15], ["accuracy", "accuracy_lo", "accuracy_hi", "mi_bits"]] = [[0.8, lo, hi, 0.3]] * 2
    assert verdict(t) == "Leakage detected at 2 of 20 points (first at lm.12.resid @ last)"
    t.loc[12, "mi_bits"] = -0.02
    assert verdict(t) == "Leakage detected at 1 of 20 points (first at lm.15.resid @ last)"
    assert "1 points beat chance on accuracy but their MI bound is not above the floor" in ScanReport(t).summary()
    from probekit.report import _leakage_rows

    symbols = [tr.marker.symbol for tr in ScanReport(t).figure("leakage").data if tr.mode == "lines+markers"][0]
    assert [i for i, sym in enumerate(symbols) if sym == "circle"] == [15]  # filled: the one leaking point

    rows, cols, _ = _leakage_rows(t)  # the HTML leakage table shows the verdict per row
    assert ("p_adjusted", "p (family-wise)") in cols and [r["point"] for r in rows if r["leaks"] == "yes"] == ["lm.15.resid"]
    assert rows[15]["p_adjusted"] == "<1e-6" and float(rows[7]["p_adjusted"]) > 0.05
    assert holm(np.array([0.01, 0.04, 0.03, np.nan])).tolist()[:3] == pytest.approx([0.03, 0.06, 0.06])


def test_comparison_verdicts_on_each_model_and_the_difference(tmp_path):
    base, tuned = null_table(), null_table()
    tuned["accuracy"] = tuned["accuracy"] + 0.01
    c = compare(ScanReport(base), ScanReport(tuned))
    lines = c.summary().splitlines()
    assert lines[:3] == [f"base: {NO_LEAK.format(20)}", f"tuned: {NO_LEAK.format(20)}",
                         "tuned − base (accuracy): no change detected at any of 20 points "
                         "(every interval of the difference includes 0)"]
    body = c.to_html().split('<p class="sub">')[1].split("</p>", 1)[1]
    assert body.startswith('<div class="summary"><b>base: No leakage detected at any of 20 points')
    assert "0 (no evidence)" in compare(ScanReport(base), ScanReport(tuned), metric="mi_bits").summary()
