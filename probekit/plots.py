"""Old home of the report figures; everything here now lives in :mod:`probekit.report`.

Kept so that ``from probekit import plots`` and ``plots.leakage_curves(...)`` keep working:
figures come from :mod:`probekit.report.figures`, tables from :mod:`probekit.report.tables`,
formatting from :mod:`probekit.report.text`. New code imports those.
"""

from .report.figures import compare_curves, leakage_curves, leakage_heatmap, lens_grid, target_curves
from .report.figures.frame import GREY, PALETTE, TEMPLATE  # noqa: F401
from .report.figures.frame import Axes as _Axes  # noqa: F401
from .report.order import place as _place  # noqa: F401
from .report.order import point_order
from .report.tables import KEYS, paired_table  # noqa: F401
from .report.tables import check_metric as _check_metric  # noqa: F401
from .report.tables import normalise as _normalise  # noqa: F401
from .report.text import LABELS as _LABELS  # noqa: F401
from .report.text import NO_POSITION, ci_columns, fmt_ci, role_names, where  # noqa: F401
from .report.text import SHORT as _SHORT  # noqa: F401
from .report.text import fmt as _fmt  # noqa: F401
from .report.text import position_name as _position_name  # noqa: F401
from .report.text import token_text as _token_text  # noqa: F401

__all__ = [
    "leakage_curves",
    "leakage_heatmap",
    "lens_grid",
    "target_curves",
    "compare_curves",
    "paired_table",
    "ci_columns",
    "point_order",
    "fmt_ci",
    "where",
]
