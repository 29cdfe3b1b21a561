"""The on-disk index of an activation store: its schema, per-shard records and content hashes.

``index.json`` lists every finished shard with its global row range ``[start, stop)``, its row
count and one xxh3-128 hash per point; ``points`` holds each point's per-sample shape and dtype.
:func:`read_index` refuses an index that does not match this schema or whose shards do not tile
``0..n`` (a gap, an overlap, a shard listed twice, a wrong ``n``, a path outside the store), and
:func:`read_shard` refuses a shard whose rows, shape, dtype, recorded range or hash differ from
its entry. The index carries a checksum of itself (``checksum``, checked after the schema), so an
edited field that the schema allows (the metadata, a flag) is refused too. Nothing wrong is ever
returned silently.

xxh3 rather than sha256: it hashes at memory speed (tens of GB/s per core, against ~1.5 GB/s for
sha256), so checking every read costs a few percent of the read, and the threat is damage
(a flipped byte, a swapped or truncated file), not a forger who could rewrite the index too.

Example:
    >>> import torch
    >>> tensor_hash(torch.zeros(2, 3)) == tensor_hash(torch.zeros(2, 3)), shard_name(2048, 1024)
    (True, 'shard-00002.safetensors')
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

import torch
import xxhash
from safetensors import safe_open

from ..errors import StoreError
from ..files import check_checksum, checksum

__all__ = ["FORMAT", "VERSION", "INDEX", "LOCK", "HASH", "read_index", "read_shard", "read_point", "damaged_shards",
           "shard_name", "part_name", "lock_name", "is_lock", "shard_fix", "tensor_hash", "validate_index",
           "index_checksum"]

FORMAT = "probekit.activations"
VERSION = 2  # 2: per-shard rows and hashes, canonical shard names; 1 had neither
INDEX = "index.json"
LOCK = "write.lock"
HASH = "xxh3_128"
_SHARD = re.compile(r"shard-\d{5,}\.safetensors")
PART = re.compile(r"index\.rank-\d{5}\.json")
_RANK_LOCK = re.compile(r"write\.rank-\d{5}\.lock")
# int64: the token ids of collect(..., logits_topk=k)
_DTYPES = {str(t).replace("torch.", "") for t in (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64)}
_REBUILD = "delete the directory and collect again"


def shard_name(start: int, shard_size: int) -> str:
    """The file of the shard starting at global row ``start``: the same for any number of writers."""
    return f"shard-{start // shard_size:05d}.safetensors"


def part_name(rank: int) -> str:
    """The index a rank of a distributed collection keeps of the shards it wrote, until rank 0 merges it."""
    return f"index.rank-{rank:05d}.json"


def lock_name(rank: int | None) -> str:
    return LOCK if rank is None else f"write.rank-{rank:05d}.lock"


def is_lock(name: str) -> bool:
    return name == LOCK or bool(_RANK_LOCK.fullmatch(name))


def shard_fix(directory: Path, number: int) -> str:
    return (f"re-run probekit.collect with the same arguments and store={str(directory)!r} to rewrite shard "
            f"{number} (it is checked and recomputed), or {_REBUILD}")


def tensor_hash(t: torch.Tensor) -> str:
    """xxh3-128 of a tensor's bytes (row-major, native byte order)."""
    t = t.detach().contiguous()
    data = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b""
    return xxhash.xxh3_128_hexdigest(data)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


_KEYS = {"format", "version", "complete", "n", "shard_size", "meta", "points", "shards", "checksum"}


def read_index(directory: Path, name: str = INDEX) -> dict:
    """Read and validate ``directory/index.json`` (or a rank's part index); raise :class:`StoreError` for anything off."""
    path = directory / name
    if directory.exists() and not directory.is_dir():
        raise StoreError(f"{directory} is a file, not an activation store directory",
                         fix="pass the directory given to probekit.collect(..., store=DIR)")
    try:
        with open(path, "rb") as f:
            index = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise StoreError(f"{directory} holds no activation store (no {INDEX})",
                         fix="pass the directory given to probekit.collect(..., store=DIR)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path} is corrupt: {exc}", fix=_REBUILD) from exc
    except OSError as exc:  # a directory named index.json, no permission, ...
        raise StoreError(f"cannot read {path}: {exc}", fix=f"{path} must be the store's index file; {_REBUILD}") from exc
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise StoreError(f"{path} is not a probekit activation store", fix="point at a store directory")
    version = index.get("version")
    if not _is_int(version):
        raise StoreError(f"{path} has no valid format version ({version!r})", fix=_REBUILD)
    if version > VERSION:
        raise StoreError(f"store {directory} has format version {version}, this probekit reads up to {VERSION}",
                         fix="upgrade probekit to read it, or collect it again")
    if version < VERSION:
        raise StoreError(f"store {directory} has format version {version}, written by an older probekit "
                         f"without content hashes", fix=f"collect it again: {_REBUILD}")
    unknown = sorted(set(index) - _KEYS)
    if unknown:  # e.g. a damaged "checksum" key: without this, the index would load unchecked as a pre-checksum one
        raise StoreError(f"{path} is corrupt: unknown fields {unknown}", fix=_REBUILD)
    validate_index(index, path)
    if "checksum" in index:  # written by every probekit since the index had one; stores written before have none
        check_checksum(index.pop("checksum"), index, None, str(path), _REBUILD)
    return index


def index_checksum(index: dict) -> str:
    """The checksum an index file carries (of everything in it but the checksum itself)."""
    return checksum({k: v for k, v in index.items() if k != "checksum"})


def validate_index(index: dict, path: Path) -> None:
    """Schema of every field, then the tiling: shards cover ``0..n`` at most once (exactly once if complete)."""
    kinds = {"n": int, "shard_size": int, "meta": dict, "points": dict, "shards": list}
    bad = [k for k, t in kinds.items() if not isinstance(index.get(k), t) or isinstance(index.get(k), bool)]
    if bad or index["n"] < 0 or index["shard_size"] < 1:
        raise StoreError(f"{path} is corrupt (missing or malformed: {', '.join(bad) or 'n / shard_size'})", fix=_REBUILD)
    n, size, points = index["n"], index["shard_size"], index["points"]
    if index["meta"].get("n", n) != n:
        raise StoreError(f"{path} says n = {n}, but its collection had n = {index['meta']['n']}", fix=_REBUILD)
    for p, info in points.items():
        ok = (isinstance(info, dict) and isinstance(info.get("shape"), list) and all(_is_int(d) and d >= 0 for d in info["shape"])
              and isinstance(info.get("dtype"), str) and info["dtype"] in _DTYPES
              and isinstance(info.get("positions"), list) and all(isinstance(x, str) for x in info["positions"]))
        if not ok:
            raise StoreError(f"{path} is corrupt: the entry of point {p!r} needs shape (ints), dtype and positions",
                             fix=_REBUILD)
    seen: dict[str, int] = {}
    for i, sh in enumerate(index["shards"]):
        where = f"{path}: shard entry {i}"
        if not isinstance(sh, dict):
            raise StoreError(f"{where} is a {type(sh).__name__}, not an object", fix=_REBUILD)
        file = sh.get("file")
        if not isinstance(file, str):
            raise StoreError(f"{where} has file {file!r}, which is not a file name", fix=_REBUILD)
        if os.path.isabs(file) or os.path.basename(file) != file or "\\" in file or not _SHARD.fullmatch(file):
            raise StoreError(f"{where} names {file!r}, which is not a plain shard file name inside the store "
                             f"directory", fix=f"a store only reads its own shard-NNNNN.safetensors files; {_REBUILD}")
        for key in ("start", "stop", "rows"):
            if not _is_int(sh.get(key)):
                raise StoreError(f"{where} ({file}) has {key} = {sh.get(key)!r}, not an integer", fix=_REBUILD)
        start, stop = sh["start"], sh["stop"]
        if not (0 <= start < n and start % size == 0):
            raise StoreError(f"{where} ({file}) starts at row {start}, not a multiple of shard_size {size} "
                             f"inside 0..{n}", fix=_REBUILD)
        if stop != min(start + size, n) or sh["rows"] != stop - start:
            raise StoreError(f"{where} ({file}) covers rows {start}..{stop} with rows = {sh['rows']}, but a shard "
                             f"starting at {start} of a store with n = {n} holds rows {start}..{min(start + size, n)}",
                             fix=_REBUILD)
        if file != shard_name(start, size):
            raise StoreError(f"{where} names {file!r} for rows {start}..{stop}, which belong in "
                             f"{shard_name(start, size)}", fix=_REBUILD)
        if file in seen:
            raise StoreError(f"{where}: {file} is listed twice (entries {seen[file]} and {i})", fix=_REBUILD)
        seen[file] = i
        hashes = sh.get("hashes")
        if not (isinstance(hashes, dict) and set(hashes) == set(points) and all(isinstance(v, str) for v in hashes.values())):
            raise StoreError(f"{where} ({file}) lacks a {HASH} hash for every point", fix=_REBUILD)
    if index["shards"] and not points:
        raise StoreError(f"{path} lists shards but no points", fix=_REBUILD)
    if index.get("complete"):
        covered = {sh["start"] for sh in index["shards"]}
        missing = [s for s in range(0, n, size) if s not in covered]
        if missing:
            s = missing[0]
            raise StoreError(f"{path} is marked complete with n = {n}, but rows {s}..{min(s + size, n)} are in no "
                             f"shard ({len(missing)} shard(s) missing)", fix=_REBUILD)


def read_shard(directory: Path, index: dict, entry: dict, points: Iterable[str], check_hash: bool = True
               ) -> dict[str, torch.Tensor]:
    """Tensors of ``points`` from one shard, each checked against its index entry."""
    path = directory / entry["file"]
    number = entry["start"] // index["shard_size"]
    fix = shard_fix(directory, number)
    if path.is_symlink():
        raise StoreError(f"shard {path} is a symbolic link (to {os.readlink(path)}), not a file of this store", fix=fix)
    out = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("start") != str(entry["start"]) or meta.get("stop") != str(entry["stop"]):
                raise StoreError(f"shard {path} holds rows {meta.get('start')}..{meta.get('stop')}, but the index "
                                 f"lists it for rows {entry['start']}..{entry['stop']} (swapped or copied files?)", fix=fix)
            for p in points:
                out[p] = f.get_tensor(p)
    except StoreError:
        raise
    except Exception as exc:  # missing file, not safetensors (e.g. a pickle), truncated, a point missing, ...
        raise StoreError(f"cannot read shard {path}: {exc}", fix=fix) from exc
    for p, t in out.items():
        info = index["points"][p]
        want = [entry["rows"], *info["shape"]]
        if list(t.shape) != want or str(t.dtype).replace("torch.", "") != info["dtype"]:
            raise StoreError(f"shard {path} holds {p} as {list(t.shape)} {str(t.dtype).replace('torch.', '')}, the "
                             f"index says {want} {info['dtype']}", fix=fix)
        if check_hash and tensor_hash(t) != entry["hashes"][p]:
            raise StoreError(f"shard {path}: the {HASH} hash of {p} does not match the index (the file changed "
                             f"after it was written)", fix=fix)
    return out


def read_point(directory: Path, index: dict, point: str, j: int | None = None, check_hash: bool = True) -> torch.Tensor:
    """A point over all shards (``j``: only position ``j`` of a ``[n, p, d]`` point), checked shard by shard.

    The result is allocated once and each shard copied into its rows and dropped: the peak is the
    result plus one shard, not a list of every shard plus their concatenation.
    """
    shards = index["shards"]
    if len(shards) == 1 and j is None:
        return read_shard(directory, index, shards[0], [point], check_hash)[point]
    info = index["points"][point]
    shape = info["shape"] if j is None else info["shape"][1:]
    out = torch.empty((int(index["n"]), *shape), dtype=getattr(torch, info["dtype"]))
    for entry in shards:
        t = read_shard(directory, index, entry, [point], check_hash)[point]
        out[entry["start"]:entry["stop"]] = t if j is None else t[:, j]
        del t
    return out


def damaged_shards(directory: Path, index: dict) -> list[tuple[dict, StoreError]]:
    """Every listed shard that fails its checks, with the reason."""
    bad = []
    for entry in index["shards"]:
        try:
            read_shard(directory, index, entry, list(index["points"]))
        except StoreError as exc:
            bad.append((entry, exc))
    return bad
