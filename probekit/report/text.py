"""How a report writes numbers, intervals, hook points, positions and tokens.

One place for the wording shared by the tables, the figures' hover text, the summaries and
the HTML page, so that ``0.93 [0.90, 0.95]`` reads the same everywhere.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

__all__ = ["NO_POSITION", "LABELS", "SHORT", "md_table", "ci_columns", "position_name", "where", "fmt", "fmt_ci", "ci_text",
           "fmt_p", "token_text", "role_names"]

NO_POSITION = "—"  # shown for rows without a position (activations given as [n, d])
LABELS = {
    "accuracy": "held-out probe accuracy (fraction correct)",
    "mi_bits": "mutual information, lower bound (bits)",
    "selectivity": "selectivity (accuracy − control accuracy)",
    "control_accuracy": "control-task accuracy (fraction)",
    "log_loss": "held-out cross-entropy (nats)",
    "prob": "probability",
}
SHORT = {"accuracy": "accuracy", "mi_bits": "MI (bits)"}


def ci_columns(metric: str, columns: Iterable[str] | None = None) -> tuple[str, str] | None:
    """Names of the 95% CI columns of ``metric`` (``mi_bits`` -> ``mi_lo``/``mi_hi``).

    Returns None when ``columns`` is given and lacks them.

    >>> ci_columns("mi_bits"), ci_columns("accuracy")
    (('mi_lo', 'mi_hi'), ('accuracy_lo', 'accuracy_hi'))
    """
    stem = "mi" if metric == "mi_bits" else metric
    lo, hi = f"{stem}_lo", f"{stem}_hi"
    if columns is not None and not {lo, hi} <= set(columns):
        return None
    return lo, hi


def position_name(p: Any) -> str:
    """A position as a table shows it: its name, or :data:`NO_POSITION` when it has none."""
    return NO_POSITION if p is None or (not isinstance(p, str) and bool(pd.isna(p))) else str(p)


def where(point: Any, position: Any) -> str:
    """``"lm.3.resid @ last"``; just the point when it has no position.

    >>> where("lm.3.resid", "last"), where("projector", None)
    ('lm.3.resid @ last', 'projector')
    """
    pos = position_name(position)
    return str(point) if pos == NO_POSITION else f"{point} @ {pos}"


def fmt(v: Any, digits: int = 2) -> str:
    """A number with ``digits`` decimals, ``–`` when missing.

    >>> fmt(0.934), fmt(-0.001), fmt(None)
    ('0.93', '0.00', '–')
    """
    try:
        if v is None or not np.isfinite(float(v)):
            return "–"
        return f"{round(float(v), digits) + 0.0:.{digits}f}"  # + 0.0: no "-0.00"
    except (TypeError, ValueError):
        return str(v)


def fmt_ci(v: Any, lo: Any, hi: Any, digits: int = 2) -> str:
    """``0.93 [0.90, 0.95]``: the one "value [lo, hi]" of every table, summary and results page.

    ``–`` when the value is missing (None, NaN, inf); the bracket is left out when either end of
    the CI is; a number that rounds to zero prints ``0.00``, never ``-0.00``.

    >>> fmt_ci(0.934, 0.9, 0.951), fmt_ci(0.5, float("nan"), None), fmt_ci(None, 0.1, 0.2)
    ('0.93 [0.90, 0.95]', '0.50', '–')
    >>> fmt_ci(-0.001, -0.0042, 0.0123, 3)
    '-0.001 [-0.004, 0.012]'
    >>> fmt_ci(-0.001, -0.004, 0.2)
    '0.00 [0.00, 0.20]'
    """
    s = fmt(v, digits)
    if s == "–" or fmt(lo) == "–" or fmt(hi) == "–":
        return s
    return f"{s} [{fmt(lo, digits)}, {fmt(hi, digits)}]"


def ci_text(rec: dict, metric: str, digits: int = 2) -> str:
    """``metric`` of one table row with its 95% CI.

    >>> ci_text({"mi_bits": 0.2, "mi_lo": 0.1, "mi_hi": 0.3}, "mi_bits")
    '0.20 [0.10, 0.30]'
    """
    lo, hi = ci_columns(metric)
    return fmt_ci(rec.get(metric), rec.get(lo), rec.get(hi), digits)


def fmt_p(v: Any) -> str:
    """A p-value for a table cell: 3 significant digits, ``<1e-6`` below that.

    >>> fmt_p(0.01234), fmt_p(1e-9), fmt_p(None)
    ('0.0123', '<1e-6', '')
    """
    if v is None or not np.isfinite(float(v)):
        return ""
    return "<1e-6" if float(v) < 1e-6 else f"{float(v):.3g}"


def token_text(tok: Any, width: int = 14) -> str:
    """A token as readable cell text: visible spaces and newlines, HTML escaped, truncated.

    >>> token_text(" cat"), token_text("<image>")
    ('␣cat', '&lt;image&gt;')
    """
    s = str(tok)
    s = s.replace("\n", "\\n").replace("\t", "\\t")
    if s.strip() == "":
        s = "␣" * len(s) if s else "∅"
    elif s.startswith(" "):
        s = "␣" + s[1:]
    if len(s) > width:
        s = s[: width - 1] + "…"
    # plotly renders a subset of HTML in text; tokens such as "<image>" must stay literal
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def role_names(names: Sequence[str]) -> tuple[str, str]:
    """Labels that say which model is the base and which the tuned one, e.g. ``"A (base)"``.

    Example:
        >>> role_names(("base", "tuned")), role_names(("7b", "7b-ft"))
        (('base', 'tuned'), ('7b (base)', '7b-ft (tuned)'))
    """
    return tuple(n if n == role else f"{n} ({role})" for n, role in zip(names, ("base", "tuned")))  # type: ignore[return-value]


def md_table(df: Any, floats: str | None = ".3g", empty: str | None = None) -> str:
    """A DataFrame as a markdown table (the studies' write-ups): floats formatted with ``floats`` (None:
    ``str``), everything else with ``str``; ``empty``: the text for a table without rows (default: the header).

    >>> import pandas as pd
    >>> print(md_table(pd.DataFrame({"a": [0.12345], "b": ["x"]})), end="")
    | a | b |
    |---|---|
    | 0.123 | x |
    """
    if empty is not None and (df is None or len(df) == 0):
        return empty
    cell = (lambda v: format(v, floats) if isinstance(v, float) else str(v)) if floats else str
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"
