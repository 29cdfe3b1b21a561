"""Reports as JSON and as files: plain JSON values, tables as records, atomic writes.

A report file is written to a temporary name in the same directory and renamed, so a
reader sees the old file or the whole new one, never half of one. Report JSON carries a
checksum; :func:`load_report` checks its schema and the checksum, so edited or damaged JSON is
an InputError naming what is wrong, never a report with other numbers.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError, ProbekitWarning
from ..files import atomic_write as _atomic_write, check_checksum, checksum, field, loads_json
from ..readout.significance import drop_nulls

__all__ = ["FORMAT", "jsonable", "frame_to_json", "frame_from_json", "frames_equal", "dump_report",
           "load_report", "atomic_write"]

FORMAT = 2  # version of the JSON layout written by dump_report; 2 added the checksum


def jsonable(obj: Any) -> Any:
    """Plain JSON values: NaN/inf become null, numpy scalars and arrays become numbers and lists.

    >>> jsonable({"a": (1, np.float32(0.5)), "b": float("nan")})
    {'a': [1, 0.5], 'b': None}
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, bool):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        seq = sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else obj
        return [jsonable(v) for v in seq]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (_dt.datetime, _dt.date, pd.Timestamp)):
        return obj.isoformat()
    if obj is pd.NA or obj is pd.NaT:
        return None
    if hasattr(obj, "tolist"):  # numpy arrays, torch tensors
        return jsonable(obj.tolist())
    return str(obj)


def frame_to_json(df: pd.DataFrame | None) -> dict | None:
    """A table as ``{"columns", "dtypes", "records"}`` (NaN as null); None stays None."""
    if df is None:
        return None
    df = drop_nulls(df)  # the permutation statistics stay in memory: a file keeps the verdicts made from them
    raw = df.to_dict("records")
    records = [{str(k): jsonable(v) for k, v in rec.items()} for rec in raw]
    out = {"columns": [str(c) for c in df.columns], "dtypes": {str(c): str(t) for c, t in df.dtypes.items()},
           "records": records}
    # JSON has no infinity: jsonable writes null, so the cells that held +-inf are listed to come back as such
    inf = [[i, str(k), "inf" if v > 0 else "-inf"] for i, rec in enumerate(raw) for k, v in rec.items()
           if isinstance(v, (float, np.floating)) and math.isinf(v)]
    if inf:
        out["infinite"] = inf
    return out


def frame_from_json(obj: dict | None) -> pd.DataFrame | None:
    """The table :func:`frame_to_json` wrote, with its column dtypes where they still fit."""
    if obj is None:
        return None
    cols = obj.get("columns", [])
    df = pd.DataFrame.from_records(obj.get("records", []), columns=cols)
    for c, dtype in obj.get("dtypes", {}).items():
        try:
            df[c] = df[c].astype(dtype)
        except Exception:  # noqa: BLE001 - e.g. an int column that now holds nulls: keep what pandas chose
            pass
    for i, c, sign in obj.get("infinite", []):
        df.loc[i, c] = float(sign)
    return df


def frames_equal(a: pd.DataFrame | None, b: pd.DataFrame | None) -> bool:
    """Same values and columns, whatever the index; two Nones are equal. The permutation statistics a table
    carries in memory (not in its file: its verdicts are) are not compared."""
    if a is None or b is None:
        return a is None and b is None
    return drop_nulls(a).reset_index(drop=True).equals(drop_nulls(b).reset_index(drop=True))


def dump_report(kind: str, tables: dict[str, pd.DataFrame | None], settings: dict, data: dict,
                notes: list[str], indent: int | None = None) -> str:
    """A report as JSON text: its ``kind``, settings, data, notes, tables as records, and a checksum."""
    obj = {
        "probekit_report": FORMAT,
        "kind": kind,
        "settings": jsonable(settings),
        "data": jsonable(data),
        "notes": [str(n) for n in notes],
        "tables": {str(name): frame_to_json(df) for name, df in tables.items()},
    }
    obj["checksum"] = checksum(obj)
    return json.dumps(obj, indent=indent, allow_nan=False, ensure_ascii=False)


def _check_table(name: str, t: Any, where: str, fix: str) -> None:
    if t is None:
        return
    w = f"{where}, table {name!r}"
    if not isinstance(t, dict):
        raise InputError(f"{w} is {type(t).__name__}, not an object or null", fix=fix)
    cols = field(t, "columns", list, w, fix, cls=InputError, items=str)
    dtypes = field(t, "dtypes", dict, w, fix, cls=InputError)
    records = field(t, "records", list, w, fix, cls=InputError, items=dict)
    if len(set(cols)) != len(cols) or not set(dtypes) <= set(cols) or not all(isinstance(v, str) for v in dtypes.values()):
        raise InputError(f"{w}: columns repeat a name or dtypes name a column it lacks / a non-string dtype", fix=fix)
    for i, rec in enumerate(records):
        if set(rec) != set(cols):
            raise InputError(f"{w}: record {i} has fields {sorted(rec)[:6]}, not the columns {cols[:6]}", fix=fix)
    for cell in field(t, "infinite", list, w, fix, cls=InputError, default=[]):
        ok = (isinstance(cell, list) and len(cell) == 3 and type(cell[0]) is int and 0 <= cell[0] < len(records)
              and cell[1] in cols and cell[2] in ("inf", "-inf") and records[cell[0]][cell[1]] is None)
        if not ok:
            raise InputError(f"{w}: field 'infinite' holds {cell!r}, not [row, column, 'inf' or '-inf'] of a null cell",
                             fix=fix)


def load_report(s: str | bytes, kind: str, writer: str) -> dict:
    """The object :func:`dump_report` wrote, checked (schema, checksum) and its tables rebuilt;
    ``writer`` names it in errors. Anything off raises InputError naming the field."""
    fix = f"pass the string written by {writer} (write it again if it was edited or damaged)"
    where = f"{kind} report JSON"
    if not isinstance(s, (str, bytes, bytearray)):
        raise InputError(f"a {where} is a string, got {type(s).__name__}", fix=fix)
    obj = loads_json(s, where, InputError, fix)
    if not isinstance(obj, dict) or obj.get("kind") != kind or "tables" not in obj:
        raise InputError(f"this JSON is not a probekit {kind} report", fix=f"pass the string written by {writer}")
    version = field(obj, "probekit_report", int, where, fix, cls=InputError)
    if not 1 <= version <= FORMAT:
        raise InputError(f"{where} has format {version}; this probekit reads 1 to {FORMAT}",
                         fix="upgrade probekit" if version > FORMAT else fix)
    field(obj, "settings", dict, where, fix, cls=InputError)
    field(obj, "data", dict, where, fix, cls=InputError)
    field(obj, "notes", list, where, fix, cls=InputError, items=str)
    tables = field(obj, "tables", dict, where, fix, cls=InputError)
    for name, t in tables.items():
        _check_table(name, t, where, fix)
    body = {k: v for k, v in obj.items() if k != "checksum"}
    if version >= 2 or "checksum" in obj:
        check_checksum(field(obj, "checksum", str, where, fix, cls=InputError), body, None, where, fix, InputError)
    else:
        warnings.warn(f"probekit: this {where} has format 1, without a checksum: damage to its numbers cannot be "
                      "detected; write it again to add one", ProbekitWarning, stacklevel=3)
    obj = body
    obj["tables"] = {name: frame_from_json(t) for name, t in tables.items()}
    return obj


def atomic_write(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file in the same directory, fsync and a rename
    (:func:`probekit.files.atomic_write`); a full disk raises StoreError naming the bytes needed."""
    return _atomic_write(path, text, "report")
