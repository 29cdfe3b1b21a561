"""Mutations of valid files for the property tests: bytes (truncate, flip, insert, delete) and JSON
(change a value's type, drop a key or item, duplicate a key with the same or another value, reorder
or re-indent, which changes nothing). (tests/ is on sys.path under pytest.)

``json_mutation()`` and ``byte_mutation()`` are hypothesis strategies of plain descriptions; applying
one (``apply_json`` / ``apply_bytes``) gives the mutated text or bytes, and ``same`` says whether the
mutation kept the data (a no-op: the loader must return identical data, not an error).
"""

from __future__ import annotations

import json
import struct
from typing import Any

from hypothesis import strategies as st

JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(-1e3, 1e3, allow_nan=False),
                        st.text(max_size=6), st.lists(st.integers(0, 3), max_size=3),
                        st.dictionaries(st.text(max_size=3), st.integers(0, 3), max_size=2))


def byte_mutation() -> st.SearchStrategy:
    return st.one_of(
        st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
        st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 7)),
                                            min_size=1, max_size=3)),
        st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=4)),
        st.tuples(st.just("delete"), st.floats(0, 1, exclude_max=True), st.integers(1, 8)),
    )


def apply_bytes(data: bytes, m: tuple) -> bytes:
    n = len(data)
    if m[0] == "truncate":
        return data[: int(m[1] * n)]
    if m[0] == "flip":
        out = bytearray(data)
        for where, bit in m[1]:
            out[int(where * n)] ^= 1 << bit
        return bytes(out)
    if m[0] == "insert":
        i = int(m[1] * n)
        return data[:i] + m[2] + data[i:]
    i = int(m[1] * n)
    return data[:i] + data[i + m[2]:]


def json_mutation() -> st.SearchStrategy:
    """``(op, path pick, value)``: ``path pick`` is a float choosing one node of the document."""
    pick = st.floats(0, 1, exclude_max=True)
    return st.one_of(
        st.tuples(st.just("type"), pick, JSON_VALUES),
        st.tuples(st.just("drop"), pick, st.none()),
        st.tuples(st.just("duplicate"), pick, st.one_of(st.just("same"), JSON_VALUES)),
        st.tuples(st.just("noop"), pick, st.sampled_from(["reorder", "indent", "spaces"])),
    )


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:8]):  # a few items of long lists are enough
            out += _paths(v, prefix + (i,))
    return out


def _get(obj: Any, path: tuple) -> Any:
    for k in path:
        obj = obj[k]
    return obj


class _Pairs(list):
    """A JSON object written as these (key, value) pairs, keys possibly repeated."""


def _dumps(obj: Any, indent: int | None = None, sort: bool = False) -> str:
    if isinstance(obj, _Pairs):
        items = ", ".join(f"{json.dumps(k)}: {_dumps(v, indent, sort)}" for k, v in obj)
        return "{" + items + "}"
    if isinstance(obj, dict):
        keys = sorted(obj, reverse=True) if sort else list(obj)
        return "{" + ", ".join(f"{json.dumps(k)}: {_dumps(obj[k], indent, sort)}" for k in keys) + "}"
    if isinstance(obj, list):
        return "[" + ", ".join(_dumps(v, indent, sort) for v in obj) + "]"
    return json.dumps(obj)


def _type_name(v: Any) -> str:
    return "number" if isinstance(v, (int, float)) and not isinstance(v, bool) else type(v).__name__


def apply_json(text: str, m: tuple) -> tuple[str, bool]:
    """The mutated JSON text and whether the data stayed the same."""
    obj = json.loads(text)
    op, where, value = m
    paths = _paths(obj)
    path = paths[int(where * len(paths))]
    if op == "noop":
        if value == "reorder":
            return _dumps(obj, sort=True), True
        if value == "indent":
            return json.dumps(obj, indent=3), True
        return json.dumps(obj, separators=(" ,  ", " :  ")), True
    if op == "type":
        old = _get(obj, path)
        if _type_name(old) == _type_name(value):
            value = [value] if not isinstance(value, list) else {"x": value}
        if not path:
            return json.dumps(value), False
        _get(obj, path[:-1])[path[-1]] = value
        return json.dumps(obj), False
    parents = [p for p in paths if p and isinstance(_get(obj, p[:-1]), dict)] if op == "duplicate" else \
        [p for p in paths if p]
    if not parents:
        return json.dumps(obj, indent=1), True  # nothing to drop or duplicate: a no-op
    path = parents[int(where * len(parents))]
    parent, key = _get(obj, path[:-1]), path[-1]
    if op == "drop":
        del parent[key]
        return json.dumps(obj), False
    pairs = _Pairs(parent.items())
    again = parent[key] if value == "same" else value
    pairs.append((key, again))
    if len(path) == 1:
        return _dumps(pairs), False
    _get(obj, path[:-2])[path[-2]] = pairs
    return _dumps(obj), False


def safetensors_parts(data: bytes) -> tuple[str, bytes]:
    """``(header JSON text, the tensor bytes after it)`` of a safetensors file."""
    (n,) = struct.unpack("<Q", data[:8])
    return data[8:8 + n].decode(), data[8 + n:]


def safetensors_join(header: str, rest: bytes) -> bytes:
    raw = header.encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + rest
