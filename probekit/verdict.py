"""Old home of the verdict sentences; they live in :mod:`probekit.report.verdicts` now."""

from .report.verdicts import difference_verdict, mi_headline, tested_rows, verdict

__all__ = ["verdict", "difference_verdict", "mi_headline", "tested_rows"]
