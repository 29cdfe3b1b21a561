"""Atomic writes: a temporary name in the same directory, fsync, rename; a failure leaves nothing."""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import InputError, StoreError

__all__ = ["atomic_write", "replace_section", "atomic_dir", "write_failure", "free_bytes", "size_text", "model_bytes"]


def size_text(n: int | None) -> str:
    """``1.5 MB``-style size (``?`` when unknown)."""
    if n is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n}"


def free_bytes(directory: Path) -> int | None:
    """Free bytes on the disk that holds (or would hold) ``directory``; None when unknown."""
    for d in (directory, *directory.parents):
        if d.exists():
            try:
                return shutil.disk_usage(d).free
            except OSError:
                return None
    return None


def write_failure(path: Path, exc: OSError, needed: int | None, what: str) -> StoreError:
    """The error for a write of ``needed`` bytes to ``path`` that failed with ``exc``."""
    free = free_bytes(path.parent)
    full = exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
    reason = "no space left on device" if full else (exc.strerror or str(exc))
    return StoreError(f"cannot write {what} {path}: {reason} (it needs {size_text(needed)}; "
                      f"{size_text(free)} free there); nothing was written",
                      fix=(f"free at least {size_text(needed)} on the disk holding {path.parent}, or save elsewhere"
                           if full else "check that the directory exists and is writable, then save again"))


def _write_fd(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (the one place bytes reach the disk, so tests can fill it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _discard(tmp: Path) -> None:
    """Remove a temporary file; cleaning up never raises over the error that made it necessary."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


def _umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it and put it back
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, data: bytes | str, what: str = "file") -> Path:
    """Write ``data`` to ``path``: a temporary name in the same directory, fsync, rename.

    A failure (a full disk, no permission) removes the temporary file, leaves any old ``path``
    as it was and raises :class:`StoreError` naming ``path``, the bytes needed and free.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise InputError(f"{p} is a directory", fix=f"pass a file name for the {what}")
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    tmp = p.parent / f".{p.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_umask())
        try:
            _write_fd(fd, raw)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, p)  # readers see the old file or the whole new one, never a half
        _fsync_dir(p.parent)
    except OSError as exc:
        _discard(tmp)
        raise write_failure(p, exc, len(raw), what) from exc
    except BaseException:
        _discard(tmp)
        raise
    return p


def replace_section(path: str | os.PathLike, start: str, end: str, section: str) -> Path:
    """Put ``section`` (which begins with the marker ``start`` and ends with ``end``) in place of the text
    between those markers in the page at ``path``, keeping the rest; appended when the page has none.
    Written atomically (a study's section of ``docs/results.md``)."""
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    if start in old and end in old:
        new = old[:old.index(start)] + section.rstrip("\n") + old[old.index(end) + len(end):]
    else:
        new = (old.rstrip("\n") + "\n\n" if old else "") + section
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, new, "results page")


@contextmanager
def atomic_dir(path: str | os.PathLike, what: str, needed: int | Callable[[], int | None] | None = None
               ) -> Iterator[Path]:
    """``with atomic_dir(path, "checkpoint") as tmp:`` write files into ``tmp``; on success they are
    fsynced and ``tmp`` replaces ``path`` in one rename. On failure ``tmp`` is removed (an old
    ``path`` stays) and an OSError becomes a :class:`StoreError` naming ``needed`` bytes (a
    callable is asked at that moment, e.g. for the size of a model built inside the block)."""
    target = Path(path).expanduser()
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(tmp)
        yield tmp
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)  # moved aside first, so the swap itself is one rename
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failure(target, exc, needed() if callable(needed) else needed, what) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise



def model_bytes(module: Any) -> int | None:
    """Bytes of a torch module's parameters and buffers (what ``save_pretrained`` writes, about)."""
    if module is None:
        return None
    hf = getattr(module, "hf", module)
    return sum(t.numel() * t.element_size() for t in (*hf.parameters(), *hf.buffers()))
