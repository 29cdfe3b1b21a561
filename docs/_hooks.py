"""Build helpers for the docs site (not a page: ``exclude_docs`` keeps it out of the site).

- ``on_config`` (an MkDocs hook): drop nav entries whose page does not exist yet.
  ``benchmarks.md`` and ``results.md`` are written by separate jobs; until they land the
  site builds with ``--strict`` and shows no dead link.
- ``ExampleSections`` (a griffe extension for mkdocstrings): read a Google-style
  ``Example:`` header as ``Examples:``. With the singular, griffe renders the doctest as
  plain Markdown, where output such as ``[:2]`` + ``['a', 'b']`` reads as a reference link
  and ``--strict`` fails; the plural renders every doctest as a code block. Sphinx roles
  (``:func:`wrap```) become plain code, as Markdown has no such syntax.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import griffe

_HEADER = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)
_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|obj|exc|const):`~?([^`]+)`")


class ExampleSections(griffe.Extension):
    def on_object(self, *, obj: Any, **kwargs: Any) -> None:
        doc = getattr(obj, "docstring", None)
        if doc is not None:
            doc.value = _ROLE.sub(r"`\1`", _HEADER.sub(r"\1Examples:", doc.value))


def _present(entry: Any, docs: Path) -> bool:
    if isinstance(entry, dict):
        (value,) = entry.values()
        return _present(value, docs)
    if isinstance(entry, str):
        return "://" in entry or (docs / entry).is_file()
    return True  # a section (list) is kept; its own entries are filtered below


def _filter(nav: list, docs: Path) -> list:
    out = []
    for entry in nav:
        if isinstance(entry, dict):
            (title, value), = entry.items()
            if isinstance(value, list):
                entry = {title: _filter(value, docs)}
        if _present(entry, docs):
            out.append(entry)
    return out


def on_config(config: Any, **kwargs: Any) -> Any:
    if config.nav:
        config.nav = _filter(config.nav, Path(config.docs_dir))
    return config
