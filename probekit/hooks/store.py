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

import os
from pathlib import Path
from collections.abc import Sequence
from typing import Iterator, Mapping

import torch

from ..errors import PositionError, StoreError, UnknownPointError
from .points import Point, fill_point_info
from .store_index import FORMAT, VERSION, damaged_shards, read_index, read_point, read_shard

__all__ = ["ActivationStore", "damaged_shards", "FORMAT", "VERSION"]


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
        from .store_writer import StoreWriter

        w = StoreWriter(directory, self.meta, len(self), shard_size, fingerprint=self.meta.get("fingerprint", "saved"))
        info = {p: self.info(p) for p in self.points}
        try:
            for start in range(0, len(self), shard_size):
                stop = min(start + shard_size, len(self))
                w.write_shard(start, stop, {p: self[p][start:stop] for p in self.points}, info)
            return ActivationStore(directory=w.finish())
        finally:
            w.close()

    def __repr__(self) -> str:
        where = f"disk:{self.directory}" if self.directory else "memory"
        shapes = {p: tuple(self.info(p)["shape"]) for p in self.points[:3]}
        more = f", ... ({len(self.points)} points)" if len(self.points) > 3 else ""
        return f"ActivationStore(n={len(self)}, {where}, {shapes}{more})"

