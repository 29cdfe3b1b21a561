"""The file format of a :class:`~probekit.steering.Direction`: one ``.safetensors`` file, checked on load.

Tensors ``{point}/basis`` ``[k, d]`` and, for LEACE, ``{point}/mean`` ``[d]``, ``{point}/left``
``[d, r]``, ``{point}/right`` ``[r, d]``. The safetensors metadata key ``"probekit"`` holds the
JSON header: ``format``, ``version`` (2), ``method``, ``d_model``, ``points``, ``erasers``,
``meta``, ``orthonormal`` (per point: whether its basis is orthonormal, checked on load) and
``checksum`` (:func:`probekit.files.checksum` of the header without it and of every tensor).

:func:`read` checks everything before a Direction is built: the schema of every field, that the
tensors are exactly the ones the header names, floating, finite, of shapes that agree with
``d_model`` and with each other, orthonormal where claimed, and the checksum. Version-1 files
(no checksum, no per-point claim) still load, with every other check and a warning.
"""

from __future__ import annotations

import json
import os
import warnings

import torch
from torch import Tensor

from ..errors import InputError, ProbekitWarning, StoreError
from ..files import (atomic_write, check_checksum, check_orthonormal, check_tensor, checksum, field, loads_json,
                     read_safetensors)
from .basis import Eraser

__all__ = ["FORMAT", "VERSION", "to_bytes", "read"]

FORMAT = "probekit.direction"
VERSION = 2  # 2: checksum and per-point orthonormality claims; 1 had neither
_FIX = "save it again with Direction.save (or fit the direction again)"
_TOL = 1e-6  # a basis is claimed orthonormal at save when max |Q Q^T - I| is below this; load allows 1e-4


def _is_orthonormal(q: Tensor) -> bool:
    g = q.double() @ q.double().T
    return bool((g - torch.eye(q.shape[0], dtype=torch.float64)).abs().max() <= _TOL)


def tensors_of(bases: dict[str, Tensor], erasers: dict[str, Eraser]) -> dict[str, Tensor]:
    out = {f"{p}/basis": b.contiguous() for p, b in bases.items()}
    for p, e in erasers.items():
        out.update({f"{p}/mean": e.mean.contiguous(), f"{p}/left": e.left.contiguous(),
                    f"{p}/right": e.right.contiguous()})
    return out


def to_bytes(bases: dict[str, Tensor], erasers: dict[str, Eraser], method: str, d_model: int, meta: dict) -> bytes:
    """The whole file as bytes (written by :func:`probekit.files.atomic_write`)."""
    from safetensors.torch import save

    tensors = tensors_of(bases, erasers)
    header = {"format": FORMAT, "version": VERSION, "method": method, "d_model": d_model,
              "points": list(bases), "erasers": list(erasers), "meta": meta,
              "orthonormal": {p: _is_orthonormal(b) for p, b in bases.items()}}
    try:
        header = json.loads(json.dumps(header, default=str, allow_nan=False))  # exactly what a reader parses
    except (TypeError, ValueError) as exc:
        raise InputError(f"direction metadata is not JSON-serialisable: {exc}", fix="keep meta to plain values") from exc
    header["checksum"] = checksum(header, tensors)
    return save(tensors, metadata={"probekit": json.dumps(header)})


def save(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, data, "direction file")


def read(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Eraser], str, dict]:
    """``(bases, erasers, method, meta)`` of a direction file, every field and tensor checked."""
    meta_strs, tensors = read_safetensors(path, "direction file", _FIX)
    where = f"direction file {os.fspath(path)}"
    text = meta_strs.get("probekit")
    header = loads_json(text, f"the header of {where}", fix=_FIX) if text is not None else None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise StoreError(f"{os.fspath(path)} is not a probekit direction file", fix="save it with Direction.save")
    version = field(header, "version", int, where, _FIX)
    if version > VERSION:
        raise StoreError(f"{where} has direction format version {version}, this probekit reads up to {VERSION}",
                         fix="upgrade probekit")
    if version < 1:
        raise StoreError(f"{where} has an invalid format version {version}", fix=_FIX)
    method = field(header, "method", str, where, _FIX)
    d = field(header, "d_model", int, where, _FIX)
    points = field(header, "points", list, where, _FIX, items=str)
    names = field(header, "erasers", list, where, _FIX, items=str)
    meta = field(header, "meta", dict, where, _FIX)
    if d < 1 or not points or len(set(points)) != len(points) or len(set(names)) != len(names):
        raise StoreError(f"{where}: d_model must be positive and points (non-empty) and erasers free of repeats "
                         f"(d_model={d}, points={points[:4]}, erasers={names[:4]})", fix=_FIX)
    if "fit_images" in meta and meta["fit_images"] is not None:
        field(meta, "fit_images", list, f"{where} (meta)", _FIX, items=str)
    if "fit_labels" in meta and meta["fit_labels"] is not None:
        field(meta, "fit_labels", str, f"{where} (meta)", _FIX)
    if version >= 2:
        claims = field(header, "orthonormal", dict, where, _FIX)
        if set(claims) != set(points) or not all(isinstance(v, bool) for v in claims.values()):
            raise StoreError(f"{where}: field 'orthonormal' must say true or false for each of the points {points[:4]}",
                             fix=_FIX)
    else:  # version 1 promised orthonormal bases, except a raw steering vector
        claims = {p: method != "vector" for p in points}
    want = {f"{p}/basis" for p in points} | {f"{p}/{t}" for p in names for t in ("mean", "left", "right")}
    missing, extra = sorted(want - set(tensors)), sorted(set(tensors) - want)
    if missing:
        raise StoreError(f"{where} is missing tensor {missing[0]!r}", fix=_FIX)
    if extra:
        raise StoreError(f"{where} holds tensor {extra[0]!r}, which its header does not name", fix=_FIX)
    bases = {}
    for p in points:
        b = tensors[f"{p}/basis"]
        check_tensor(b, f"{p}/basis", where, _FIX, shape=(None, d))
        if b.shape[0] < 1:
            raise StoreError(f"{where}: tensor '{p}/basis' has no rows", fix=_FIX)
        if claims[p]:
            check_orthonormal(b, f"{p}/basis", where, _FIX)
        bases[p] = b
    erasers = {}
    for p in names:
        mean, left, right = (tensors[f"{p}/{t}"] for t in ("mean", "left", "right"))
        check_tensor(mean, f"{p}/mean", where, _FIX, shape=(d,))
        check_tensor(left, f"{p}/left", where, _FIX, shape=(d, None))
        check_tensor(right, f"{p}/right", where, _FIX, shape=(left.shape[1], d))
        erasers[p] = Eraser(mean, left, right)
    body = {k: v for k, v in header.items() if k != "checksum"}
    if version >= 2 or "checksum" in header:
        check_checksum(field(header, "checksum", str, where, _FIX), body, tensors, where, _FIX)
    else:
        warnings.warn(f"probekit: {where} has format version 1, without a checksum: damage to its numbers cannot be "
                      f"detected; save it again to add one", ProbekitWarning, stacklevel=3)
    return bases, erasers, method, meta
