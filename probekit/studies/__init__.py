"""Packaged studies, run by ``probekit study NAME``: each one module here, each one line of :data:`REGISTRY`.

A study declares a :class:`~probekit.studies.base.Study` (name, help, flags, default output folder, run);
:func:`~probekit.studies.base.run` runs any of them the same way. The command line's choices and help and
the docs' list of studies (``docs/studies.md``, :func:`markdown_list`) come from this registry.

Example:
    >>> from probekit.studies import names
    >>> names()
    ['ladder', 'watermark', 'unlearning', 'memorization', 'calibration', 'membership']
"""

from __future__ import annotations

import importlib

from ..errors import InputError
from .base import Options, Outcome, Study, replace_section, run

__all__ = ["REGISTRY", "Options", "Outcome", "Study", "get_study", "names", "register_study", "markdown_list",
           "replace_section", "run"]

# name -> module defining STUDY (imported when the study is asked for: importing a study costs nothing)
REGISTRY: dict[str, str] = {
    "ladder": "probekit.studies.ladder",
    "watermark": "probekit.studies.watermark",
    "unlearning": "probekit.studies.unlearning",
    "memorization": "probekit.studies.memorization",
    "calibration": "probekit.studies.calibration",
    "membership": "probekit.studies.membership",
}


def names() -> list[str]:
    return list(REGISTRY)


def register_study(name: str, module: str) -> None:
    """Add a study at run time: ``module`` (importable) defines ``STUDY``; ``probekit study NAME`` runs it."""
    if not isinstance(name, str) or not name.isidentifier():
        raise InputError(f"a study name is an identifier, got {name!r}", fix="pass e.g. 'my_study'")
    if name in REGISTRY and REGISTRY[name] != module:
        raise InputError(f"study {name!r} is already registered (by {REGISTRY[name]})", fix="choose another name")
    REGISTRY[name] = module


def get_study(name: str) -> Study:
    """The registered study ``name`` (its module imported now)."""
    if name not in REGISTRY:
        raise InputError(f"no study named {name!r}; the studies are {', '.join(REGISTRY)}",
                         fix="pick one of those, or register_study() your own")
    study = getattr(importlib.import_module(REGISTRY[name]), "STUDY", None)
    if not isinstance(study, Study) or study.name != name:
        raise InputError(f"{REGISTRY[name]} does not define STUDY = Study({name!r}, ...)",
                         fix="define STUDY in the study's module")
    return study


def markdown_list() -> str:
    """The docs' list of studies: command, flags, what it is and the section of docs/results.md it writes."""
    lines = ["| command | flags | what | section of docs/results.md |", "|---|---|---|---|"]
    for n in REGISTRY:
        s = get_study(n)
        lines.append(f"| `probekit study {n}` | {' '.join(f'`--{f}`' for f in s.flags)} | {s.help} | {s.docs or '-'} |")
    return "\n".join(lines)
