"""Two scan reports matched row by row (e.g. a base model and its fine-tuned version).

:func:`compare` checks the two reports and returns a :class:`Comparison`: the paired table
(:func:`probekit.report.tables.paired_table`), verdicts on each model and on the difference,
a figure, one HTML page.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from .figures import compare_curves
from .pages import comparison_notebook, comparison_page
from .scan_report import ScanReport
from .serialise import atomic_write
from .tables import best_row, paired_table
from .text import SHORT, ci_columns, ci_text, fmt, fmt_ci, where
from .verdicts import difference_rows, difference_verdict, mi_headline, verdict

__all__ = ["Comparison", "compare"]


@dataclass(eq=False)
class Comparison:
    """Two reports matched row by row (point, position, source), e.g. base vs fine-tuned.

    ``table`` has every numeric column of both as ``<column>_base`` / ``<column>_tuned``, and
    for accuracy and MI ``<metric>_diff`` (tuned − base) with a 95% CI ``<metric>_diff_lo`` /
    ``_hi`` (half-widths combined as sqrt(hw1² + hw2²), assuming independent estimates);
    ``diff``, ``diff_lo``, ``diff_hi`` repeat those of ``metric``; ``diff_p``, ``diff_p_holm``,
    ``changed`` and ``excludes_0`` test each difference (:func:`~probekit.report.verdicts.difference_rows`).
    Every count in :meth:`summary` is a count of these rows.
    """

    base: ScanReport
    tuned: ScanReport
    metric: str = "accuracy"
    names: tuple[str, str] = ("base", "tuned")
    table: pd.DataFrame = field(init=False)

    def __post_init__(self) -> None:
        self.names = tuple(self.names)  # type: ignore[assignment]
        self.table = paired_table(self.base.table, self.tuned.table, ("accuracy", "mi_bits"), self.names)
        m = self.metric
        if f"{m}_diff" not in self.table.columns:
            raise InputError(f"metric {m!r} is not in both tables", fix='use metric="accuracy" or "mi_bits"')
        self.table["diff"] = self.table[f"{m}_diff"]
        self.table["diff_lo"] = self.table.get(f"{m}_diff_lo", np.nan)
        self.table["diff_hi"] = self.table.get(f"{m}_diff_hi", np.nan)
        self.table = difference_rows(self.table)  # the one test of each row that the summary counts

    def figure(self, metric: str | None = None) -> Any:
        """Both curves with CIs and, below, the difference (tuned − base) with its CI."""
        return compare_curves(self.base.table, self.tuned.table, metric or self.metric, self.names)

    def verdicts(self) -> list[str]:
        """Three verdict lines: on each model (:func:`verdict`) and on the difference (Holm)."""
        nb, nt = self.names
        return [f"{nb}: {verdict(self.base.table)}", f"{nt}: {verdict(self.tuned.table)}",
                difference_verdict(self.table, f"{nt} − {nb} ({SHORT.get(self.metric, self.metric)})")]

    def summary(self) -> str:
        """The three :meth:`verdicts`, then the largest change, how many rows' uncorrected CIs of
        the difference exclude 0, the peaks.

        Every count is of the rows of :attr:`table` whose difference has a CI (``diff_p`` not
        NaN), every source and position included, so the lines cannot disagree; rows without one
        are said to be left out.
        """
        return "\n".join(self.verdicts() + self._change_lines().splitlines())

    def _change_lines(self) -> str:
        m, (nb, nt) = self.metric, self.names
        t = self.table
        tested = t[np.isfinite(t["diff_p"].to_numpy(float))]
        label = SHORT.get(m, m)
        left = len(t) - len(tested)
        left_out = (f" ({left} of the table's {len(t)} rows have no CI of the difference and are not counted)"
                    if left else "")
        peaks = [f"{name} {self._peak(rep, m)}" for name, rep in ((nb, self.base), (nt, self.tuned))]
        chance = tested.get("chance_base")
        line3 = "Peaks: " + "; ".join(peaks) + (f" (chance {fmt(chance.max())})." if m == "accuracy"
                                                 and chance is not None and len(tested) else ".")
        if tested.empty:
            return f"No {label} difference with a CI to compare in any of the {len(t)} rows.\n{line3}"
        if float(tested["diff"].abs().max()) == 0.0:
            return (f"No change: {label} is the same in {nb} and {nt} at all {len(tested)} points{left_out}.\n"
                    f"Rows matched on hook point, position and source.\n"
                    f"Peak: {self._peak(self.base, m)}.")
        big = tested.loc[tested["diff"].abs().idxmax()].to_dict()
        lo, hi = ci_columns(m)
        val = lambda rec, s: fmt_ci(rec.get(f"{m}_{s}"), rec.get(f"{lo}_{s}"), rec.get(f"{hi}_{s}"))  # noqa: E731
        line1 = (f"Largest change: {where(big['point'], big['position'])}, {label} {val(big, 'base')} ({nb}) → "
                 f"{val(big, 'tuned')} ({nt}), difference {fmt_ci(big['diff'], big['diff_lo'], big['diff_hi'])}.")
        out = tested[tested["excludes_0"]]
        down, up = int((out["diff"] < 0).sum()), int((out["diff"] > 0).sum())
        line2 = (f"The uncorrected 95% CI of the difference excludes 0 at {len(out)} of {len(tested)} points "
                 f"({down} lower in {nt}, {up} higher){left_out}.")
        return "\n".join([line1, line2, line3])

    @staticmethod
    def _peak(report: ScanReport, metric: str) -> str:
        b = best_row(report.table, metric)
        if b is None:
            return "–"
        return f"{where(b['point'], b['position'])} {mi_headline(b) if metric == 'mi_bits' else ci_text(b, metric)}"

    def to_html(self, title: str | None = None, intro: str | None = None) -> str:
        """The page :meth:`save` writes, as a string."""
        return comparison_page(self, title=title, intro=intro)

    def save(self, path: str | os.PathLike, title: str | None = None, intro: str | None = None) -> Path:
        """Write ONE self-contained HTML file (atomic; the directory is created); returns its path.

        ``title`` heads the page (default ``"probekit comparison: base vs tuned"``), ``intro``
        is a paragraph under it, as in :meth:`ScanReport.save`.
        """
        return atomic_write(path, self.to_html(title=title, intro=intro))

    def _repr_html_(self) -> str:
        return comparison_notebook(self)

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
