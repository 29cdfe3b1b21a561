"""Reports as JSON and as files: plain JSON values, tables as records, atomic writes.

A report file is written to a temporary name in the same directory and renamed, so a
reader sees the old file or the whole new one, never half of one.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError, StoreError
from ..readout.significance import drop_nulls

__all__ = ["FORMAT", "jsonable", "frame_to_json", "frame_from_json", "frames_equal", "dump_report",
           "load_report", "atomic_write"]

FORMAT = 1  # version of the JSON layout written by dump_report


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
    records = [{str(k): jsonable(v) for k, v in rec.items()} for rec in df.to_dict("records")]
    return {"columns": [str(c) for c in df.columns], "dtypes": {str(c): str(t) for c, t in df.dtypes.items()},
            "records": records}


def frame_from_json(obj: dict | None) -> pd.DataFrame | None:
    """The table :func:`frame_to_json` wrote, with its column dtypes where they still fit."""
    if obj is None:
        return None
    cols = obj.get("columns", [])
    df = pd.DataFrame.from_records(obj.get("records", []), columns=cols)
    for c, dtype in obj.get("dtypes", {}).items():
        try:
            df[c] = df[c].astype(dtype)
        except (TypeError, ValueError):  # e.g. an int column that now holds nulls: keep what pandas chose
            pass
    return df


def frames_equal(a: pd.DataFrame | None, b: pd.DataFrame | None) -> bool:
    """Same values and columns, whatever the index; two Nones are equal. The permutation statistics a table
    carries in memory (not in its file: its verdicts are) are not compared."""
    if a is None or b is None:
        return a is None and b is None
    return drop_nulls(a).reset_index(drop=True).equals(drop_nulls(b).reset_index(drop=True))


def dump_report(kind: str, tables: dict[str, pd.DataFrame | None], settings: dict, data: dict,
                notes: list[str], indent: int | None = None) -> str:
    """A report as JSON text: its ``kind``, settings, data, notes and tables as records."""
    obj = {
        "probekit_report": FORMAT,
        "kind": kind,
        "settings": jsonable(settings),
        "data": jsonable(data),
        "notes": list(notes),
        "tables": {name: frame_to_json(df) for name, df in tables.items()},
    }
    return json.dumps(obj, indent=indent, allow_nan=False, ensure_ascii=False)


def load_report(s: str | bytes, kind: str, writer: str) -> dict:
    """The object :func:`dump_report` wrote, tables rebuilt; ``writer`` names it in errors."""
    try:
        obj = json.loads(s)
    except (TypeError, ValueError) as exc:
        raise InputError(f"not a JSON report: {exc}", fix=f"pass the string written by {writer}") from None
    if not isinstance(obj, dict) or obj.get("kind") != kind or "tables" not in obj:
        raise InputError(f"this JSON is not a probekit {kind} report", fix=f"pass the string written by {writer}")
    obj["tables"] = {name: frame_from_json(t) for name, t in obj["tables"].items()}
    return obj


def atomic_write(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file in the same directory and a rename."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise InputError(f"{p} is a directory", fix="pass a file name such as report.html")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a report is for sharing
            os.replace(tmp, p)  # readers see the old file or the whole new one, never a half
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise StoreError(f"cannot write {p}: {exc.strerror or exc}", fix="choose a writable path") from exc
    return p


def _umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it and put it back
    os.umask(mask)
    return mask
