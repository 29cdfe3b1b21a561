"""Plotly figures of a report's tables; each function takes a plain DataFrame and returns a Figure.

- :mod:`.leakage`: probe accuracy / MI per layer (:func:`leakage_curves`), point × position heatmap
- :mod:`.compare`: two models and their difference (:func:`compare_curves`)
- :mod:`.lens`: logit lens top-1 grid (:func:`lens_grid`), target ranks (:func:`target_curves`)
- :mod:`.ladder`: the leakage ladder (:func:`ladder_figure`)
- :mod:`.tradeoff`: steering cost against suppression (:func:`tradeoff_figure`)

:mod:`.frame` and :mod:`.traces` hold the axes, layout and traces they share.
"""

from .compare import compare_curves
from .ladder import k_label, ladder_figure
from .leakage import leakage_curves, leakage_heatmap
from .lens import lens_grid, target_curves
from .tradeoff import tradeoff_figure

__all__ = ["leakage_curves", "leakage_heatmap", "compare_curves", "lens_grid", "target_curves", "ladder_figure",
           "k_label", "tradeoff_figure"]
