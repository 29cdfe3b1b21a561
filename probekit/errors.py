"""Exceptions raised by probekit.

Every error says what was wrong and how to fix it, and is raised before any heavy
work (a forward pass, a file write) starts. All derive from :class:`ProbekitError`, so
``except probekit.errors.ProbekitError`` catches everything probekit raises on purpose.
"""

from __future__ import annotations

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
