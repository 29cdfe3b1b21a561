"""`ActivationStore`: recorded activations, in memory or as safetensors shards on disk.

On disk a store is a directory::

    index.json                  format, version, meta, per-point shape/dtype/positions, shard list
    shard-00000.safetensors     every point for samples [start, stop)
    ...

Shards are written to a temporary name and renamed into place, then the index is rewritten the
same way, so a crash leaves only finished shards listed; a later ``collect`` into the same
directory resumes from there. Nothing is pickled.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import StoreError, UnknownPointError

__all__ = ["ActivationStore", "StoreWriter", "FORMAT", "VERSION"]

FORMAT = "probekit.activations"
VERSION = 1
INDEX = "index.json"


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


def read_index(directory: Path) -> dict:
    try:
        with open(directory / INDEX) as f:
            index = json.load(f)
    except FileNotFoundError:
        raise StoreError(f"{directory} holds no activation store (no {INDEX})",
                         fix="pass the directory given to probekit.collect(..., store=DIR)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"{directory / INDEX} is corrupt: {exc}", fix="delete the directory and collect again") from exc
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise StoreError(f"{directory / INDEX} is not a probekit activation store", fix="point at a store directory")
    version = index.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise StoreError(f"{directory / INDEX} has no valid format version ({version!r})",
                         fix="delete the directory and collect again")
    if version > VERSION:
        raise StoreError(f"store {directory} has format version {version}, this probekit reads up to {VERSION}",
                         fix="upgrade probekit to read it, or collect it again")
    kinds = {"n": int, "shard_size": int, "meta": dict, "points": dict, "shards": list}
    bad = [k for k, t in kinds.items() if not isinstance(index.get(k), t)]
    if bad or not all(isinstance(sh, dict) and {"file", "start", "stop"} <= set(sh) for sh in index["shards"]):
        raise StoreError(f"{directory / INDEX} is corrupt (missing or malformed: {', '.join(bad) or 'shards'})",
                         fix="delete the directory and collect again")
    return index


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
        self._point_info = point_info or (self._index["points"] if self._index else {})

    @classmethod
    def open(cls, directory: str | os.PathLike) -> "ActivationStore":
        """Open a finished store on disk (tensors are read lazily, memory-mapped)."""
        d = Path(directory)
        index = read_index(d)
        if not index.get("complete"):
            done = sum(s["stop"] - s["start"] for s in index["shards"])
            raise StoreError(f"store {d} is incomplete ({done} of {index['n']} samples)",
                             fix="call probekit.collect(...) again with store=the same directory to resume it")
        return cls(directory=d)

    @property
    def points(self) -> list[str]:
        if self._index is not None:
            return list(self._index["points"])
        return list(self._tensors)

    def __len__(self) -> int:
        if self._index is not None:
            return int(self._index["n"])
        return int(next(iter(self._tensors.values())).shape[0]) if self._tensors else 0

    def __contains__(self, point: object) -> bool:
        return point in self.points

    def positions(self, point: str) -> list[str]:
        """Names of the positions along axis 1 of a ``[n, p, d]`` point (one name for ``[n, d]``)."""
        info = self._point_info.get(point)
        if info is None:
            self._check(point)
        return list(info["positions"])

    def _check(self, point: str) -> None:
        if point not in self.points:
            raise UnknownPointError(f"store has no point {point!r}", fix=f"stored points: {self.points}")

    def __getitem__(self, point: str) -> torch.Tensor:
        self._check(point)
        if self._index is None:
            return self._tensors[point]
        parts = list(self.iter_shards(point))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def iter_shards(self, point: str) -> Iterator[torch.Tensor]:
        """Yield a point shard by shard (bounded memory for large stores on disk)."""
        self._check(point)
        if self._index is None:
            yield self._tensors[point]
            return
        for shard in self._index["shards"]:
            path = self.directory / shard["file"]
            try:
                with safe_open(str(path), framework="pt") as f:
                    t = f.get_tensor(point)
            except Exception as exc:  # missing file, not safetensors (e.g. a pickle), truncated, ...
                raise StoreError(f"cannot read shard {path}: {exc}",
                                 fix="the store is damaged: delete the directory and collect again") from exc
            yield t

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for p in self.points:
            yield p, self[p]

    def to_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.items())

    def save(self, directory: str | os.PathLike, shard_size: int = 4096) -> "ActivationStore":
        """Write an in-memory store to ``directory`` (must not exist or be empty)."""
        w = StoreWriter(directory, self.meta, len(self), shard_size, fingerprint=self.meta.get("fingerprint", "saved"))
        for start in range(0, len(self), shard_size):
            stop = min(start + shard_size, len(self))
            w.write_shard(start, stop, {p: self[p][start:stop] for p in self.points}, self._point_info)
        return w.finish()

    def __repr__(self) -> str:
        where = f"disk:{self.directory}" if self.directory else "memory"
        shapes = {p: tuple(self._point_info[p]["shape"]) if p in self._point_info else None for p in self.points[:3]}
        more = f", ... ({len(self.points)} points)" if len(self.points) > 3 else ""
        return f"ActivationStore(n={len(self)}, {where}, {shapes}{more})"


class StoreWriter:
    """Writes shards of a store to disk and keeps the index consistent after every shard."""

    def __init__(self, directory: str | os.PathLike, meta: dict, n: int, shard_size: int, fingerprint: str):
        self.directory = Path(directory)
        self.n, self.shard_size, self.fingerprint = n, shard_size, fingerprint
        if self.directory.exists() and (self.directory / INDEX).exists():
            index = read_index(self.directory)
            if index["meta"].get("fingerprint") != fingerprint or index["n"] != n or index["shard_size"] != shard_size:
                raise StoreError(
                    f"{self.directory} already holds a store from another collection "
                    f"(model, points, positions, inputs or shard size differ)",
                    fix="use a new directory, or delete this one to start over",
                )
            self.index = index
        else:
            if self.directory.exists() and any(self.directory.iterdir()):
                raise StoreError(f"{self.directory} exists and is not an activation store",
                                 fix="pass an empty or new directory")
            self.index = {"format": FORMAT, "version": VERSION, "complete": False, "n": n, "shard_size": shard_size,
                          "meta": {**meta, "fingerprint": fingerprint}, "points": {}, "shards": []}
            self._created = not self.directory.exists()
            self._fresh = True
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                _atomic_write_json(self.directory / INDEX, self.index)
            except OSError as exc:
                self._cleanup_new()
                raise StoreError(f"cannot write to {self.directory}: {exc}", fix="check free space and permissions") from exc
        # leftovers of a crash mid-write
        for tmp in self.directory.glob("*.tmp"):
            tmp.unlink()

    def _cleanup_new(self) -> None:
        if getattr(self, "_created", False):
            shutil.rmtree(self.directory, ignore_errors=True)
        else:
            for f in self.directory.iterdir():
                f.unlink()

    def discard_if_empty(self) -> None:
        """Remove a store this writer created if no shard was finished (nothing to resume)."""
        if getattr(self, "_fresh", False) and not self.index["shards"]:
            self._cleanup_new()

    def done_ranges(self) -> set[tuple[int, int]]:
        return {(s["start"], s["stop"]) for s in self.index["shards"]}

    def write_shard(self, start: int, stop: int, tensors: Mapping[str, torch.Tensor], point_info: Mapping[str, dict]) -> None:
        name = f"shard-{start // self.shard_size:05d}.safetensors"
        tmp = self.directory / (name + ".tmp")
        old_shards, old_points = list(self.index["shards"]), self.index["points"]
        try:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"start": str(start), "stop": str(stop)})
            os.replace(tmp, self.directory / name)
            if not self.index["points"]:
                self.index["points"] = {p: dict(point_info[p]) for p in tensors}
            self.index["shards"].append({"file": name, "start": start, "stop": stop})
            self.index["shards"].sort(key=lambda s: s["start"])
            _atomic_write_json(self.directory / INDEX, self.index)
        except (OSError, SafetensorError) as exc:  # safetensors reports I/O errors (a full disk) as its own type
            # roll back: neither a partial file nor a shard the index does not list stays behind
            self.index["shards"], self.index["points"] = old_shards, old_points
            tmp.unlink(missing_ok=True)
            (self.directory / name).unlink(missing_ok=True)
            raise StoreError(f"writing {name} to {self.directory} failed: {exc}",
                             fix="free disk space, then call collect again with the same store directory to resume") from exc

    def finish(self) -> ActivationStore:
        covered = sum(s["stop"] - s["start"] for s in self.index["shards"])
        if covered != self.n:
            raise StoreError(f"store {self.directory} covers {covered} of {self.n} samples", fix="collect again to resume")
        self.index["complete"] = True
        try:
            _atomic_write_json(self.directory / INDEX, self.index)
        except OSError as exc:
            self.index["complete"] = False
            raise StoreError(f"marking {self.directory} complete failed: {exc}",
                             fix="free disk space, then call collect again with the same store directory") from exc
        return ActivationStore(directory=self.directory)
