"""Steering: directions, interventions on the running model or its weights, and their evaluation.

``Direction`` (a value: difference of means, probe weights, PCA of paired differences, LEACE;
fitted in :mod:`~probekit.steering.fit`, or layer by layer with the model running by
:func:`leace_sequential`) -> ``ablate`` / ``steer`` (context managers of hooks) or
``orthogonalize`` (a weight edit with an undo handle); SAE latents (:mod:`probekit.sae`) ->
``sae_steer`` / ``sae_clamp`` (the same context manager) -> ``evaluate`` / ``sweep`` (suppression
next to cost; their figures: :mod:`probekit.report.figures`, e.g. ``tradeoff_figure``).

Names load on first use, so ``import probekit.steering.directions`` (a value and its fitters)
does not import the model, hook or evaluation modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "Direction": "directions",
    "leace_sequential": "sequential",
    "ablate": "interventions",
    "steer": "interventions",
    "orthogonalize": "interventions",
    "evaluate": "evaluation",
    "sweep": "evaluation",
    "EvalReport": "evaluation",
    "sae_steer": "sae",
    "sae_clamp": "sae",
    "sae_splice": "sae",
    "splice_quality": "sae",
}
if TYPE_CHECKING:  # what _LAZY resolves, spelled out for type checkers and the API docs
    from .directions import Direction
    from .evaluation import EvalReport, evaluate, sweep
    from .interventions import ablate, orthogonalize, steer
    from .sae import sae_clamp, sae_splice, sae_steer, splice_quality
    from .sequential import leace_sequential

__all__ = ["Direction", "leace_sequential", "ablate", "steer", "orthogonalize", "evaluate", "sweep",
           "EvalReport", "sae_steer", "sae_clamp", "sae_splice", "splice_quality"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        where = _LAZY[name]
        mod = importlib.import_module(where, __name__) if where.startswith(".") else \
            importlib.import_module(f"{__name__}.{where}")
        value = getattr(mod, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(__all__) | {k for k in globals() if not k.startswith("_")})
