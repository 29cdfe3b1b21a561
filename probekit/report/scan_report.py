"""The result of a scan as an object: tables, figures, a summary, one self-contained HTML file.

:class:`ScanReport` holds the leakage table of :func:`probekit.scan` (or of
:func:`probekit.readout.probes.probe_layers`), the optional logit-lens tables, and what was
run on what (``settings``, ``data``, ``notes``).

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

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..readout.significance import ALPHA, add_verdicts
from .figures import ladder_figure, leakage_curves, leakage_heatmap, lens_grid, target_curves
from .order import point_order
from .pages import scan_notebook, scan_page
from .serialise import atomic_write, dump_report, frames_equal, jsonable, load_report
from .tables import best_row, normalise
from .text import ci_text, fmt, token_text, where
from .verdicts import mi_headline, tested_rows, verdict

__all__ = ["ScanReport", "FIGURE_KINDS"]

FIGURE_KINDS = ("leakage", "mi", "heatmap", "lens", "targets", "ladder")
TABLES = ("table", "lens", "targets", "ladder")
_WHY_NOT = {"leakage": "no labels were given", "heatmap": "no labels were given", "mi": "the table has no mi_bits",
            "lens": "no logit-lens table", "targets": "no targets were given", "ladder": "scan ran without ladder="}


def _leakage_table(table: Any) -> pd.DataFrame:
    """The leakage table as a report keeps it: normalised (position and source filled in) once, here."""
    if table is None:
        return pd.DataFrame()
    if not isinstance(table, pd.DataFrame):
        raise InputError(f"ScanReport.table must be a pandas DataFrame, got {type(table).__name__}",
                         fix="pass the table returned by probekit.scan / probe_layers / LogitLens")
    if table.empty and "point" not in table.columns:  # no labels: nothing to normalise
        return table
    return normalise(table, "ScanReport.table")


@dataclass(eq=False)
class ScanReport:
    """What a scan found, with what it was run on.

    Attributes:
        table: the leakage table, one row per hook point × position × source (columns of
            :func:`probekit.readout.probes.probe_layers` plus ``source``); empty when no
            labels were given. Normalised when set: ``source`` is filled in (``"residual"``
            when the table has none) and a row without a position shows ``"—"``.
        lens: logit-lens top-k table (:meth:`probekit.readout.lens.LogitLens.top_k`) or None.
        targets: target-string ranks (:meth:`probekit.readout.lens.LogitLens.target_ranks`) or None.
        ladder: the leakage ladder (:func:`probekit.readout.ladder.leakage_ladder`) or None.
        extra: the tables of plug-in readouts (:mod:`probekit.readout.plugins`) by name, beside the four above.
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
    extra: dict = field(default_factory=dict)

    def __setattr__(self, name: str, value: Any) -> None:
        # every reader of .table (figures, summary, pages, compare) can rely on normalised rows
        super().__setattr__(name, _leakage_table(value) if name == "table" else value)

    def __post_init__(self) -> None:
        for name in TABLES[1:]:
            v = getattr(self, name)
            if v is not None and not isinstance(v, pd.DataFrame):
                raise InputError(f"ScanReport.{name} must be a pandas DataFrame, got {type(v).__name__}",
                                 fix="pass the table returned by probekit.scan / probe_layers / LogitLens")
        self.extra = dict(self.extra or {})
        for name, v in self.extra.items():
            if name in TABLES or not isinstance(v, pd.DataFrame):
                raise InputError(f"ScanReport.extra[{name!r}] must be a pandas DataFrame named other than "
                                 f"{list(TABLES)}",
                                 fix="return {name: DataFrame} from a readout's run, with a name of its own")
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
        if kind in ("lens", "targets", "ladder"):
            df = getattr(self, kind)
            return df is not None and not df.empty
        return False

    def figure(self, kind: str | None = "leakage") -> Any:
        """One figure: ``"leakage"`` (accuracy curves), ``"mi"`` (bits), ``"heatmap"``, ``"lens"``,
        ``"targets"``, ``"ladder"``. ``None`` picks the first that applies.
        """
        if kind is None:
            kind = next((k for k in FIGURE_KINDS if self._has(k)), None)
            if kind is None:
                raise InputError("this report holds no table to draw", fix="scan with labels or with a logit lens")
        if kind not in FIGURE_KINDS:
            raise InputError(f"unknown figure kind {kind!r}", fix=f"use one of {list(FIGURE_KINDS)}")
        if not self._has(kind):
            have = [k for k in FIGURE_KINDS if self._has(k)]
            raise InputError(f"no {kind!r} figure: {_WHY_NOT[kind]}", fix=f"use one of {have}" if have else
                             "scan with labels= (probes) or with a logit lens")
        if kind in ("leakage", "mi"):  # markers show each point's verdict, so compute it if the table lacks it
            return leakage_curves(add_verdicts(self.table), "accuracy" if kind == "leakage" else "mi_bits")
        if kind == "heatmap":
            return leakage_heatmap(self.table, "accuracy")
        if kind == "lens":
            return lens_grid(self.lens)
        if kind == "ladder":
            return ladder_figure(self.ladder)
        return target_curves(self.targets)

    def figures(self) -> dict[str, Any]:
        """Every figure that applies, keyed by kind, in the order of :data:`FIGURE_KINDS`."""
        return {k: self.figure(k) for k in FIGURE_KINDS if self._has(k)}

    # ---- words

    def summary(self) -> str:
        """Four lines: the verdict (:func:`verdict`), where it leaks most (or the highest, not
        significant, accuracy), the MI bound there, the controls and the test used."""
        best = best_row(self.table)
        if best is None:
            lines = [n for n in self.notes[:1]] or ["No labels were given: there is no leakage table."]
            lines += self._lens_lines()
            return "\n".join((lines + ["", ""])[:3]).rstrip("\n")
        tested = tested_rows(self.table)
        leaking = tested[tested["leaks"]] if not tested.empty else tested
        if len(leaking):
            best = best_row(leaking)
            line2 = (f"Most leakage: {where(best['point'], best['position'])}, "
                     f"accuracy {ci_text(best, 'accuracy')} vs chance {fmt(best.get('chance'))}.")
        else:
            adj = tested.set_index(["point", "position", "source"])["p_adjusted"] if not tested.empty else None
            key = (best["point"], best["position"], best["source"])
            p = f"; adjusted p {fmt(adj.get(key), 2)}" if adj is not None and key in adj.index else ""
            line2 = (f"Highest accuracy (not significant{p}): {where(best['point'], best['position'])}, "
                     f"{ci_text(best, 'accuracy')} vs chance {fmt(best.get('chance'))}.")
        if "mi_bits" in best and pd.notna(best.get("mi_bits")):
            mi = mi_headline(best)
            mi = mi if mi.startswith("0 (") else f"at least {mi} bits"  # "at least 0" would claim nothing
            line3 = (f"Mutual information there: {mi} of "
                     f"H(Y) = {fmt(best.get('entropy_bits'))} bits (held-out probe lower bound).")
        else:
            line3 = f"{int(best['n']) if pd.notna(best.get('n', np.nan)) else '?'} samples; no MI estimate in the table."
        return "\n".join([verdict(self.table), line2, line3, _context_line(best, tested, leaking)])

    def _lens_lines(self) -> list[str]:
        if not self._has("lens"):
            return []
        top = self.lens[self.lens["rank"] == self.lens["rank"].min()]
        last = point_order(top.point)[-1]
        rows = top[top.point == last]
        said = ", ".join(f"{pos}: {token_text(tok, 20)!s} ({fmt(p)})"
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
        return (all(frames_equal(getattr(self, t), getattr(other, t)) for t in TABLES)
                and set(self.extra) == set(other.extra)
                and all(frames_equal(v, other.extra[k]) for k, v in self.extra.items())
                and jsonable(self.settings) == jsonable(other.settings)
                and jsonable(self.data) == jsonable(other.data) and self.notes == other.notes)

    __hash__ = None  # mutable, compared by value

    # ---- files

    def to_json(self, indent: int | None = None) -> str:
        """The whole report as JSON: tables as records (NaN as null), settings, data, notes.

        Values that JSON lacks are converted (tuples to lists, numpy numbers to numbers,
        paths to strings); :meth:`from_json` restores the tables' column dtypes.
        """
        tables = {**{t: getattr(self, t) for t in TABLES}, **self.extra}
        return dump_report("scan", tables, self.settings, self.data, self.notes, indent=indent)

    @classmethod
    def from_json(cls, s: str | bytes) -> "ScanReport":
        """Rebuild a report written by :meth:`to_json`."""
        obj = load_report(s, "scan", "ScanReport.to_json()")
        tables = obj["tables"]
        return cls(table=tables.get("table"), lens=tables.get("lens"), targets=tables.get("targets"),
                   ladder=tables.get("ladder"), settings=obj.get("settings") or {}, data=obj.get("data") or {},
                   notes=obj.get("notes") or [], extra={k: v for k, v in tables.items() if k not in TABLES and v is not None})

    def to_html(self, title: str | None = None, intro: str | None = None) -> str:
        """The page :meth:`save` writes, as a string."""
        return scan_page(self, title=title, intro=intro)

    def save(self, path: str | os.PathLike, title: str | None = None, intro: str | None = None) -> Path:
        """Write ONE self-contained HTML file (plotly.js inside, works offline); returns its path.

        ``title`` heads the page and names its browser tab (default ``"probekit scan report"``);
        ``intro`` is a paragraph under it saying what was scanned (e.g. that this is a negative
        control). The directory is created; the file is written to a temporary name and
        renamed, so an interrupted save never leaves a half-written report.
        """
        return atomic_write(path, self.to_html(title=title, intro=intro))

    def _repr_html_(self) -> str:
        return scan_notebook(self, next((k for k in FIGURE_KINDS if self._has(k)), None))


def _test_text(tested: pd.DataFrame) -> str:
    """What the verdict's test was, as the table records it (``test``, ``n_units``)."""
    m = len(tested)
    if "test" in tested.columns and (tested["test"] == "permutation").all():
        grouped = "n_units" in tested.columns and "n" in tested.columns and bool((tested.n_units < tested.n).any())
        return (f"permutation test per point (labels permuted{' across groups' if grouped else ''}, the cross-validated "
                f"statistic recomputed on each), family-wise corrected (step-down maxT) over {m} points at {ALPHA:g}")
    if "test" in tested.columns and (tested["test"] == "from CI").all():
        return f"one-sided test read off each accuracy CI, Holm-corrected over {m} points at {ALPHA:g}"
    return f"family-wise corrected over {m} points at {ALPHA:g}"


def _context_line(best: dict, tested: pd.DataFrame, leaking: pd.DataFrame) -> str:
    """The summary's last line: permutation floor, control task, the test and what it corrected for."""
    ctx = []
    if pd.notna(best.get("mi_perm_bits", np.nan)):
        ctx.append(f"permuted-label floor {fmt(best['mi_perm_bits'], 3)} bits")
    if pd.notna(best.get("control_accuracy", np.nan)):
        ctx.append(f"control-task accuracy {fmt(best['control_accuracy'])} (selectivity {fmt(best.get('selectivity'))})")
    if not tested.empty:
        ctx.append(_test_text(tested))
        raw = int((tested.accuracy_lo > tested.chance).sum()) if "accuracy_lo" in tested else 0
        if not len(leaking) and raw:
            ctx.append(f"{raw} of {len(tested)} uncorrected 95% intervals clear chance, as chance alone "
                       f"produces across {len(tested)} tests")
        weak = int(((tested.p_adjusted < ALPHA) & ~tested.leaks).sum())
        if weak:
            ctx.append(f"{weak} points beat chance on accuracy but their MI bound is not above the floor")
    return ("Context: " + "; ".join(ctx) + ".") if ctx else "No control task or permutation floor in the table."
