"""probekit: find what a vision-language model silently knows about its inputs, and remove it.

Layers (each uses only the ones before it in this list):

- :mod:`probekit.models`: load / wrap HF VLMs, map hook points to modules, tiny offline checkpoints
- :mod:`probekit.hooks`: record hook points at token positions into an :class:`ActivationStore`
- :mod:`probekit.readout`: logit lens, linear probes, mutual information per layer
- :mod:`probekit.steering`: directions, ablation / steering / weight orthogonalisation, evaluation

On top: :func:`scan` (collect + probe + report), :func:`compare`, figures (:mod:`probekit.report.figures`), the
``probekit`` CLI and the packaged studies (:mod:`probekit.studies`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# No environment or thread settings here: importing a library must not change the process.
# (The probe solver picks its thread count per call and restores it: readout/_solver.py.)
from . import errors
from .membership import membership  # eager, as scan: the function shadows its module
from .scan import scan  # eager: the function must shadow the module of the same name

from ._version import __version__

# Everything else loads on first use: `import probekit` and `probekit --help` stay free of
# torch, transformers, sklearn and plotly (seconds of start-up; docs/benchmarks.md).
_LAZY = {
    "Model": ("probekit.models.adapter", "Model"),
    "load": ("probekit.models.loading", "load"),
    "wrap": ("probekit.models.loading", "wrap"),
    "collect": ("probekit.hooks.collect", "collect"),
    "store_layout": ("probekit.hooks.plan", "store_layout"),
    "ActivationStore": ("probekit.hooks.store", "ActivationStore"),
    "Recorder": ("probekit.hooks.recorder", "Recorder"),
    "ScanReport": ("probekit.report", "ScanReport"),
    "compare": ("probekit.report", "compare"),
    "Lens": ("probekit.readout.lens", "Lens"),
    "LogitLens": ("probekit.readout.lens", "LogitLens"),
    "TunedLens": ("probekit.readout.lens", "TunedLens"),
    "probe_layers": ("probekit.readout.probes", "probe_layers"),
    "LinearProbe": ("probekit.readout.probes", "LinearProbe"),
    "mutual_information": ("probekit.readout.layers", "mutual_information"),
    "leakage": ("probekit.readout.leakage", "leakage"),
    "Direction": ("probekit.steering", "Direction"),
    "ablate": ("probekit.steering", "ablate"),
    "steer": ("probekit.steering", "steer"),
    "orthogonalize": ("probekit.steering", "orthogonalize"),
}
if TYPE_CHECKING:  # what _LAZY resolves, spelled out for type checkers and the API docs
    from .hooks.collect import collect
    from .hooks.plan import store_layout
    from .hooks.recorder import Recorder
    from .hooks.store import ActivationStore
    from .models.adapter import Model
    from .models.loading import load, wrap
    from .readout.layers import mutual_information
    from .readout.leakage import leakage
    from .readout.lens import Lens, LogitLens, TunedLens
    from .readout.probes import LinearProbe, probe_layers
    from .report import ScanReport, compare
    from .steering import Direction, ablate, orthogonalize, steer

# subpackages reachable as attributes (`probekit.tiny.build(...)`) without importing them up front
_SUBMODULES = {"tiny", "models", "hooks", "readout", "steering", "data", "experiments", "report", "studies", "cli"}

__all__ = ["errors", "tiny", "scan", "membership", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"probekit.{name}")
    raise AttributeError(f"module 'probekit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
