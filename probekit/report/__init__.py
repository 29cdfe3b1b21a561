"""What a scan found, as tables, figures, words and one self-contained HTML page.

:class:`ScanReport` is the result of :func:`probekit.scan`; :func:`compare` pairs two of
them (a base model and its fine-tuned version) into a :class:`Comparison`. The modules, in
the order they build on each other:

- :mod:`.text`: how numbers, CIs, hook points and tokens are written
- :mod:`.order`: where a hook point sits in the forward pass (and on a figure's x axis)
- :mod:`.tables`: the normalised leakage table, two tables paired, the best row
- :mod:`.verdicts`: the verdict sentences (the statistics are :mod:`probekit.readout.significance`)
- :mod:`.figures`: plotly figures of each table
- :mod:`.serialise`: JSON and atomic file writes
- :mod:`.html`, :mod:`.pages`: the page template and its blocks; the scan and comparison pages
- :mod:`.scan_report`, :mod:`.comparison`: the two report objects

Example:
    >>> import pandas as pd
    >>> table = pd.DataFrame({"point": ["lm.0.resid", "lm.1.resid"], "position": "last",
    ...     "accuracy": [0.52, 0.93], "accuracy_lo": [0.47, 0.90], "accuracy_hi": [0.57, 0.95],
    ...     "chance": 0.5})
    >>> ScanReport(table, settings={"model": "tiny-llava"}).summary().splitlines()[0]
    'Leakage detected at 1 of 2 points (first at lm.1.resid @ last)'
"""

import pandas as pd

from .comparison import Comparison, compare
from .pages import leakage_rows
from .scan_report import FIGURE_KINDS, ScanReport  # noqa: F401  (FIGURE_KINDS: a module attribute of report.py)
from .tables import normalise
from .verdicts import mi_headline, verdict

__all__ = ["ScanReport", "Comparison", "compare", "verdict", "mi_headline"]


def _leakage_rows(table: pd.DataFrame) -> tuple[list[dict], list[tuple[str, str]], list[str]]:
    """:func:`probekit.report.pages.leakage_rows` of any leakage table (the name report.py had)."""
    return leakage_rows(normalise(table))
