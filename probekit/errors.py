"""Exceptions raised by probekit.

Every error says what was wrong and how to fix it, and is raised before any heavy
work (a forward pass, a file write) starts. All derive from :class:`ProbekitError`, so
``except probekit.errors.ProbekitError`` catches everything probekit raises on purpose.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

__all__ = [
    "ProbekitError",
    "InputError",
    "ImageError",
    "LabelError",
    "UnknownPointError",
    "PositionError",
    "UnsupportedModelError",
    "StoreError",
    "BackendError",
    "ProbekitWarning",
    "plain",
    "check_bool",
    "check_int",
    "check_number",
]


class ProbekitError(Exception):
    """Base class: a problem with what probekit was asked to do.

    ``fix`` holds the hint on how to fix it; it is appended to the message.
    """

    def __init__(self, message: str, fix: str | None = None):
        self.problem = message
        self.fix = fix
        super().__init__(message if not fix else f"{message}\n  How to fix: {fix}")


class InputError(ProbekitError, ValueError):
    """An argument has the wrong type, value or length."""


class ImageError(InputError):
    """An image cannot be read or is of a type probekit cannot use."""


class LabelError(InputError):
    """Labels are unusable: wrong length, a single class, NaN, ..."""


class UnknownPointError(ProbekitError, KeyError):
    """A hook-point name or pattern that the model does not have."""

    def __str__(self) -> str:  # KeyError would repr() the message; keep it readable
        return Exception.__str__(self)


class PositionError(InputError):
    """A position selector that cannot be applied to this batch."""


class UnsupportedModelError(ProbekitError, TypeError):
    """A model whose layers probekit cannot find."""


class StoreError(ProbekitError, OSError):
    """An activation store on disk is missing, corrupt, foreign or cannot be written."""


class BackendError(ProbekitError, RuntimeError):
    """A recording backend is unavailable for this model."""


class ProbekitWarning(UserWarning):
    """Something probekit went on despite (e.g. label rows skipped); the message names what and how many."""


def plain(value: Any) -> Any:
    """``value`` as plain Python for a message: numpy/torch scalars and arrays (also inside lists, tuples,
    sets and dicts) become Python values, so a message shows ``'same'``, not ``np.str_('same')``.

    >>> import numpy as np
    >>> f"{plain(np.str_('same'))!r}, {plain([np.int64(1), 2.5])} and {plain(np.array([1, 2]))}"
    "'same', [1, 2.5] and [1, 2]"
    """
    if type(value).__module__.split(".")[0] in ("numpy", "torch") and callable(getattr(value, "tolist", None)):
        return value.tolist()
    if type(value) in (list, tuple, set, frozenset):
        return type(value)(plain(v) for v in value)
    if type(value) is dict:
        return {plain(k): plain(v) for k, v in value.items()}
    return value


def check_bool(value: Any, name: str, none: bool = False) -> None:
    """Raise InputError unless ``value`` is True or False (or None, when ``none``).

    A flag given as a string (``chat="no"``) or a number would otherwise be read by truthiness:
    ``"no"`` is true.

    >>> check_bool(True, "progress"); check_bool(None, "chat", none=True)
    >>> check_bool("no", "chat", none=True)
    Traceback (most recent call last):
    ...
    probekit.errors.InputError: chat must be True, False or None, got 'no' (str)
      How to fix: pass chat=True or chat=False (None: the default)
    """
    import numpy as np

    if value is None and none:
        return
    if isinstance(value, (bool, np.bool_)):
        return
    allowed = "True, False or None" if none else "True or False"
    raise InputError(f"{name} must be {allowed}, got {plain(value)!r} ({type(value).__name__})",
                     fix=f"pass {name}=True or {name}=False" + (" (None: the default)" if none else ""))


def _is_bool(value: Any) -> bool:
    # numpy's bool is not a subclass of bool, and a flag where a count belongs is a mistake either way
    return isinstance(value, bool) or type(value).__name__ in ("bool", "bool_")


def _got(value: Any, right_type: bool) -> str:
    # the type only when it is the problem: "got 2.0 (float)", but "got 0" for an int out of range
    return f"got {plain(value)!r}" + ("" if right_type else f" ({type(value).__name__})")


def _fix(name: str, example: Any, fix: str | None) -> str:
    return fix if fix is not None else f"e.g. {name}={example}"


def check_int(value: Any, name: str, *, low: int | None = None, high: int | None = None, example: Any = None,
              fix: str | None = None, none: bool = False) -> int | None:
    """``value`` as an ``int``; raise InputError unless it is an integer in ``[low, high]`` (a bound of None:
    none), or None when ``none``.

    A bool is refused (``True`` would count as 1) and so is a float, even ``2.0``: a count given as ``2.5``
    or ``"3"`` is a mistake to report, not to round. numpy integers are accepted (and returned as ``int``).
    The message names ``name`` and the value; ``fix`` (default ``"e.g. name=example"``) says what to pass.

    >>> check_int(3, "batch_size", low=1), check_int(None, "logits_topk", low=1, none=True)
    (3, None)
    >>> check_int(True, "n", low=1, example=200)
    Traceback (most recent call last):
    ...
    probekit.errors.InputError: n must be a positive int, got True (bool)
      How to fix: e.g. n=200
    """
    if value is None and none:
        return None
    ok_type = isinstance(value, Integral) and not _is_bool(value)
    if ok_type and (low is None or value >= low) and (high is None or value <= high):
        return int(value)
    if low is not None and high is not None:
        what = f"an int in [{low}, {high}]"
    elif low is not None:
        what = {1: "a positive int", 0: "a non-negative int"}.get(low, f"an int >= {low}")
    else:
        what = "an int" if high is None else f"an int <= {high}"
    if example is None:
        example = low if low is not None else high if high is not None else 0
    raise InputError(f"{name} must be {what}{' or None' if none else ''}, {_got(value, ok_type)}",
                     fix=_fix(name, example, fix))


def check_number(value: Any, name: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, example: Any = None, fix: str | None = None,
                 none: bool = False) -> float | None:
    """``value`` as a ``float``; raise InputError unless it is a finite real number between ``low`` and ``high``
    (inclusive; ``low_open`` / ``high_open`` exclude the bound; a bound of None: none), or None when ``none``.

    A bool, a string, NaN and infinity are refused: ``alpha="2"`` or ``alpha=nan`` would otherwise fail
    deep inside a forward pass, or not at all. ints and numpy numbers are accepted.

    >>> check_number(1, "k", low=0, high=1, low_open=True), check_number(0.0, "l1", low=0)
    (1.0, 0.0)
    >>> check_number(float("nan"), "split", low=0, high=1, low_open=True, high_open=True)
    Traceback (most recent call last):
    ...
    probekit.errors.InputError: split must be a finite number in (0, 1), got nan
      How to fix: e.g. split=0.5
    """
    if value is None and none:
        return None
    ok_type = isinstance(value, Real) and not _is_bool(value)
    try:
        x = float(value) if ok_type else math.nan
    except OverflowError:  # an int too large for a float is no usable number here either
        x = math.nan
    if math.isfinite(x) and (low is None or (x > low if low_open else x >= low)) and \
            (high is None or (x < high if high_open else x <= high)):
        return x
    lo, hi = "(" if low_open else "[", ")" if high_open else "]"
    if low is not None and high is not None:
        what = f"a finite number in {lo}{low:g}, {high:g}{hi}"
    elif low == 0:
        what = "a positive finite number" if low_open else "a non-negative finite number"
    elif low is not None:
        what = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        what = "a finite number" if high is None else f"a finite number {'<' if high_open else '<='} {high:g}"
    if example is None:
        example = ((low + high) / 2 if low is not None and high is not None else
                   low + low_open if low is not None else high - high_open if high is not None else 1.0)
    raise InputError(f"{name} must be {what}{' or None' if none else ''}, {_got(value, ok_type)}",
                     fix=_fix(name, example, fix))
