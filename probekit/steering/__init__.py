"""Steering: directions, interventions on the running model or its weights, and their evaluation.

``Direction`` (difference of means, probe weights, PCA of paired differences, LEACE) ->
``ablate`` / ``steer`` (context managers of hooks) or ``orthogonalize`` (a weight edit with an
undo handle) -> ``evaluate`` / ``sweep`` (suppression next to cost) -> ``tradeoff_figure``.
"""

from typing import TYPE_CHECKING, Any

from .directions import Direction
from .evaluation import EvalReport, evaluate, sweep
from .interventions import ablate, orthogonalize, steer

if TYPE_CHECKING:  # for type checkers and the API docs; resolved on first use below
    from ..report.figures.tradeoff import tradeoff_figure

__all__ = ["Direction", "ablate", "steer", "orthogonalize", "evaluate", "sweep", "tradeoff_figure", "EvalReport"]


def __getattr__(name: str) -> Any:
    # tradeoff_figure lives in probekit.report; loading it on first use keeps plotly out of `import probekit.steering`
    if name == "tradeoff_figure":
        from ..report.figures.tradeoff import tradeoff_figure

        return tradeoff_figure
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
