"""Down to which layer a detected leak is formed: the patching rows tested in a fixed sequence, from the output down.

The verdict (:func:`~probekit.readout.significance.add_verdicts`) corrects over every row of a membership table
(lens, probe, patching and output rows at every layer: 33 rows for a 3-block model), which is what "is anything
detected?" needs. "Where is it formed?" is a narrower question with an order known before the data: patching the
base model's residual into the fine-tune at ``lm.k`` (and the reverse) moves the member / non-member gap by the part
formed at or below block ``k``, so the effect is expected to shrink going down (the order sets only the power; the
level holds in any order fixed before the data). A fixed-sequence test (Maurer, Hothorn
and Lehmacher 1995; Westfall and Krishen 2001) uses that order: once the verdict has detected membership, the
layers are tested from the deepest below the last down to ``lm.0``, each at the full level, stopping at the first
that fails. It holds the family-wise level over its own claims in the strong sense (a false claim needs the first
true null of the sequence to be rejected, which happens with probability at most ``alpha``) and pays no
multiplicity cost for depth. A layer's two patching rows (both directions) are one hypothesis, its p the smaller
of theirs times two (Bonferroni).

These claims are a family of their own, beside the verdict's rows: where both are read together, each holds
``alpha`` and the two together at most ``2 * alpha``.

Example:
    >>> import pandas as pd
    >>> t = pd.DataFrame({"point": ["logits", "lm.1.resid", "lm.1.resid", "lm.0.resid", "lm.0.resid"],
    ...                   "source": ["output minus base", *["patched base-into-tuned", "patched tuned-into-base"] * 2],
    ...                   "p_value": [0.001, 0.01, 0.03, 0.2, 0.02], "detected": [True, False, False, False, False]})
    >>> localise(t).localised.tolist()
    [True, True]
    >>> lowest(localise(t))
    'lm.0.resid'
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from ..errors import InputError
from ..hooks.points import Point
from .significance import ALPHA

__all__ = ["PATCHED", "localise", "lowest"]

PATCHED = ("patched base-into-tuned", "patched tuned-into-base")
_NEEDED = ("point", "source", "p_value", "detected")


def _depth(point: str) -> int:
    layer = Point.parse(point).layer
    return -1 if layer is None else layer


def localise(table: pd.DataFrame, *, last: str | None = None, alpha: float = ALPHA,
             sources: Sequence[str] = PATCHED) -> pd.DataFrame:
    """The fixed-sequence test of ``table``'s patching rows (``sources``), from the deepest layer down.

    Args:
        table: a membership table (``point, source, p_value, detected``; :func:`probekit.membership`).
        last: the model's last residual point (its patching rows stand for the output, which the verdict
            already speaks for): left out of the sequence. None keeps every patched point.
        alpha: the level of each test in the sequence (and of the sequence as a whole).
        sources: the rows that make up a layer's hypothesis (its p: the smallest times their number).

    Returns:
        one row per patched point in the order tested (deepest first): ``point, p, tested, localised``;
        nothing is tested when the verdict detected no row (the gate).
    """
    missing = [c for c in _NEEDED if c not in table.columns]
    if missing:
        raise InputError(f"localise needs a membership table with columns {list(_NEEDED)}; this one lacks {missing}",
                         fix="pass the table of probekit.membership(...) (its .table)")
    if not 0 < alpha < 1:
        raise InputError(f"alpha must lie in (0, 1), got {alpha}", fix="pass e.g. alpha=0.05")
    rows = table[table.source.isin(sources) & (table.point != last)]
    points = sorted(rows.point.unique(), key=_depth, reverse=True)
    out, open_ = [], bool(table.detected.astype(bool).any())
    for point in points:
        got = rows[rows.point == point].p_value.dropna()
        p = min(1.0, float(got.min()) * len(got)) if len(got) else 1.0
        hit = open_ and p <= alpha
        out.append({"point": point, "p": p, "tested": open_, "localised": hit})
        open_ = hit  # the first layer that fails closes the sequence
    return pd.DataFrame(out, columns=["point", "p", "tested", "localised"])


def lowest(loc: pd.DataFrame) -> str | None:
    """The lowest layer the sequence reached (the leak is formed at or below it, in part), or None."""
    hit = loc[loc.localised]
    return str(hit.point.iloc[-1]) if len(hit) else None
