"""The study protocol: what a packaged study declares, and the one driver that runs any of them.

A study is an organism (trained here, cached, deterministic) with its conditions (the positive one and a
matched negative control), run at a quick (``--small``) or a full size, that writes its tables and (full
size) its own section of ``docs/results.md``. It declares a :class:`Study`; :func:`run` does the rest the
same way for every study: the line saying where it writes, the run, the CSV tables (atomically, no empty
ones), the docs section when the study writes one, the verdict lines, the files written and the time.

Adding a study: one module under ``probekit/studies/`` defining ``STUDY = Study(...)`` and one line in
:data:`probekit.studies.REGISTRY` (``docs/concepts.md``, "Extending probekit", counts the files).

Example:
    >>> from probekit.studies import get_study
    >>> s = get_study("calibration")
    >>> s.flags, s.out(Options(small=True))
    (('small',), 'probekit-calibration-small')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import InputError

__all__ = ["Options", "Outcome", "Study", "run"]

FLAGS = ("small", "full", "sae")


@dataclass(frozen=True)
class Options:
    """What the command line (or a caller) asked for: ``probekit study NAME [--small] [--full] [--sae]``."""

    small: bool = False
    full: bool = False
    sae: bool = False
    out: str | None = None  # folder for checkpoints and tables (default: the study's)
    docs: str = "docs"  # where a full run writes results.md and img/


@dataclass
class Outcome:
    """What a study's run gives the driver.

    ``lines``: the verdict lines printed first; ``tables``: name -> DataFrame, written as ``out/<name>.csv``
    (other values are skipped); ``empty``: why a table may be empty (printed instead of writing it);
    ``table``: one DataFrame printed under the verdict lines; ``write_docs``: ``(results_md, img_dir) ->
    paths`` when this run rewrites its section of the docs (None: it writes none).
    """

    lines: list[str]
    tables: Mapping[str, Any]
    seconds: float
    out: str | Path
    empty: Mapping[str, str] | None = None
    table: Any = None
    write_docs: Callable[[Path, Path], list[Path]] | None = None


@dataclass(frozen=True)
class Study:
    """A packaged study: its name, a line of help, the flags it takes, its default output folder and its run.

    ``run(options) -> Outcome``; ``out(options)``: the folder it writes to; ``what``: what goes there (the
    start and end lines say it).
    """

    name: str
    help: str
    run: Callable[[Options], Outcome]
    default_out: Callable[[Options], str]
    flags: tuple[str, ...] = ("small",)
    what: str = "checkpoints and tables"
    docs: str = field(default="")  # the section of docs/results.md a full run rewrites ("" = none)

    def out(self, options: Options) -> str:
        return options.out or self.default_out(options)

    def check(self, options: Options) -> None:
        """Refuse a flag this study does not take, before any work."""
        bad = [f for f in FLAGS if getattr(options, f) and f not in self.flags]
        if bad:
            takes = ", ".join(f"--{f}" for f in self.flags) or "no flags"
            raise InputError(f"--{bad[0]} is not an option of the {self.name} study (it takes {takes})",
                             fix=f"run `probekit study {self.name}` with {takes}")


def run(study: Study, options: Options) -> int:
    """Run ``study`` the way every study runs: say where, run, write tables and docs, print what it found."""
    from .printout import print_study, starting_line, write_tables

    study.check(options)
    out = study.out(options)
    print(starting_line(study.name, out, study.what), flush=True)
    res = study.run(options)
    written, notes = write_tables(res.tables, res.out, res.empty)
    if res.write_docs is not None:
        docs = Path(options.docs)
        written += res.write_docs(docs / "results.md", docs / "img")
    print_study(res.lines, written, notes, res.seconds, res.out, table=res.table, what=study.what)
    return 0


def replace_section(md_path: str | Path, name: str, text: str) -> Path:
    """Write ``text`` between ``<!-- name -->`` and ``<!-- /name -->`` in ``md_path`` (appended when the markers
    are absent), keeping the rest of the page; written atomically."""
    from ..files import replace_section as replace

    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    return replace(md_path, start, end, f"{start}\n{text.strip()}\n{end}\n")
