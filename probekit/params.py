"""Declared parameter constraints: a function states what each argument must be, and one validator checks them
before its body runs (scikit-learn's ``_parameter_constraints`` / ``validate_params`` is the model).

A constraint is an :class:`Int`, a :class:`Number` or a :class:`Flag`; :func:`checked` attaches them to a
function. Each is checked by :func:`probekit.errors.check_int` / ``check_number`` / ``check_bool``, so the
message names the argument and its value and the fix gives an example, exactly as a hand-written check did;
an int or a number is passed on as the converted Python value (a numpy integer arrives as ``int``). The
declarations are readable on the function as ``fn.parameter_constraints`` (the docs and tests read them).

Example:
    >>> @checked(n_boot=Int(low=0, example=1000), alpha=Number(low=0, high=1, low_open=True), progress=Flag())
    ... def audit(x, n_boot=1000, alpha=0.05, progress=True):
    ...     return n_boot, alpha
    >>> import numpy as np
    >>> audit(None, n_boot=np.int64(200))
    (200, 0.05)
    >>> audit(None, alpha=0)
    Traceback (most recent call last):
    ...
    probekit.errors.InputError: alpha must be a finite number in (0, 1], got 0
      How to fix: e.g. alpha=0.5
    >>> sorted(audit.parameter_constraints)
    ['alpha', 'n_boot', 'progress']
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from .errors import check_bool, check_int, check_number

__all__ = ["Int", "Number", "Flag", "checked"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Int:
    """An integer in ``[low, high]`` (a bound of None: none); a bool or a float is refused; None when ``none``."""

    low: int | None = None
    high: int | None = None
    example: Any = None
    fix: str | None = None
    none: bool = False

    def check(self, value: Any, name: str) -> Any:
        return check_int(value, name, low=self.low, high=self.high, example=self.example, fix=self.fix, none=self.none)


@dataclass(frozen=True)
class Number:
    """A finite real between ``low`` and ``high`` (``*_open`` excludes the bound); None when ``none``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    example: Any = None
    fix: str | None = None
    none: bool = False

    def check(self, value: Any, name: str) -> Any:
        return check_number(value, name, low=self.low, high=self.high, low_open=self.low_open,
                            high_open=self.high_open, example=self.example, fix=self.fix, none=self.none)


@dataclass(frozen=True)
class Flag:
    """True or False (or None, when ``none``): a flag given as ``"no"`` would otherwise read as true."""

    none: bool = False

    def check(self, value: Any, name: str) -> Any:
        check_bool(value, name, none=self.none)
        return value


def checked(**constraints: Int | Number | Flag) -> Callable[[F], F]:
    """Declare ``fn``'s parameter constraints; every call checks them (in declaration order, defaults included)
    before the body runs and passes the checked values on. A name that is not a parameter of ``fn``, or a
    constraint that is not an :class:`Int` / :class:`Number` / :class:`Flag`, is a programming error raised when
    the function is defined."""

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn)
        unknown = [n for n in constraints if n not in sig.parameters]
        if unknown:
            raise TypeError(f"{fn.__qualname__} has no parameter {unknown[0]!r} to constrain")
        bad = [n for n, c in constraints.items() if not isinstance(c, (Int, Number, Flag))]
        if bad:
            raise TypeError(f"the constraint on {bad[0]!r} of {fn.__qualname__} is not an Int, Number or Flag")

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                bound = sig.bind(*args, **kwargs)
            except TypeError:  # a call that does not fit the signature fails as the function itself would
                return fn(*args, **kwargs)
            for name, rule in constraints.items():
                given = name in bound.arguments
                value = rule.check(bound.arguments[name] if given else sig.parameters[name].default, name)
                if given:
                    bound.arguments[name] = value
            return fn(*bound.args, **bound.kwargs)

        wrapper.parameter_constraints = dict(constraints)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
