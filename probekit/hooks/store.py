"""`ActivationStore`: recorded activations, in memory or as safetensors shards on disk.

On disk a store is a directory::

    index.json                  format, version, meta, per-point shape/dtype/positions, shard list
                                (per shard: global rows [start, stop), row count, a hash per point)
    shard-00000.safetensors     every point for samples [start, stop)
    ...

Shards are written to a temporary name and renamed into place, then the index is rewritten the
same way, so a crash leaves only finished shards listed; a later ``collect`` into the same
directory checks those shards and resumes from there. Every read checks shape, dtype, rows and
hash against the index (see :mod:`.store_index`). One writer at a time: a second process gets a
:class:`StoreError` while ``write.lock`` is held. Nothing is pickled.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Iterator, Mapping

import torch
from filelock import FileLock, Timeout
from safetensors import SafetensorError
from safetensors.torch import save_file

from ..errors import PositionError, StoreError, UnknownPointError
from .points import Point, fill_point_info
from .store_index import (FORMAT, INDEX, PART, VERSION, damaged_shards, is_lock, lock_name, part_name, read_index,
                          read_point, read_shard, shard_name, tensor_hash)

__all__ = ["ActivationStore", "StoreWriter", "damaged_shards", "FORMAT", "VERSION"]


def _atomic_write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class ActivationStore:
    """Activations keyed by hook point: ``store["lm.3.resid"]`` is ``[n, d]`` (or ``[n, p, d]``).

    Attributes:
        points: recorded point names in forward order.
        meta: what was collected and how (model, positions, prompts, seed, ...).

    Example:
        >>> import torch
        >>> s = ActivationStore({"lm.0.resid": torch.zeros(3, 4)}, meta={"positions": ["last"]})
        >>> s["lm.0.resid"].shape, len(s)
        (torch.Size([3, 4]), 3)
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor] | None = None, meta: dict | None = None,
                 directory: str | os.PathLike | None = None, point_info: dict | None = None):
        self._tensors = dict(tensors or {})
        self.meta: dict = dict(meta or {})
        self.directory = Path(directory) if directory is not None else None
        self._index: dict | None = None
        if self.directory is not None:
            self._index = read_index(self.directory)
            self.meta = self._index["meta"]
        self._only: list[str] | None = None  # the points of a view made by select()
        self._point_info = fill_point_info(self.points, point_info or (self._index["points"] if self._index else {}),
                                           self._tensors, self.meta.get("positions"))
        self.check_reads = True

    @classmethod
    def open(cls, directory: str | os.PathLike, *, verify: bool = False, check_reads: bool = True) -> "ActivationStore":
        """Open a finished store on disk (tensors are read lazily, memory-mapped).

        Args:
            verify: check every shard's hashes now (:meth:`verify`) instead of at each read.
            check_reads: check each tensor's hash as it is read (shape, dtype and rows are always
                checked); off only to measure what the check costs.
        """
        d = Path(directory)
        index = read_index(d)
        if not index.get("complete"):
            done = sum(s["stop"] - s["start"] for s in index["shards"])
            raise StoreError(f"store {d} is incomplete ({done} of {index['n']} samples)",
                             fix="call probekit.collect(...) again with store=the same directory to resume it")
        store = cls(directory=d)
        store.check_reads = check_reads
        if verify:
            store.verify()
        return store

    def verify(self) -> None:
        """Read every shard and check its rows, shapes, dtypes and hashes; raise StoreError naming all damaged ones."""
        if self._index is None:
            return
        bad = damaged_shards(self.directory, self._index)
        if bad:
            first = bad[0][1]
            more = "".join(f"\n  {e.problem}" for _, e in bad[1:])
            raise StoreError(f"{len(bad)} damaged shard(s) in {self.directory}:\n  {first.problem}{more}",
                             fix=first.fix)

    @property
    def points(self) -> list[str]:
        every = list(self._index["points"]) if self._index is not None else list(self._tensors)
        return every if self._only is None else [p for p in every if p in self._only]

    def __len__(self) -> int:
        if self._index is not None:
            return int(self._index["n"])
        return int(next(iter(self._tensors.values())).shape[0]) if self._tensors else 0

    def __contains__(self, point: object) -> bool:
        return point in self.points

    def info(self, point: str) -> dict:
        """``{"shape": per-sample shape, "dtype": ..., "positions": names along axis 1}`` of a point,
        from the index (or the collection) without reading it; made up from the tensor for a store
        built from a plain dict (positions from ``meta["positions"]`` when they fit, else ``"0"``,
        ``"1"``, ...; none for a ``[n, d]`` point)."""
        self._check(point)
        if point not in self._point_info:
            t = self._tensors[point]
            names = [str(x) for x in self.meta.get("positions") or []]
            if t.dim() == 3:
                names = names if len(names) == t.shape[1] else [str(j) for j in range(t.shape[1])]
            else:
                names = names if len(names) == 1 else []
            self._point_info[point] = {"shape": list(t.shape[1:]), "dtype": str(t.dtype).replace("torch.", ""),
                                       "positions": names}
        return self._point_info[point]

    def positions(self, point: str) -> list[str]:
        """Names of the positions along axis 1 of a ``[n, p, d]`` point (one name, or none, for ``[n, d]``)."""
        return list(self.info(point)["positions"])

    def point(self, name: str) -> Point:
        """The stored :class:`~probekit.hooks.points.Point` (side, layer, kind, width, module) of a point."""
        self._check(name)
        return Point.from_info(name, self._point_info[name])

    def _check(self, point: str) -> None:
        if point not in self.points:
            raise UnknownPointError(f"store has no point {point!r}", fix=f"stored points: {self.points}")

    def __getitem__(self, point: str) -> torch.Tensor:
        self._check(point)
        if self._index is None:
            return self._tensors[point]
        return read_point(self.directory, self._index, point, None, self.check_reads)

    def read(self, point: str, position: str | int | None = None) -> torch.Tensor:
        """One point, or one position (a name from :meth:`positions` or an index) of a ``[n, p, d]`` point as
        ``[n, d]``: on disk only that slice of each shard is kept, so the peak is the result plus one shard."""
        info = self.info(point)
        names = list(info["positions"])
        if position is None or len(info["shape"]) < 2:
            if position not in (None, 0, *names[:1]):
                raise PositionError(f"{point} is [n, d] and has no position {position!r}", fix=f"read it whole: store[{point!r}]")
            return self[point]
        j = names.index(position) if position in names else position
        if isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < info["shape"][0]:
            raise PositionError(f"{point} has no position {position!r}",
                                fix=f"use one of {names} or an index 0..{info['shape'][0] - 1}")
        if self._index is None:
            return self._tensors[point][:, j]
        return read_point(self.directory, self._index, point, j, self.check_reads)

    def iter_shards(self, point: str) -> Iterator[torch.Tensor]:
        """Yield a point shard by shard (bounded memory for large stores on disk)."""
        self._check(point)
        if self._index is None:
            yield self._tensors[point]
            return
        for shard in self._index["shards"]:
            yield read_shard(self.directory, self._index, shard, [point], self.check_reads)[point]

    def select(self, points: Sequence[str]) -> "ActivationStore":
        """A view holding only ``points`` (same memory or files, nothing read): hand a reader the points it
        should see and it loads them one by one, as it gets to each."""
        points = [points] if isinstance(points, str) else list(points)
        for p in points:
            self._check(p)
        view = ActivationStore.__new__(ActivationStore)
        view.__dict__.update(self.__dict__)
        view._only = list(points)
        return view

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for p in self.points:
            yield p, self[p]

    def to_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.items())

    def save(self, directory: str | os.PathLike, shard_size: int = 4096) -> "ActivationStore":
        """Write an in-memory store to ``directory`` (must not exist or be empty)."""
        w = StoreWriter(directory, self.meta, len(self), shard_size, fingerprint=self.meta.get("fingerprint", "saved"))
        info = {p: self.info(p) for p in self.points}
        try:
            for start in range(0, len(self), shard_size):
                stop = min(start + shard_size, len(self))
                w.write_shard(start, stop, {p: self[p][start:stop] for p in self.points}, info)
            return w.finish()
        finally:
            w.close()

    def __repr__(self) -> str:
        where = f"disk:{self.directory}" if self.directory else "memory"
        shapes = {p: tuple(self.info(p)["shape"]) for p in self.points[:3]}
        more = f", ... ({len(self.points)} points)" if len(self.points) > 3 else ""
        return f"ActivationStore(n={len(self)}, {where}, {shapes}{more})"


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
        if d.is_dir() and not (d / INDEX).exists() and any(not is_lock(f.name) for f in d.iterdir()):
            raise StoreError(f"{d} exists and is not an activation store", fix="pass an empty or new directory")
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
            raise StoreError(f"writing {name} to {self.directory} failed: {exc}",
                             fix="free disk space, then call collect again with the same store directory to resume") from exc

    def finish(self, meta: Mapping[str, Any] | None = None) -> ActivationStore:
        """Mark the store complete (every row is in a shard); ``meta`` adds entries known only now
        (the per-image hashes ``collect`` computes as it decodes each image)."""
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
        return ActivationStore(directory=self.directory)
