"""Reading files back: strict JSON, safetensors without surprises, field and tensor checks, checksums."""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import xxhash

from ..errors import ProbekitError, StoreError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["read_bytes", "loads_json", "read_safetensors", "field", "check_tensor", "check_orthonormal", "canonical", "checksum",
           "check_checksum", "finite"]

_FATAL = (KeyboardInterrupt, SystemExit, GeneratorExit)


def _pairs(where: str, cls: type[ProbekitError], fix: str):
    def hook(pairs: list[tuple[str, Any]]) -> dict:
        out: dict = {}
        for k, v in pairs:
            if k in out:
                raise cls(f"{where}: key {k!r} appears twice", fix=fix)
            out[k] = v
        return out
    return hook


def loads_json(data: str | bytes, where: str, cls: type[ProbekitError] = StoreError,
               fix: str = "write the file again with probekit") -> Any:
    """Parse JSON strictly: invalid UTF-8 or JSON, a duplicate key, NaN or Infinity raise ``cls``."""
    def constant(name: str) -> Any:
        raise cls(f"{where}: {name} is not a JSON number", fix=fix)

    def number(text: str) -> float:
        x = float(text)
        if not math.isfinite(x):  # '1e999' parses to inf: refuse it like the literal Infinity
            raise cls(f"{where}: {text[:40]} is out of a float's range", fix=fix)
        return x

    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        return json.loads(text, object_pairs_hook=_pairs(where, cls, fix), parse_constant=constant,
                          parse_float=number)
    except ProbekitError:
        raise
    except (ValueError, TypeError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise cls(f"{where} is not valid JSON: {exc}", fix=fix) from None


def read_bytes(path: Path, cls: type[ProbekitError], fix: str, *, missing: str, unreadable: str) -> bytes:
    """The bytes of ``path``; a missing file raises ``cls(missing)``, any other OS error ``cls(unreadable: why)``."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise cls(missing, fix=fix) from None
    except OSError as exc:
        raise cls(f"{unreadable}: {exc.strerror or exc}", fix=fix) from None


def read_safetensors(path: str | os.PathLike, what: str, fix: str, cls: type[ProbekitError] = StoreError
                     ) -> tuple[dict[str, str], dict[str, "Tensor"]]:
    """``(metadata, tensors)`` of a safetensors file, read whole; anything unreadable raises ``cls``.

    The header is parsed here as strict JSON (so a duplicated key is an error, not the last one
    silently winning); the tensors by safetensors (which never unpickles).
    """
    from safetensors.torch import load as load_bytes

    p = Path(path)
    data = read_bytes(p, cls, fix, missing=f"no {what} at {p}", unreadable=f"cannot read {what} {p}")
    where = f"{what} {p}"
    if len(data) < 8:
        raise cls(f"{where} is not a safetensors file ({len(data)} bytes)", fix=fix)
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise cls(f"{where} is not a safetensors file or is truncated (its header claims {n} bytes, the file "
                  f"has {len(data) - 8})", fix=fix)
    header = loads_json(data[8:8 + n], f"the header of {where}", cls, fix)
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else None
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise cls(f"{where} has no valid safetensors header", fix=fix)
    try:
        tensors = load_bytes(data)
    except _FATAL:
        raise
    except BaseException as exc:  # SafetensorError, or a Rust panic (a BaseException) on a crafted header
        raise cls(f"{where} is damaged: {type(exc).__name__}: {exc}", fix=fix) from None
    return dict(meta), tensors


_KIND_NAMES = {int: "an integer", str: "a string", list: "a list", dict: "an object", bool: "true or false",
               float: "a number"}


_PLURALS = {int: "integers", str: "strings", list: "lists", dict: "objects", bool: "booleans", float: "numbers"}


def _is(value: Any, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False  # True is an int to Python, never to a file format
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return True
    return isinstance(value, kinds)


def field(obj: Mapping, key: str, kind: type | tuple[type, ...], where: str, fix: str, *,
          cls: type[ProbekitError] = StoreError, default: Any = ..., items: type | None = None) -> Any:
    """``obj[key]`` if it is of ``kind`` (a list whose items are ``items``), else ``cls`` naming the field.

    A missing key returns ``default`` when one is given, else raises.
    """
    if key not in obj:
        if default is not ...:
            return default
        raise cls(f"{where}: field {key!r} is missing", fix=fix)
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not _is(value, kind):
        want = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
        raise cls(f"{where}: field {key!r} is {type(value).__name__} {_short(value)}, not {want}", fix=fix)
    if items is not None and not all(_is(v, items) for v in value):
        bad = next(v for v in value if not _is(v, items))
        raise cls(f"{where}: field {key!r} holds {type(bad).__name__} {_short(bad)}, not only "
                  f"{_PLURALS.get(items, items.__name__ + ' values')}", fix=fix)
    return value


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


def check_tensor(t: "Tensor", name: str, where: str, fix: str, *, shape: tuple | None = None,
                 cls: type[ProbekitError] = StoreError) -> None:
    """``t`` is floating point, finite and (when given) of ``shape`` (``None`` entries match any size)."""
    import torch

    if not t.dtype.is_floating_point:
        raise cls(f"{where}: tensor {name!r} has dtype {str(t.dtype).replace('torch.', '')}, not a floating type",
                  fix=fix)
    if shape is not None and (t.ndim != len(shape) or any(w is not None and s != w for s, w in zip(t.shape, shape))):
        want = "[" + ", ".join("?" if w is None else str(w) for w in shape) + "]"
        raise cls(f"{where}: tensor {name!r} has shape {list(t.shape)}, expected {want}", fix=fix)
    if not bool(torch.isfinite(t).all()):
        raise cls(f"{where}: tensor {name!r} holds NaN or inf", fix=fix)


def check_orthonormal(q: "Tensor", name: str, where: str, fix: str, tol: float = 1e-4,
                      cls: type[ProbekitError] = StoreError) -> None:
    """The rows of ``q [k, d]`` are orthonormal to within ``tol`` (the file says they are)."""
    import torch

    g = q.double() @ q.double().T
    err = float((g - torch.eye(q.shape[0], dtype=torch.float64)).abs().max()) if q.numel() else 0.0
    if not err <= tol:
        norms = q.double().norm(dim=1)
        raise cls(f"{where}: tensor {name!r} is declared orthonormal but is not (row norms "
                  f"{float(norms.min()):.4g}..{float(norms.max()):.4g}, max |Q Q^T - I| = {err:.3g})", fix=fix)


# ----------------------------------------------------------------------------- integrity
def canonical(obj: Any) -> bytes:
    """One byte string per JSON value (sorted keys, no spaces), so equal data hash equally."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def checksum(obj: Any, tensors: Mapping[str, "Tensor"] | None = None) -> str:
    """xxh3-128 over ``canonical(obj)`` and every tensor's name, dtype, shape and bytes (by name)."""
    h = xxhash.xxh3_128()
    h.update(canonical(obj))
    for name in sorted(tensors or {}):
        t = tensors[name].detach().contiguous().cpu()  # type: ignore[index]
        h.update(canonical([name, str(t.dtype), list(t.shape)]))
        if t.numel():
            h.update(t.reshape(-1).view(__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()


def check_checksum(stored: Any, obj: Any, tensors: Mapping[str, "Tensor"] | None, where: str, fix: str,
                   cls: type[ProbekitError] = StoreError) -> None:
    """Refuse content whose checksum differs from the one written with it."""
    if not isinstance(stored, str):
        raise cls(f"{where}: field 'checksum' is {type(stored).__name__} {_short(stored)}, not a string", fix=fix)
    if checksum(obj, tensors) != stored:
        raise cls(f"{where}: the content does not match its checksum (the file changed after it was written)",
                  fix=fix)



def finite(x: Any) -> bool:
    """A real, finite JSON number."""
    return _is(x, float) and math.isfinite(x)
