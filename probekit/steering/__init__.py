"""Steering: directions, interventions on the running model or its weights, and their evaluation.

``Direction`` (difference of means, probe weights, PCA of paired differences, LEACE) ->
``ablate`` / ``steer`` (context managers of hooks) or ``orthogonalize`` (a weight edit with an
undo handle) -> ``evaluate`` / ``sweep`` (suppression next to cost) -> ``tradeoff_figure``.
"""

from .directions import Direction
from .evaluation import EvalReport, evaluate, sweep, tradeoff_figure
from .interventions import ablate, orthogonalize, steer

__all__ = ["Direction", "ablate", "steer", "orthogonalize", "evaluate", "sweep", "tradeoff_figure", "EvalReport"]
