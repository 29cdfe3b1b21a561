"""The result of a scan as an object: tables, figures, a summary, one self-contained HTML file.

:class:`ScanReport` holds the leakage table of :func:`probekit.scan` (or of
:func:`probekit.readout.probes.probe_layers`), the optional logit-lens tables, and what was
run on what (``settings``, ``data``, ``notes``). :func:`compare` pairs two reports (a base
model and its fine-tuned version) row by row into a :class:`Comparison`.

Example:
    >>> import pandas as pd
    >>> table = pd.DataFrame({"point": ["lm.0.resid", "lm.1.resid"], "position": "last",
    ...     "accuracy": [0.52, 0.93], "accuracy_lo": [0.47, 0.90], "accuracy_hi": [0.57, 0.95],
    ...     "chance": 0.5})
    >>> report = ScanReport(table, settings={"model": "tiny-llava"})
    >>> report.summary().splitlines()[:2]  # the verdict, then where it leaks most
    ['Leakage detected at 1 of 2 points (first at lm.1.resid @ last)', 'Most leakage: lm.1.resid @ last, accuracy 0.93 [0.90, 0.95] vs chance 0.50.']
    >>> ScanReport.from_json(report.to_json()) == report
    True
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from . import plots
from .errors import InputError, StoreError
from .readout.significance import ALPHA, add_verdicts
from .verdict import difference_verdict, mi_headline, tested_rows, verdict

__all__ = ["ScanReport", "Comparison", "compare", "verdict", "mi_headline"]

FIGURE_KINDS = ("leakage", "mi", "heatmap", "lens", "targets", "ladder")
_FORMAT = 1  # version of the JSON layout written by to_json
_CAPTIONS = {
    "leakage": "Held-out accuracy of a linear probe per layer, 95% CI as a band. Grey dotted: chance "
               "(majority class). Dashed: the same probe on the output's top-k logits only. Filled markers: points that "
               "leak after Holm's correction over all points (MI bound above the floor); open: not significant.",
    "mi": "Mutual information between hidden state and label, as a held-out probe lower bound "
          "H(Y) − CE in bits, 95% bootstrap CI. Grey dotted: the same estimate on permuted labels "
          "(the estimator's floor); dash-dotted: H(Y), the most any estimate can reach. Filled markers: points "
          "that leak after correction; open: not significant.",
    "heatmap": "Probe accuracy per hook point (rows, input at the top) and token position (columns).",
    "lens": "Logit lens: the most probable next token when each layer's residual stream is decoded "
            "with the model's own final norm and unembedding; colour = its probability.",
    "targets": "Logit lens: rank (1 = the top token) and probability of each target string's first "
               "token per layer; probability with a 95% CI over samples.",
    "ladder": "The leakage ladder: the same probe on the residual stream and the tuned-lens projection per "
              "layer (left) and on the output's top-k log-probabilities (right; k = 2 are the answer tokens); "
              "95% CIs, grey dotted: chance.",
}
_TABLES = ("table", "lens", "targets", "ladder")
_NOTEBOOK_JS_SENT = False  # plotly.js goes into a notebook once per kernel, as plotly's own renderer does


# ---------------------------------------------------------------- JSON helpers


def _jsonable(obj: Any) -> Any:
    """Plain JSON values: NaN/inf become null, numpy scalars and arrays become numbers and lists."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, bool):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        seq = sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else obj
        return [_jsonable(v) for v in seq]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (_dt.datetime, _dt.date, pd.Timestamp)):
        return obj.isoformat()
    if obj is pd.NA or obj is pd.NaT:
        return None
    if hasattr(obj, "tolist"):  # numpy arrays, torch tensors
        return _jsonable(obj.tolist())
    return str(obj)


def _frame_to_json(df: pd.DataFrame | None) -> dict | None:
    if df is None:
        return None
    records = [{str(k): _jsonable(v) for k, v in rec.items()} for rec in df.to_dict("records")]
    return {"columns": [str(c) for c in df.columns], "dtypes": {str(c): str(t) for c, t in df.dtypes.items()},
            "records": records}


def _frame_from_json(obj: dict | None) -> pd.DataFrame | None:
    if obj is None:
        return None
    cols = obj.get("columns", [])
    df = pd.DataFrame.from_records(obj.get("records", []), columns=cols)
    for c, dtype in obj.get("dtypes", {}).items():
        try:
            df[c] = df[c].astype(dtype)
        except (TypeError, ValueError):  # e.g. an int column that now holds nulls: keep what pandas chose
            pass
    return df


def _frames_equal(a: pd.DataFrame | None, b: pd.DataFrame | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.reset_index(drop=True).equals(b.reset_index(drop=True))


# ---------------------------------------------------------------- HTML helpers

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#222;
     max-width:1000px;margin:2em auto;padding:0 1em;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}
.sub{color:#666;margin-top:0} .summary{background:#f4f8fb;border-left:4px solid #1f77b4;padding:.6em 1em}
.notes{background:#fff8e6;border-left:4px solid #e6a700;padding:.6em 1em}
.caption{color:#555;font-size:.92em;margin:.2em 0 1.5em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border-bottom:1px solid #e3e3e3;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#fafafa} td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.scroll{overflow-x:auto;max-width:100%} details{margin:1em 0} summary{cursor:pointer;color:#1f77b4} code{font-size:.92em}
footer{color:#888;font-size:.8em;margin-top:3em}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _ci(rec: dict, metric: str, digits: int = 2) -> str:
    lo, hi = plots.ci_columns(metric)
    return plots.fmt_ci(rec.get(metric), rec.get(lo), rec.get(hi), digits)


def _html_table(rows: list[dict], columns: Sequence[tuple[str, str]], numeric: Sequence[str] = ()) -> str:
    head = "".join(f"<th>{_e(label)}</th>" for _, label in columns)
    body = []
    for rec in rows:
        cells = "".join(f'<td class="num">{_e(rec.get(k, ""))}</td>' if k in numeric else f"<td>{_e(rec.get(k, ''))}</td>"
                        for k, _ in columns)
        body.append(f"<tr>{cells}</tr>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
            "</table></div>")


def _leakage_rows(table: pd.DataFrame) -> tuple[list[dict], list[tuple[str, str]], list[str]]:
    """The leakage table with each estimate and its CI in one cell: ``0.93 [0.90, 0.95]``."""
    t = plots._normalise(add_verdicts(table) if "accuracy" in table.columns else table)
    t = t.iloc[np.argsort([plots.point_order(t.point).index(p) for p in t.point], kind="stable")]
    f = plots._fmt
    rows = []
    for rec in t.to_dict("records"):
        rows.append({
            "point": rec["point"], "position": rec["position"], "source": rec["source"],
            "n": "" if pd.isna(rec.get("n", np.nan)) else int(rec["n"]),
            "accuracy": _ci(rec, "accuracy") if "accuracy" in rec else "",
            "chance": f(rec.get("chance")),
            "mi_bits": _ci(rec, "mi_bits") if "mi_bits" in rec else "",
            "entropy_bits": f(rec.get("entropy_bits")),
            "mi_perm_bits": f(rec.get("mi_perm_bits"), 3),
            "control_accuracy": f(rec.get("control_accuracy")),
            "selectivity": f(rec.get("selectivity")),
            "p_adjusted": _p(rec.get("p_adjusted")),
            "leaks": "yes" if rec.get("leaks") is True or rec.get("leaks") == 1 else "",
        })
    columns = [("point", "hook point"), ("position", "position"), ("source", "source"), ("n", "n"),
               ("accuracy", "accuracy [95% CI]"), ("chance", "chance"), ("mi_bits", "MI bits [95% CI]"),
               ("entropy_bits", "H(Y) bits"), ("mi_perm_bits", "floor (permuted) bits"),
               ("control_accuracy", "control acc."), ("selectivity", "selectivity"),
               ("p_adjusted", "p (Holm)"), ("leaks", "leaks")]
    present = [c for c in columns if c[0] in ("point", "position") or c[0] in t.columns]
    if set(t.source) == {"residual"}:
        present = [c for c in present if c[0] != "source"]
    return rows, present, [c for c, _ in present if c not in ("point", "position", "source")]


def _p(v: Any) -> str:
    """A p-value for a table cell: 3 significant digits, ``<1e-6`` below that."""
    if v is None or not np.isfinite(float(v)):
        return ""
    return "<1e-6" if float(v) < 1e-6 else f"{float(v):.3g}"


def _raw_table(df: pd.DataFrame) -> str:
    """Every column, 4 significant digits, blanks for NaN; wide tables scroll."""
    inner = df.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0)
    return f'<div class="scroll">{inner}</div>'


def _kv_table(d: dict) -> str:
    if not d:
        return "<p><i>none recorded</i></p>"
    rows = []
    for k, v in d.items():
        val = v if isinstance(v, str) else json.dumps(_jsonable(v), ensure_ascii=False)
        rows.append(f"<tr><th>{_e(k)}</th><td><code>{_e(val)}</code></td></tr>")
    return f"<table>{''.join(rows)}</table>"


def _plotlyjs() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _figure_div(fig: Any) -> str:
    # plotly.js is inlined once per page by the caller; each figure only adds its div and call
    return fig.to_html(full_html=False, include_plotlyjs=False, default_width="100%",
                       config={"displaylogo": False, "responsive": True})


def _atomic_write(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file in the same directory and a rename."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise InputError(f"{p} is a directory", fix="pass a file name such as report.html")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a report is for sharing
            os.replace(tmp, p)  # readers see the old file or the whole new one, never a half
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise StoreError(f"cannot write {p}: {exc.strerror or exc}", fix="choose a writable path") from exc
    return p


def _summary_div(text: str, bold: int = 1) -> str:
    """The summary box of a page; its first ``bold`` lines (the verdicts) in bold."""
    lines = [f"<b>{_e(x)}</b>" if i < bold else _e(x) for i, x in enumerate(text.splitlines())]
    return f'<div class="summary">{"<br>".join(lines)}</div>'


def _umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it and put it back
    os.umask(mask)
    return mask


def _page(title: str, subtitle: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style>"
            f'<script type="text/javascript">{_plotlyjs()}</script></head><body>'
            f'<h1>{_e(title)}</h1><p class="sub">{_e(subtitle)}</p>{body}'
            f"<footer>Written by probekit {_e(_version())} on {_dt.datetime.now().isoformat(timespec='seconds')}."
            f"</footer></body></html>\n")


def _version() -> str:
    from . import __version__

    return __version__


def _notebook_js() -> str:
    global _NOTEBOOK_JS_SENT
    if _NOTEBOOK_JS_SENT:
        return ""
    _NOTEBOOK_JS_SENT = True
    return f'<script type="text/javascript">{_plotlyjs()}</script>'


def _best(table: pd.DataFrame, metric: str = "accuracy") -> dict | None:
    """The row with the highest ``metric`` (ties: the higher MI, then the earlier point)."""
    if table is None or table.empty or metric not in table.columns or not table[metric].notna().any():
        return None
    t = plots._normalise(table)
    res = t[t.source == "residual"] if (t.source == "residual").any() else t
    order = {p: i for i, p in enumerate(plots.point_order(res.point))}
    res = res.assign(_o=[order[p] for p in res.point], _mi=res["mi_bits"] if "mi_bits" in res else 0.0)
    res = res.sort_values([metric, "_mi", "_o"], ascending=[False, False, True], na_position="last")
    return res.iloc[0].to_dict()


# ---------------------------------------------------------------- the report


@dataclass(eq=False)
class ScanReport:
    """What a scan found, with what it was run on.

    Attributes:
        table: the leakage table, one row per hook point × position × source (columns of
            :func:`probekit.readout.probes.probe_layers` plus ``source``); empty when no
            labels were given.
        lens: logit-lens top-k table (:meth:`probekit.readout.lens.LogitLens.top_k`) or None.
        targets: target-string ranks (:meth:`probekit.readout.lens.LogitLens.target_ranks`) or None.
        ladder: the leakage ladder (:func:`probekit.readout.ladder.leakage_ladder`) or None.
        settings: how it was run: model name, family, points, positions, prompt, seed, cv,
            probekit version, timings, ...
        data: what it was run on: number of images, label counts, where they came from.
        notes: sentences a reader must see (e.g. why a part is missing).

    Example:
        >>> import pandas as pd, tempfile, os
        >>> t = pd.DataFrame({"point": ["lm.0.resid", "lm.1.resid"], "position": "last",
        ...                   "accuracy": [0.6, 0.9], "accuracy_lo": [0.5, 0.85],
        ...                   "accuracy_hi": [0.7, 0.95], "chance": 0.5})
        >>> r = ScanReport(t, settings={"model": "tiny"}, data={"n_images": 200})
        >>> sorted(r.figures())
        ['heatmap', 'leakage']
        >>> path = r.save(os.path.join(tempfile.mkdtemp(), "out", "report.html"))
        >>> path.name, path.stat().st_size > 1_000_000   # plotly.js is inside
        ('report.html', True)
    """

    table: pd.DataFrame = field(default_factory=pd.DataFrame)
    lens: pd.DataFrame | None = None
    targets: pd.DataFrame | None = None
    settings: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    ladder: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        if self.table is None:
            self.table = pd.DataFrame()
        for name in _TABLES:
            v = getattr(self, name)
            if v is not None and not isinstance(v, pd.DataFrame):
                raise InputError(f"ScanReport.{name} must be a pandas DataFrame, got {type(v).__name__}",
                                 fix="pass the table returned by probekit.scan / probe_layers / LogitLens")
        self.settings = dict(self.settings or {})
        self.data = dict(self.data or {})
        self.notes = [str(n) for n in (self.notes or [])]

    # ---- what is there

    @property
    def has_leakage(self) -> bool:
        """True when the table holds probe results (labels were given)."""
        return not self.table.empty and "accuracy" in self.table.columns

    def _has(self, kind: str) -> bool:
        if kind in ("leakage", "heatmap"):
            return self.has_leakage
        if kind == "mi":
            return not self.table.empty and "mi_bits" in self.table and bool(self.table.mi_bits.notna().any())
        if kind == "lens":
            return self.lens is not None and not self.lens.empty
        if kind == "targets":
            return self.targets is not None and not self.targets.empty
        if kind == "ladder":
            return self.ladder is not None and not self.ladder.empty
        return False

    def figure(self, kind: str | None = "leakage") -> Any:
        """One figure: ``"leakage"`` (accuracy curves), ``"mi"`` (bits), ``"heatmap"``, ``"lens"``,
        ``"targets"``. ``None`` picks the first that applies.
        """
        if kind is None:
            kind = next((k for k in FIGURE_KINDS if self._has(k)), None)
            if kind is None:
                raise InputError("this report holds no table to draw", fix="scan with labels or with a logit lens")
        if kind not in FIGURE_KINDS:
            raise InputError(f"unknown figure kind {kind!r}", fix=f"use one of {list(FIGURE_KINDS)}")
        if not self._has(kind):
            have = [k for k in FIGURE_KINDS if self._has(k)]
            why = {"leakage": "no labels were given", "heatmap": "no labels were given",
                   "mi": "the table has no mi_bits", "lens": "no logit-lens table", "targets": "no targets were given",
                   "ladder": "scan ran without ladder="}
            raise InputError(f"no {kind!r} figure: {why[kind]}", fix=f"use one of {have}" if have else
                             "scan with labels= (probes) or with a logit lens")
        if kind in ("leakage", "mi"):  # markers show each point's verdict, so compute it if the table lacks it
            return plots.leakage_curves(add_verdicts(self.table), "accuracy" if kind == "leakage" else "mi_bits")
        if kind == "heatmap":
            return plots.leakage_heatmap(self.table, "accuracy")
        if kind == "lens":
            return plots.lens_grid(self.lens)
        if kind == "ladder":
            from .ladder_figure import ladder_figure

            return ladder_figure(self.ladder)
        return plots.target_curves(self.targets)

    def figures(self) -> dict[str, Any]:
        """Every figure that applies, keyed by kind, in the order of :data:`FIGURE_KINDS`."""
        return {k: self.figure(k) for k in FIGURE_KINDS if self._has(k)}

    # ---- words

    def summary(self) -> str:
        """Four lines: the verdict (:func:`verdict`), where it leaks most (or the highest, not
        significant, accuracy), the MI bound there, the controls and the test used."""
        best = _best(self.table)
        if best is None:
            lines = [n for n in self.notes[:1]] or ["No labels were given: there is no leakage table."]
            lines += self._lens_lines()
            return "\n".join((lines + ["", ""])[:3]).rstrip("\n")
        f = plots._fmt
        tested = tested_rows(self.table)
        leaking = tested[tested["leaks"]] if not tested.empty else tested
        if len(leaking):
            best = _best(leaking)
            line2 = (f"Most leakage: {plots.where(best['point'], best['position'])}, "
                     f"accuracy {_ci(best, 'accuracy')} vs chance {f(best.get('chance'))}.")
        else:
            adj = tested.set_index(["point", "position", "source"])["p_adjusted"] if not tested.empty else None
            key = (best["point"], plots._position_name(best["position"]), best.get("source", "residual"))
            p = f"; adjusted p {f(adj.get(key), 2)}" if adj is not None and key in adj.index else ""
            line2 = (f"Highest accuracy (not significant{p}): {plots.where(best['point'], best['position'])}, "
                     f"{_ci(best, 'accuracy')} vs chance {f(best.get('chance'))}.")
        if "mi_bits" in best and pd.notna(best.get("mi_bits")):
            mi = mi_headline(best)
            mi = mi if mi.startswith("0 (") else f"at least {mi} bits"  # "at least 0" would claim nothing
            line3 = (f"Mutual information there: {mi} of "
                     f"H(Y) = {f(best.get('entropy_bits'))} bits (held-out probe lower bound).")
        else:
            line3 = f"{int(best['n']) if pd.notna(best.get('n', np.nan)) else '?'} samples; no MI estimate in the table."
        ctx = []
        if pd.notna(best.get("mi_perm_bits", np.nan)):
            ctx.append(f"permuted-label floor {f(best['mi_perm_bits'], 3)} bits")
        if pd.notna(best.get("control_accuracy", np.nan)):
            ctx.append(f"control-task accuracy {f(best['control_accuracy'])} (selectivity {f(best.get('selectivity'))})")
        if not tested.empty:
            ctx.append(f"one-sided test per point vs chance, Holm-corrected over {len(tested)} points at {ALPHA:g}")
            raw = int((tested.accuracy_lo > tested.chance).sum()) if "accuracy_lo" in tested else 0
            if not len(leaking) and raw:
                ctx.append(f"{raw} of {len(tested)} uncorrected 95% intervals clear chance, as chance alone "
                           f"produces across {len(tested)} tests")
            weak = int(((tested.p_adjusted < ALPHA) & ~tested.leaks).sum())
            if weak:
                ctx.append(f"{weak} points beat chance on accuracy but their MI bound is not above the floor")
        line4 = ("Context: " + "; ".join(ctx) + ".") if ctx else "No control task or permutation floor in the table."
        return "\n".join([verdict(self.table), line2, line3, line4])

    def _lens_lines(self) -> list[str]:
        if not self._has("lens"):
            return []
        top = self.lens[self.lens["rank"] == self.lens["rank"].min()]
        last = plots.point_order(top.point)[-1]
        rows = top[top.point == last]
        said = ", ".join(f"{pos}: {plots._token_text(tok, 20)!s} ({plots._fmt(p)})"
                         for pos, tok, p in zip(rows.position, rows.token, rows.prob))
        return [f"Logit lens at {last}, top-1 token per position — {html.unescape(said)}."]

    def __repr__(self) -> str:
        model = self.settings.get("model", "?")
        parts = [f"model={model!r}", f"table={len(self.table)} rows"]
        if self.lens is not None:
            parts.append(f"lens={len(self.lens)} rows")
        if self.targets is not None:
            parts.append(f"targets={len(self.targets)} rows")
        return f"ScanReport({', '.join(parts)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScanReport):
            return NotImplemented
        return (_frames_equal(self.table, other.table) and _frames_equal(self.lens, other.lens)
                and _frames_equal(self.targets, other.targets) and _frames_equal(self.ladder, other.ladder) and _jsonable(self.settings) == _jsonable(other.settings)
                and _jsonable(self.data) == _jsonable(other.data) and self.notes == other.notes)

    __hash__ = None  # mutable, compared by value

    # ---- files

    def to_json(self, indent: int | None = None) -> str:
        """The whole report as JSON: tables as records (NaN as null), settings, data, notes.

        Values that JSON lacks are converted (tuples to lists, numpy numbers to numbers,
        paths to strings); :meth:`from_json` restores the tables' column dtypes.
        """
        obj = {
            "probekit_report": _FORMAT,
            "kind": "scan",
            "settings": _jsonable(self.settings),
            "data": _jsonable(self.data),
            "notes": list(self.notes),
            "tables": {name: _frame_to_json(getattr(self, name)) for name in _TABLES},
        }
        return json.dumps(obj, indent=indent, allow_nan=False, ensure_ascii=False)

    @classmethod
    def from_json(cls, s: str | bytes) -> "ScanReport":
        """Rebuild a report written by :meth:`to_json`."""
        try:
            obj = json.loads(s)
        except (TypeError, ValueError) as exc:
            raise InputError(f"not a JSON report: {exc}", fix="pass the string written by ScanReport.to_json()") from None
        if not isinstance(obj, dict) or obj.get("kind") != "scan" or "tables" not in obj:
            raise InputError("this JSON is not a probekit scan report",
                             fix="pass the string written by ScanReport.to_json()")
        tables = obj["tables"]
        return cls(
            table=_frame_from_json(tables.get("table")) if tables.get("table") is not None else pd.DataFrame(),
            lens=_frame_from_json(tables.get("lens")),
            targets=_frame_from_json(tables.get("targets")),
            ladder=_frame_from_json(tables.get("ladder")),
            settings=obj.get("settings") or {},
            data=obj.get("data") or {},
            notes=obj.get("notes") or [],
        )

    def to_html(self) -> str:
        """The page :meth:`save` writes, as a string."""
        model = self.settings.get("model", "model")
        body = [_summary_div(self.summary())]
        if self.notes:
            body.append('<div class="notes"><b>Notes</b><ul>' + "".join(f"<li>{_e(n)}</li>" for n in self.notes)
                        + "</ul></div>")
        body.append("<h2>Model and data</h2>")
        body.append(_kv_table({"model": model, **{k: v for k, v in self.settings.items()
                                                   if k in ("family", "dtype", "device")}}))
        body.append(_kv_table(self.data))
        titles = {"leakage": "Probe accuracy per layer", "mi": "Mutual information per layer",
                  "heatmap": "Accuracy per point and position", "lens": "Logit lens", "targets": "Target tokens",
                  "ladder": "Leakage ladder"}
        for kind, fig in self.figures().items():
            body.append(f"<h2>{_e(titles[kind])}</h2>{_figure_div(fig)}<p class='caption'>{_e(_CAPTIONS[kind])}</p>")
        if self.has_leakage:
            rows, cols, num = _leakage_rows(self.table)
            body.append("<h2>Leakage table</h2>" + _html_table(rows, cols, num))
            body.append("<details><summary>all columns</summary>" + _raw_table(self.table) + "</details>")
        for name in ("lens", "targets", "ladder"):
            df = getattr(self, name)
            if df is not None and not df.empty:
                body.append(f"<details><summary>{name} table ({len(df)} rows)</summary>{_raw_table(df)}</details>")
        body.append("<h2>Settings</h2>" + _kv_table(self.settings))
        return _page("probekit scan report", f"{model}", "\n".join(body))

    def save(self, path: str | os.PathLike) -> Path:
        """Write ONE self-contained HTML file (plotly.js inside, works offline); returns its path.

        The directory is created; the file is written to a temporary name and renamed, so
        an interrupted save never leaves a half-written report.
        """
        return _atomic_write(path, self.to_html())

    def _repr_html_(self) -> str:
        parts = [f"<p><b>{_e(self.summary().splitlines()[0])}</b></p>"]
        if self.notes:
            parts.append("<ul>" + "".join(f"<li>{_e(n)}</li>" for n in self.notes) + "</ul>")
        kind = next((k for k in FIGURE_KINDS if self._has(k)), None)
        if kind is not None:
            parts.append(_notebook_js() + _figure_div(self.figure(kind)))
        if self.has_leakage:
            rows, cols, num = _leakage_rows(self.table)
            key = {(r["point"], r["position"], r["source"]): i for i, r in enumerate(rows)}
            t = plots._normalise(self.table).sort_values("accuracy", ascending=False).head(5)
            top = [rows[key[(p, q, s)]] for p, q, s in zip(t.point, t.position, t.source)]
            parts.append(f"<p>Rows with the highest accuracy ({len(top)} of {len(rows)}); <code>.table</code> has them all:</p>"
                         + _html_table(top, cols, num))
        return "<div>" + "\n".join(parts) + "</div>"


# ---------------------------------------------------------------- comparison


@dataclass(eq=False)
class Comparison:
    """Two reports matched row by row (point, position, source), e.g. base vs fine-tuned.

    ``table`` has every numeric column of both as ``<column>_base`` / ``<column>_tuned``, and
    for accuracy and MI ``<metric>_diff`` (tuned − base) with a 95% CI ``<metric>_diff_lo`` /
    ``_hi`` (half-widths combined as sqrt(hw1² + hw2²), assuming independent estimates);
    ``diff``, ``diff_lo``, ``diff_hi`` repeat those of ``metric``.
    """

    base: ScanReport
    tuned: ScanReport
    metric: str = "accuracy"
    names: tuple[str, str] = ("base", "tuned")
    table: pd.DataFrame = field(init=False)

    def __post_init__(self) -> None:
        self.names = tuple(self.names)  # type: ignore[assignment]
        self.table = plots.paired_table(self.base.table, self.tuned.table, ("accuracy", "mi_bits"), self.names)
        m = self.metric
        if f"{m}_diff" not in self.table.columns:
            raise InputError(f"metric {m!r} is not in both tables", fix='use metric="accuracy" or "mi_bits"')
        self.table["diff"] = self.table[f"{m}_diff"]
        self.table["diff_lo"] = self.table.get(f"{m}_diff_lo", np.nan)
        self.table["diff_hi"] = self.table.get(f"{m}_diff_hi", np.nan)

    def figure(self, metric: str | None = None) -> Any:
        """Both curves with CIs and, below, the difference (tuned − base) with its CI."""
        return plots.compare_curves(self.base.table, self.tuned.table, metric or self.metric, self.names)

    def verdicts(self) -> list[str]:
        """Three verdict lines: on each model (:func:`verdict`) and on the difference (Holm)."""
        nb, nt = self.names
        return [f"{nb}: {verdict(self.base.table)}", f"{nt}: {verdict(self.tuned.table)}",
                difference_verdict(self.table, f"{nt} − {nb} ({plots._SHORT.get(self.metric, self.metric)})")]

    def summary(self) -> str:
        """Six lines: the three :meth:`verdicts`, then the largest change, how many rows'
        uncorrected CIs of the difference exclude 0, the peaks."""
        return "\n".join(self.verdicts() + self._change_lines().splitlines())

    def _change_lines(self) -> str:
        m, (nb, nt) = self.metric, self.names
        t = plots._normalise(self.table)
        res = t[t.source == "residual"] if (t.source == "residual").any() else t
        label = plots._SHORT.get(m, m)
        if not res["diff"].notna().any():
            return f"No {label} values to compare."
        if float(res["diff"].abs().max()) == 0.0:
            return (f"No change: {label} is the same in {nb} and {nt} at all {len(res)} rows.\n"
                    f"Rows matched on hook point, position and source.\n"
                    f"Peak: {self._peak(self.base, m)}.")
        big = res.loc[res["diff"].abs().idxmax()].to_dict()
        lo, hi = plots.ci_columns(m)
        val = lambda rec, s: plots.fmt_ci(rec.get(f"{m}_{s}"), rec.get(f"{lo}_{s}"), rec.get(f"{hi}_{s}"))  # noqa: E731
        line1 = (f"Largest change: {plots.where(big['point'], big['position'])}, {label} {val(big, 'base')} ({nb}) → "
                 f"{val(big, 'tuned')} ({nt}), difference {plots.fmt_ci(big['diff'], big['diff_lo'], big['diff_hi'])}.")
        ok = res["diff_lo"].notna() & res["diff_hi"].notna()
        down, up = int((ok & (res.diff_hi < 0)).sum()), int((ok & (res.diff_lo > 0)).sum())
        line2 = (f"The uncorrected 95% CI of the difference excludes 0 at {down + up} of {int(ok.sum())} rows "
                 f"({down} lower in {nt}, {up} higher).")
        peaks = [f"{name} {self._peak(rep, m)}" for name, rep in ((nb, self.base), (nt, self.tuned))]
        chance = res.get("chance_base")
        line3 = "Peaks: " + "; ".join(peaks) + (f" (chance {plots._fmt(chance.max())})." if m == "accuracy"
                                                 and chance is not None else ".")
        return "\n".join([line1, line2, line3])

    @staticmethod
    def _peak(report: ScanReport, metric: str) -> str:
        b = _best(report.table, metric)
        if b is None:
            return "–"
        return f"{plots.where(b['point'], b['position'])} {mi_headline(b) if metric == 'mi_bits' else _ci(b, metric)}"

    def _rows(self) -> tuple[list[dict], list[tuple[str, str]], list[str]]:
        m = self.metric
        lo, hi = plots.ci_columns(m)
        rows = []
        for rec in self.table.to_dict("records"):
            rows.append({"point": rec["point"], "position": rec["position"], "source": rec["source"],
                         "base": plots.fmt_ci(rec.get(f"{m}_base"), rec.get(f"{lo}_base"), rec.get(f"{hi}_base")),
                         "tuned": plots.fmt_ci(rec.get(f"{m}_tuned"), rec.get(f"{lo}_tuned"), rec.get(f"{hi}_tuned")),
                         "diff": plots.fmt_ci(rec["diff"], rec["diff_lo"], rec["diff_hi"])})
        label = plots._SHORT.get(m, m)
        cols = [("point", "hook point"), ("position", "position"), ("source", "source"),
                ("base", f"{self.names[0]} {label} [95% CI]"), ("tuned", f"{self.names[1]} {label} [95% CI]"),
                ("diff", f"{self.names[1]} − {self.names[0]} [95% CI]")]
        if set(self.table.source) == {"residual"}:
            cols = [c for c in cols if c[0] != "source"]
        return rows, cols, ["base", "tuned", "diff"]

    def to_html(self) -> str:
        """The page :meth:`save` writes, as a string."""
        nb, nt = self.names
        body = [_summary_div(self.summary(), bold=3)]
        metrics = [self.metric] + [m for m in ("accuracy", "mi_bits") if m != self.metric
                                   and f"{m}_diff" in self.table.columns]
        for m in metrics:
            heading = {"accuracy": "Probe accuracy", "mi_bits": "Mutual information (bits)"}.get(m, m)
            body.append(f"<h2>{_e(heading)}</h2>{_figure_div(self.figure(m))}"
                        f"<p class='caption'>Top: both models with 95% CIs. Bottom: {_e(nt)} − {_e(nb)}; "
                        "its CI combines the two CIs assuming independent estimates.</p>")
        rows, cols, num = self._rows()
        body.append("<h2>Paired table</h2>" + _html_table(rows, cols, num))
        for name, rep in zip(plots.role_names(self.names), (self.base, self.tuned)):
            body.append(f"<h2>{_e(name)}: settings and data</h2>{_kv_table(rep.settings)}{_kv_table(rep.data)}")
            if rep.notes:
                body.append('<div class="notes">' + "<br>".join(_e(n) for n in rep.notes) + "</div>")
        rb, rt = plots.role_names(self.names)
        sub = " vs ".join(f"{role}: {rep.settings.get('model', name)}"
                          + (f" (fingerprint {rep.settings['model_fingerprint']})" if rep.settings.get("model_fingerprint") else "")
                          for role, name, rep in ((rb, nb, self.base), (rt, nt, self.tuned)))
        return _page(f"probekit comparison: {rb} vs {rt}", sub, "\n".join(body))

    def save(self, path: str | os.PathLike) -> Path:
        """Write ONE self-contained HTML file (atomic; the directory is created); returns its path."""
        return _atomic_write(path, self.to_html())

    def _repr_html_(self) -> str:
        rows, cols, num = self._rows()
        order = self.table["diff"].abs().sort_values(ascending=False).index[:5]
        top = [rows[i] for i in order]
        return ("<div>" + "".join(f"<p>{_e(x)}</p>" for x in self.summary().splitlines())
                + _notebook_js() + _figure_div(self.figure())
                + f"<p>Largest changes ({len(top)} of {len(rows)} rows); <code>.table</code> has them all:</p>"
                + _html_table(top, cols, num) + "</div>")

    def __repr__(self) -> str:
        return f"Comparison({self.names[0]} vs {self.names[1]}, metric={self.metric!r}, {len(self.table)} rows)"


def compare(base: ScanReport, tuned: ScanReport, metric: str = "accuracy",
            names: Sequence[str] = ("base", "tuned")) -> Comparison:
    """Pair two scan reports (e.g. a model before and after fine-tuning) row by row.

    Rows are matched on (point, position, source); the difference is tuned − base with a 95%
    CI from the two CIs (independence assumed). Raises :class:`probekit.errors.InputError`
    when the reports share no hook point and position, or lack ``metric``.

    Example:
        >>> import pandas as pd
        >>> t = pd.DataFrame({"point": ["lm.0.resid"], "position": "last", "accuracy": [0.9],
        ...                   "accuracy_lo": [0.86], "accuracy_hi": [0.94], "chance": 0.5})
        >>> c = compare(ScanReport(t), ScanReport(t.assign(accuracy=0.6, accuracy_lo=0.57, accuracy_hi=0.63)))
        >>> round(float(c.table["diff"][0]), 2), round(float(c.table["diff_hi"][0] - c.table["diff"][0]), 3)
        (-0.3, 0.05)
    """
    for name, rep in zip(("base", "tuned"), (base, tuned)):
        if not isinstance(rep, ScanReport):
            raise InputError(f"{name} must be a ScanReport, got {type(rep).__name__}",
                             fix="pass the reports returned by probekit.scan")
        if not rep.has_leakage:
            raise InputError(f"the {name} report has no leakage table (no labels were given)",
                             fix="scan both models with labels=")
        if metric not in rep.table.columns:
            raise InputError(f"the {name} report's table has no {metric!r} column",
                             fix='use metric="accuracy" or "mi_bits"')
    if len(names) != 2:
        raise InputError(f"names must be two labels, got {names!r}", fix='use names=("base", "tuned")')
    return Comparison(base, tuned, metric=metric, names=tuple(names))  # type: ignore[arg-type]
