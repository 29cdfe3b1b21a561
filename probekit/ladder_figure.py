"""Old home of the leakage-ladder figure; it lives in :mod:`probekit.report.figures.ladder` now."""

from .report.figures.ladder import k_label, ladder_figure

__all__ = ["ladder_figure", "k_label"]
