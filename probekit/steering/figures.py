"""Old home of ``tradeoff_figure``; it lives in :mod:`probekit.report.figures.tradeoff` now.

The name resolves on first use, so importing :mod:`probekit.steering` does not import the
report layer (plotly, jinja2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..report.figures.tradeoff import tradeoff_figure

__all__ = ["tradeoff_figure"]


def __getattr__(name: str) -> Any:
    if name == "tradeoff_figure":
        from ..report.figures.tradeoff import tradeoff_figure

        return tradeoff_figure
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
