"""Manifests of checkpoint directories probekit writes (organisms, study caches): every file's size
and xxh3-128, checked before the directory is used."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import xxhash

from ..errors import ProbekitError, StoreError
from .reading import _is, check_checksum, checksum, field, loads_json
from .writing import atomic_write

__all__ = ["MANIFEST", "write_manifest", "check_manifest", "check_cache"]

MANIFEST = "probekit_manifest.json"


def _file_hash(path: Path) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _listed(directory: Path) -> list[Path]:
    return sorted(f for f in directory.rglob("*") if f.is_file() and f.name != MANIFEST
                  and not any(part.startswith(".") for part in f.relative_to(directory).parts))


def write_manifest(directory: str | os.PathLike, info: Mapping[str, Any] | None = None) -> None:
    """Record every file of ``directory`` (size and xxh3-128) and ``info`` in ``directory/MANIFEST``."""
    d = Path(directory)
    files = {f.relative_to(d).as_posix(): {"bytes": f.stat().st_size, "xxh3": _file_hash(f)} for f in _listed(d)}
    body = {"format": "probekit.manifest", "version": 1, "files": files, "info": dict(info or {})}
    body["checksum"] = checksum(body)
    atomic_write(d / MANIFEST, json.dumps(body, indent=1, sort_keys=True) + "\n", "manifest")


def check_manifest(directory: str | os.PathLike, what: str, fix: str,
                   cls: type[ProbekitError] = StoreError) -> dict | None:
    """Check ``directory`` against its manifest; return the manifest's ``info`` (None: it has none).

    Every listed file must exist with its size and hash, and no other file may be there.
    """
    d = Path(directory)
    path = d / MANIFEST
    if not path.exists():
        return None
    where = f"{what} {d} ({MANIFEST})"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise cls(f"cannot read {path}: {exc.strerror or exc}", fix=fix) from None
    man = loads_json(raw, where, cls, fix)
    if not isinstance(man, dict) or man.get("format") != "probekit.manifest":
        raise cls(f"{where} is not a probekit manifest", fix=fix)
    version = field(man, "version", int, where, fix, cls=cls)
    if version != 1:
        raise cls(f"{where} has manifest version {version}; this probekit reads version 1", fix=fix)
    files = field(man, "files", dict, where, fix, cls=cls)
    info = field(man, "info", dict, where, fix, cls=cls)
    for name, entry in files.items():
        if not isinstance(entry, dict) or not _is(entry.get("bytes"), int) or not isinstance(entry.get("xxh3"), str):
            raise cls(f"{where}: the entry of {name!r} needs bytes (an integer) and xxh3 (a string)", fix=fix)
    check_checksum(man.get("checksum"), {k: v for k, v in man.items() if k != "checksum"}, None, where, fix, cls)
    present = {f.relative_to(d).as_posix(): f for f in _listed(d)}
    missing = sorted(set(files) - set(present))
    extra = sorted(set(present) - set(files))
    if missing or extra:
        raise cls(f"{what} {d}: " + "; ".join(s for s in (f"missing {missing[:3]}" if missing else "",
                                                              f"files it was not written with {extra[:3]}" if extra else "")
                                              if s), fix=fix)
    for name, entry in sorted(files.items()):
        f = present[name]
        if f.is_symlink():
            raise cls(f"{what} {d}: {name} is a symbolic link, not a file written with it", fix=fix)
        if f.stat().st_size != entry["bytes"] or _file_hash(f) != entry["xxh3"]:
            raise cls(f"{what} {d}: {name} changed after it was written ({f.stat().st_size} bytes, "
                      f"{entry['bytes']} written; the hash differs)", fix=fix)
    return info


def check_cache(directory: str | os.PathLike, what: str, fix: str) -> None:
    """A cached directory probekit built: checked against its manifest; one without (built by an
    older probekit) is used with a warning that it cannot be checked."""
    if check_manifest(directory, what, fix) is None:
        import warnings

        from .errors import ProbekitWarning

        warnings.warn(f"probekit: {what} {directory} has no {MANIFEST} (built by an older probekit), so damage to "
                      f"it cannot be detected; {fix}", ProbekitWarning, stacklevel=3)
