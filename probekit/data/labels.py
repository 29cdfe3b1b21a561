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

__all__ = ["check_label_types", "encode_labels"]

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


def encode_labels(labels: Any, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Codes 0..K-1 and the sorted class values; strings, ints and bools all work (not mixed)."""
    check_label_types(labels)
    if hasattr(labels, "detach") and hasattr(labels, "cpu"):  # a torch tensor (torch is not imported here)
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise LabelError(
            f"labels must be one-dimensional, got shape {arr.shape}",
            fix="pass one label per sample, e.g. a list or a 1-D array",
        )
    if n is not None and len(arr) != n:
        raise LabelError(
            f"got {len(arr)} labels for {n} samples",
            fix="pass exactly one label per sample, in the order the activations were collected",
        )
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise LabelError(
            f"labels contain NaN at sample(s) {np.flatnonzero(np.isnan(arr))[:5].tolist()}",
            fix="drop those samples or give them a label",
        )
    if arr.dtype == object and any(v is None for v in arr):
        raise LabelError("labels contain None", fix="drop those samples or give them a label")
    try:
        classes, codes = np.unique(arr, return_inverse=True)
    except TypeError as exc:  # mixed types such as 1 and "a"
        raise LabelError(
            f"labels mix types that cannot be compared ({exc})",
            fix="use labels of one type: all strings or all integers",
        ) from None
    if len(classes) < 2:
        raise LabelError(
            f"labels have a single class ({plain(classes[0])!r}); a probe needs at least two",
            fix="include samples of at least two classes",
        )
    return codes.astype(np.int64), classes
