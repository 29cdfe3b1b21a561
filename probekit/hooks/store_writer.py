"""`StoreWriter`: writes an :class:`~probekit.hooks.store.ActivationStore`'s shards to disk, one at a time."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from filelock import FileLock, Timeout
from safetensors import SafetensorError
from safetensors.torch import save_file

from ..errors import StoreError
from ..files import free_bytes, size_text
from .store_index import (FORMAT, INDEX, PART, VERSION, damaged_shards, index_checksum, is_lock, lock_name, part_name,
                          read_index, shard_name, tensor_hash)

__all__ = ["StoreWriter"]


_INDEX_TMP = INDEX + ".tmp"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    obj = {**{k: v for k, v in obj.items() if k != "checksum"}, "checksum": index_checksum(obj)}
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class StoreWriter:
    """Writes shards of a store to disk and keeps the index consistent after every shard.

    Holds ``DIR/write.lock`` from construction to :meth:`close`, so a second writer on the same
    directory fails at once instead of interleaving shards. Resuming checks every finished shard
    first and drops the damaged ones from the index, so they are recomputed, not trusted.

    With ``rank`` set (one rank of a distributed collection, see :mod:`.distributed`), the writer
    owns only the shards ``k`` with ``k % world == rank``: it checks those of ``index.json``,
    lists what it writes in its own ``index.rank-RRRRR.json`` and holds ``write.rank-RRRRR.lock``;
    rank 0 later folds the parts into ``index.json`` with :meth:`merge_parts`. ``check=False``
    skips checking the shards (rank 0's set-up, where each rank checks its own).
    """

    def __init__(self, directory: str | os.PathLike, meta: dict, n: int, shard_size: int, fingerprint: str,
                 *, rank: int | None = None, world: int = 1, check: bool = True):
        self.directory = Path(directory)
        self.n, self.shard_size, self.fingerprint = n, shard_size, fingerprint
        self.rank, self.world = rank, world
        self._lock: FileLock | None = None
        self._index_path = self.directory / (INDEX if rank is None else part_name(rank))
        self._base: list[dict] = []  # a rank's finished shards listed in index.json
        d = self.directory
        if d.exists() and not d.is_dir():
            raise StoreError(f"store={str(d)!r} is a file, not a directory",
                             fix="pass a new directory (or an existing store directory) for store=")
        if d.is_dir() and not (d / INDEX).exists() and any(not is_lock(f.name) and f.name != _INDEX_TMP
                                                            for f in d.iterdir()):
            raise StoreError(f"{d} exists and is not an activation store", fix="pass an empty or new directory")
        # only a lock and probekit's own temporary index: a collection killed before its index was first
        # renamed into place, i.e. a store that never started; it starts now (the lock is taken first)
        self._created = not d.exists()
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {d}: {exc}", fix="check the path, free space and permissions") from exc
        self._acquire()
        try:
            self._open(meta) if rank is None else self._open_part()
            if rank is None:
                self.merge_parts()  # shards finished by the ranks of an interrupted distributed run
                if check:
                    self._drop_damaged()
                for tmp in d.glob("*.tmp"):  # leftovers of a crash mid-write (no other writer runs now)
                    tmp.unlink()
        except BaseException:
            self.close()
            raise

    def _acquire(self) -> None:
        path = self.directory / lock_name(self.rank)
        lock = FileLock(path, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise StoreError(f"another process is writing to {self.directory} (it holds {path})",
                             fix="wait for that collection to finish, or pass another store directory") from None
        except OSError as exc:
            raise StoreError(f"cannot lock {self.directory}: {exc}", fix="check free space and permissions") from exc
        self._lock = lock

    def _read_own(self) -> dict:
        d = self.directory
        index = read_index(d)
        if index["meta"].get("fingerprint") != self.fingerprint or index["n"] != self.n or index["shard_size"] != self.shard_size:
            raise StoreError(
                f"{d} already holds a store from another collection "
                f"(model, points, positions, inputs or shard size differ)",
                fix="use a new directory, or delete this one to start over",
            )
        return index

    def _open(self, meta: dict) -> None:
        d = self.directory
        if (d / INDEX).exists():
            self.index = self._read_own()
            self._fresh = False
        else:
            (d / _INDEX_TMP).unlink(missing_ok=True)  # half or all of the first index of a run killed before its rename
            self.index = {"format": FORMAT, "version": VERSION, "complete": False, "n": self.n,
                          "shard_size": self.shard_size, "meta": {**meta, "fingerprint": self.fingerprint},
                          "points": {}, "shards": []}
            self._fresh = True
            try:
                _atomic_write_json(d / INDEX, self.index)
            except OSError as exc:
                self._cleanup_new()
                raise StoreError(f"cannot write to {d}: {exc}", fix="check free space and permissions") from exc

    def _open_part(self) -> None:
        base = self._read_own()  # rank 0 created it and merged old parts before the others started
        self._fresh = False
        mine = [s for s in base["shards"] if (s["start"] // self.shard_size) % self.world == self.rank]
        bad = {e["file"] for e, _ in self._warn_damaged(damaged_shards(self.directory, {**base, "shards": mine}))}
        self._base = [s for s in mine if s["file"] not in bad]
        self.index = {**base, "complete": False, "shards": []}
        _atomic_write_json(self._index_path, self.index)

    def merge_parts(self) -> None:
        """Fold the ranks' part indexes into ``index.json`` (a part's entry replaces an older one), then remove them."""
        parts = sorted(f for f in self.directory.iterdir() if PART.fullmatch(f.name))
        if not parts or self.rank is not None:
            return
        by_file = {s["file"]: s for s in self.index["shards"]}
        for f in parts:
            part = read_index(self.directory, f.name)
            if part["meta"].get("fingerprint") != self.fingerprint or part["n"] != self.n:
                raise StoreError(f"{f} belongs to another collection", fix=f"delete {f} (or the whole directory)")
            if part["shards"] and not self.index["points"]:
                self.index["points"] = part["points"]
            by_file.update({s["file"]: s for s in part["shards"]})
        self.index["shards"] = sorted(by_file.values(), key=lambda s: s["start"])
        self.index["complete"] = False
        try:
            _atomic_write_json(self.directory / INDEX, self.index)
        except OSError as exc:
            raise StoreError(f"cannot update {self.directory / INDEX}: {exc}", fix="check free space and permissions") from exc
        for f in parts:  # after index.json lists their shards: a crash in between merges them again, harmlessly
            f.unlink(missing_ok=True)

    def _warn_damaged(self, bad: list[tuple[dict, StoreError]]) -> list[tuple[dict, StoreError]]:
        for entry, exc in bad:
            warnings.warn(f"probekit: {exc.problem}; rewriting shard {entry['start'] // self.shard_size}", stacklevel=5)
        return bad

    def _drop_damaged(self) -> None:
        bad = self._warn_damaged(damaged_shards(self.directory, self.index))
        if not bad:
            return
        names = {entry["file"] for entry, _ in bad}
        self.index["shards"] = [s for s in self.index["shards"] if s["file"] not in names]
        self.index["complete"] = False
        try:
            _atomic_write_json(self.directory / INDEX, self.index)
            for name in names:
                (self.directory / name).unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot update {self.directory / INDEX}: {exc}", fix="check free space and permissions") from exc

    def close(self) -> None:
        """Release the write lock (and remove its file: a finished store holds only its index and shards)."""
        if self._lock is not None:
            self._lock.release()
            (self.directory / lock_name(self.rank)).unlink(missing_ok=True)
            self._lock = None
            if getattr(self, "_created", False) and self.directory.is_dir() and not any(self.directory.iterdir()):
                self.directory.rmdir()  # refused before anything was written: leave nothing behind

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _cleanup_new(self) -> None:
        if getattr(self, "_created", False):
            shutil.rmtree(self.directory, ignore_errors=True)
        else:
            for f in self.directory.iterdir():
                if not is_lock(f.name):
                    f.unlink()

    def discard_if_empty(self) -> None:
        """Remove a store this writer created if no shard was finished (nothing to resume)."""
        if getattr(self, "_fresh", False) and not self.index["shards"]:
            self._cleanup_new()

    def done_ranges(self) -> set[tuple[int, int]]:
        return {(s["start"], s["stop"]) for s in self._base + self.index["shards"]}

    def write_shard(self, start: int, stop: int, tensors: Mapping[str, torch.Tensor], point_info: Mapping[str, dict]) -> None:
        name = shard_name(start, self.shard_size)
        tmp = self.directory / (name + ".tmp")
        old_shards, old_points = list(self.index["shards"]), self.index["points"]
        try:
            tensors = {k: v.contiguous() for k, v in tensors.items()}
            entry = {"file": name, "start": start, "stop": stop, "rows": stop - start,
                     "hashes": {k: tensor_hash(v) for k, v in tensors.items()}}
            save_file(tensors, str(tmp), metadata={"start": str(start), "stop": str(stop)})
            _fsync(tmp)  # on disk before the rename, so the index never lists a shard the disk lacks
            os.replace(tmp, self.directory / name)
            if not self.index["points"]:
                self.index["points"] = {p: dict(point_info[p]) for p in tensors}
            self.index["shards"] = [s for s in self.index["shards"] if s["file"] != name] + [entry]
            self.index["shards"].sort(key=lambda s: s["start"])
            _atomic_write_json(self._index_path, self.index)
        except (OSError, SafetensorError) as exc:  # safetensors reports I/O errors (a full disk) as its own type
            # roll back: neither a partial file nor a shard the index does not list stays behind
            self.index["shards"], self.index["points"] = old_shards, old_points
            tmp.unlink(missing_ok=True)
            (self.directory / name).unlink(missing_ok=True)
            needed = sum(t.numel() * t.element_size() for t in tensors.values())
            raise StoreError(f"writing {name} to {self.directory} failed: {exc} (the shard needs {size_text(needed)}; "
                             f"{size_text(free_bytes(self.directory))} free there)",
                             fix="free disk space, then call collect again with the same store directory to resume") from exc

    def finish(self, meta: Mapping[str, Any] | None = None) -> Path:
        """Mark the store complete (every row is in a shard) and return its directory (open it with
        ``ActivationStore(directory=...)``: the writer never imports the store it writes); ``meta`` adds entries
        known only now (the per-image hashes ``collect`` computes as it decodes each image)."""
        covered = sum(s["stop"] - s["start"] for s in self.index["shards"])
        if covered != self.n:
            raise StoreError(f"store {self.directory} covers {covered} of {self.n} samples", fix="collect again to resume")
        self.index["complete"] = True
        if meta:
            self.index["meta"] = {**self.index["meta"], **meta}
        try:
            _atomic_write_json(self.directory / INDEX, self.index)
        except OSError as exc:
            self.index["complete"] = False
            raise StoreError(f"marking {self.directory} complete failed: {exc}",
                             fix="free disk space, then call collect again with the same store directory") from exc
        return self.directory
