"""Labels of one type: ``[1, "1"]`` is refused, never silently turned into two strings or one class.

``numpy.asarray([1, "1"])`` makes both ``"1"`` (one class where the user meant two, or the
other way round); ``[True, 1]`` makes both ``1``. Every place that turns labels into classes
(probes, leakage, directions, steering evaluation) calls :func:`check_label_types` first.

Example:
    >>> check_label_types(["a", "b"]); check_label_types([0, 1.0]); check_label_types(np.array([1, 2]))
    >>> check_label_types([1, "1"])
    Traceback (most recent call last):
    ...
    probekit.errors.LabelError: labels mix types: label 0 is 1 (a number) and label 1 is '1' (a string)
      How to fix: use labels of one type: all strings, all numbers or all booleans
"""

from __future__ import annotations

from numbers import Number
from typing import Any

import numpy as np

from ..errors import LabelError, plain

__all__ = ["check_label_types"]

_NAMES = {"bool": "a boolean", "number": "a number", "str": "a string"}


def _kind(v: Any) -> str | None:
    if v is None:
        return None  # reported on its own ("labels contain None")
    if isinstance(v, (bool, np.bool_)):
        return "bool"
    if isinstance(v, (str, np.str_, bytes)):
        return "str"
    if isinstance(v, Number):
        return "number"
    return type(v).__name__


def check_label_types(labels: Any, what: str = "labels") -> None:
    """Raise LabelError when ``labels`` mix kinds (strings, numbers, booleans, other objects).

    Typed arrays and tensors hold one kind by construction and pass at once; lists, tuples and
    object arrays or Series are read value by value.
    """
    if labels is None or isinstance(labels, (str, bytes)) or hasattr(labels, "detach"):  # torch: one dtype
        return
    dtype = getattr(labels, "dtype", None)
    if dtype is not None and getattr(dtype, "kind", "O") != "O":
        return
    try:
        values = labels.tolist() if hasattr(labels, "tolist") else list(labels)
    except TypeError:
        return  # not a sequence: the caller reports its shape
    first: dict[str, int] = {}
    for i, v in enumerate(values):
        k = _kind(v)
        if k is None or k in first:
            continue
        first[k] = i
        if len(first) == 2:
            (ka, ia), (kb, ib) = first.items()
            raise LabelError(f"{what} mix types: label {ia} is {plain(values[ia])!r} ({_NAMES.get(ka, ka)}) and "
                             f"label {ib} is {plain(values[ib])!r} ({_NAMES.get(kb, kb)})",
                             fix="use labels of one type: all strings, all numbers or all booleans")
