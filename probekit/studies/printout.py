"""What ``probekit study <name>`` prints and writes, the same for every study.

First the verdict lines (each study words its own: ``verdict_lines(res)`` of its module), then
a compact table where the study has one, then every file written, then why a table was not
written, then the run time and where the files are. :func:`write_tables` writes the study's
tables as CSV next to its checkpoints and never an empty one: an empty table is reported with
the reason its configuration gives.

Example:
    >>> import pandas as pd, tempfile
    >>> out = tempfile.mkdtemp()
    >>> written, notes = write_tables({"probes": pd.DataFrame({"a": [1]}), "transfer": pd.DataFrame()}, out,
    ...                               {"transfer": "no profile was taught in one modality only"})
    >>> [p.name for p in written], notes
    (['probes.csv'], ['not written: transfer.csv (empty: no profile was taught in one modality only)'])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from ..files import atomic_write
from ..readout.significance import drop_nulls

__all__ = ["write_tables", "print_study", "starting_line"]


def write_tables(tables: Mapping[str, Any], out: str | Path, empty: Mapping[str, str] | None = None
                 ) -> tuple[list[Path], list[str]]:
    """Write each non-empty DataFrame of ``tables`` to ``out/<name>.csv``; other values are skipped.

    Returns the paths written and one line per empty table: ``not written: <name>.csv (empty:
    <why>)``, ``why`` from ``empty`` (the study's reason for that table) or a plain "no rows".
    """
    out = Path(out).resolve()  # the paths printed say where the files are, from anywhere
    out.mkdir(parents=True, exist_ok=True)
    written, notes = [], []
    for name, value in tables.items():
        if not isinstance(value, pd.DataFrame):
            continue
        if value.empty:
            notes.append(f"not written: {name}.csv (empty: {(empty or {}).get(name, 'this run produced no rows')})")
            continue
        path = out / f"{name}.csv"
        # the permutation statistics stay in memory (the verdicts made from them are columns); atomic, as every file
        atomic_write(path, drop_nulls(value).to_csv(index=False), f"{name} table")
        written.append(path)
    return written, notes


def starting_line(name: str, out: str | Path, what: str = "checkpoints and tables") -> str:
    """The line a study prints before it starts: where its checkpoints and tables go."""
    return f"probekit study {name}: {what} go to {Path(out).resolve()}"


def print_study(verdicts: Sequence[str], written: Sequence[str | Path], notes: Sequence[str] = (),
                seconds: float | None = None, out: str | Path | None = None, table: pd.DataFrame | None = None,
                what: str = "checkpoints and tables") -> None:
    """Print a finished study: verdict lines, the optional ``table``, ``wrote <path>`` per file, ``notes``,
    then ``(<seconds> s; <what> in <out>)``."""
    for line in verdicts:
        print(line)
    if table is not None and not table.empty:
        with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 60):
            print("\n" + table.to_string(index=False) + "\n")
    for path in written:
        print(f"wrote {path}")
    for note in notes:
        print(note)
    if seconds is not None:
        where = f"; {what} in {Path(out).resolve()}" if out is not None else ""
        print(f"({seconds:.0f} s{where})")
