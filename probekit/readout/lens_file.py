"""The file format of a :class:`~probekit.readout.lens.TunedLens`: one ``.safetensors`` file, checked on load.

Tensors ``translators.{point with _ for .}.weight`` ``[d, d]`` and ``.bias`` ``[d]``, one floating
dtype; string metadata ``format`` (``"probekit.tuned_lens"``), ``version`` (``"2"``), ``points``
and ``meta`` (JSON), ``d_model`` and ``checksum`` (:func:`probekit.files.checksum` of the other
fields' values and every tensor). :func:`read` checks the schema, that the tensors are exactly the
translators of the named points, their shapes, dtype and finiteness, and the checksum; version-1
files (no checksum, no ``d_model``) load with the other checks and a warning.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

from torch import Tensor

from ..errors import ProbekitWarning, StoreError
from ..files import atomic_write, check_checksum, check_tensor, checksum, field, loads_json, read_safetensors
from ..hooks.points import Point

__all__ = ["FORMAT", "VERSION", "write", "read", "key"]

FORMAT = "probekit.tuned_lens"
VERSION = 2  # 2: d_model and a checksum
_FIX = "pass a file written by TunedLens.save (fit and save the lens again if it was damaged)"


def key(point: str) -> str:
    return point.replace(".", "_")


def write(path: str | os.PathLike, state: dict[str, Tensor], points: list[str], meta: dict, d_model: int) -> None:
    from safetensors.torch import save

    meta_text = json.dumps(meta, default=str, allow_nan=False)
    fields = {"format": FORMAT, "version": str(VERSION), "points": json.dumps(points), "meta": meta_text,
              "d_model": str(d_model)}
    fields["checksum"] = checksum(_content(VERSION, list(points), json.loads(meta_text), d_model), state)
    atomic_write(path, save(state, metadata=fields), "tuned lens")


def _content(version: int, points: list[str], meta: dict, d_model: int) -> dict:
    """What the checksum covers: the values, not how the header spells them."""
    return {"format": FORMAT, "version": version, "points": points, "meta": meta, "d_model": d_model}


def _int(text: Any, name: str, where: str) -> int:
    if not isinstance(text, str) or not text.isdigit() or text != str(int(text)):
        raise StoreError(f"{where}: field {name!r} is {text!r}, not a whole number", fix=_FIX)
    return int(text)


def read(path: str | os.PathLike) -> tuple[dict[str, Tensor], list[str], dict, int]:
    """``(state, points, meta, d_model)`` of a tuned-lens file, every field and tensor checked."""
    fields, state = read_safetensors(path, "tuned lens", _FIX)
    where = f"tuned lens {os.fspath(path)}"
    if fields.get("format") != FORMAT:
        raise StoreError(f"{os.fspath(path)} is not a probekit tuned lens", fix=_FIX)
    version = _int(fields.get("version"), "version", where)
    if not 1 <= version <= VERSION:
        raise StoreError(f"{where} has tuned-lens format version {version}, this probekit reads 1 to {VERSION}",
                         fix="upgrade probekit" if version > VERSION else _FIX)
    if "points" not in fields:
        raise StoreError(f"{where}: field 'points' is missing", fix=_FIX)
    points = field({"points": loads_json(fields["points"], f"{where} (points)", fix=_FIX)}, "points", list, where,
                   _FIX, items=str)
    meta = field({"meta": loads_json(fields.get("meta", "{}"), f"{where} (meta)", fix=_FIX)}, "meta", dict, where,
                 _FIX)
    if len(set(map(key, points))) != len(points):
        raise StoreError(f"{where}: field 'points' repeats a point: {points[:6]}", fix=_FIX)
    for p in points:
        pt = Point.parse(p)
        if not (pt.in_stream and p in ("lm.embed", f"lm.{pt.layer}.resid")):
            raise StoreError(f"{where}: field 'points' holds {p!r}, not a residual-stream point (lm.embed, lm.N.resid)",
                             fix=_FIX)
    want = {f"translators.{key(p)}.{t}" for p in points for t in ("weight", "bias")}
    missing, extra = sorted(want - set(state)), sorted(set(state) - want)
    if missing or extra:
        what = f"is missing tensor {missing[0]!r}" if missing else f"holds tensor {extra[0]!r}, which no point names"
        raise StoreError(f"{where} {what}", fix=_FIX)
    if version >= 2:
        d = _int(fields.get("d_model"), "d_model", where)
    elif state:
        d = next(iter(state.values())).shape[-1]
    else:
        raise StoreError(f"{where} has no translators and no d_model", fix=_FIX)
    if d < 1:
        raise StoreError(f"{where}: field 'd_model' is {d}", fix=_FIX)
    dtypes = {t.dtype for t in state.values()}
    if len(dtypes) > 1:
        raise StoreError(f"{where} mixes tensor dtypes {sorted(str(t) for t in dtypes)}", fix=_FIX)
    for name, t in state.items():
        check_tensor(t, name, where, _FIX, shape=(d, d) if name.endswith(".weight") else (d,))
    if version >= 2 or "checksum" in fields:
        check_checksum(field(fields, "checksum", str, where, _FIX), _content(version, points, meta, d), state, where,
                       _FIX)
    else:
        warnings.warn(f"probekit: {where} has format version 1, without a checksum: damage to its numbers cannot be "
                      f"detected; save it again to add one", ProbekitWarning, stacklevel=3)
    return state, points, meta, d
