"""Data-parallel collection on ``torch.distributed``: each rank records its own shards of one store.

Launch the usual way (``torchrun --nproc_per_node=8 script.py``, ``accelerate launch``, or one
``torchrun`` per node with ``--nnodes``); ``collect(..., store=DIR)`` sees ``RANK`` and
``WORLD_SIZE`` and then:

1. rank 0 creates or checks ``DIR/index.json`` (and folds in the part indexes an interrupted
   run left), while the others wait; an error there is sent to every rank;
2. shard ``k`` (global rows ``k*S .. (k+1)*S``) belongs to rank ``k % world``: a disjoint,
   deterministic split that does not depend on timing, so a shard is the same file with the
   same bytes whatever the world size, and a store written by 4 ranks equals one written by 1;
3. each rank checks the finished shards it owns, skips the good ones, writes the rest and
   lists them in its own ``index.rank-RRRRR.json``;
4. after a barrier rank 0 merges the parts into ``index.json`` and marks it complete; after a
   second barrier every rank returns the finished store.

A resumed run, with any world size, skips every finished shard. A rank that dies takes the
run down (torchrun stops the other workers); what was finished stays, listed in the parts.

Only the collection is split. Probes and the report run on rank 0 (``scan`` returns None on
the other ranks): the batched probe solver fits all points of a store in one pass whose cost
is small next to the forward passes, and splitting it would need a gather of per-point results
(and seeds and folds kept identical across ranks) for little gain.

Example:
    >>> owned_shards(rank=1, world=2, n=10, shard_size=3)  # shards 1 and 3: rows 3..6 and 9..10
    [(3, 6), (9, 10)]
"""

from __future__ import annotations

import atexit
import datetime
import os
from typing import Any

from ..errors import InputError, StoreError
from .store import ActivationStore
from .store_writer import StoreWriter

__all__ = ["world", "is_main", "owned_shards", "open_writer", "finish"]

# a rank waits at the final barrier for the slowest one; collections take hours, not 30 minutes
_TIMEOUT = datetime.timedelta(hours=int(os.environ.get("PROBEKIT_DIST_TIMEOUT_H", "24")))


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of a torchrun / accelerate launch, ``(0, 1)`` otherwise."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        raise InputError(f"RANK={os.environ.get('RANK')!r} / WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} are not "
                         "integers", fix="launch with torchrun, or unset RANK and WORLD_SIZE") from None
    if size < 1 or not 0 <= rank < size:
        raise InputError(f"RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={size})",
                         fix="launch with torchrun, or unset RANK and WORLD_SIZE")
    return rank, size


def is_main() -> bool:
    return world()[0] == 0


def owned_shards(rank: int, world: int, n: int, shard_size: int) -> list[tuple[int, int]]:
    """The row ranges of the shards a rank writes: shard ``k`` goes to rank ``k % world``."""
    return [(s, min(s + shard_size, n)) for k, s in enumerate(range(0, n, shard_size)) if k % world == rank]


def _group() -> Any:
    import torch.distributed as dist

    if not dist.is_available():
        raise InputError("WORLD_SIZE > 1 but this torch has no torch.distributed", fix="run one process")
    if not dist.is_initialized():
        # gloo: only barriers and one small broadcast travel, so no GPU backend is needed
        dist.init_process_group(backend="gloo", timeout=_TIMEOUT)
        # a group left alive at interpreter exit can abort the process in gloo's destructor
        # ("terminate called without an active exception"), failing a run that succeeded: the
        # group probekit made, probekit destroys (a group the user made is theirs to destroy)
        atexit.register(_destroy, dist)
    return dist


def _destroy(dist: Any) -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _agree(dist: Any, error: BaseException | None) -> None:
    """Rank 0 tells everyone whether its step failed; every rank then raises the same StoreError."""
    box = [None if error is None else (getattr(error, "problem", str(error)), getattr(error, "fix", None))]
    dist.broadcast_object_list(box, src=0)
    if box[0] is not None:
        if error is not None:
            raise error
        raise StoreError(f"rank 0: {box[0][0]}", fix=box[0][1])


def open_writer(directory: Any, meta: dict, n: int, shard_size: int, fingerprint: str
                ) -> tuple[StoreWriter, StoreWriter | None]:
    """This rank's writer, plus rank 0's writer of ``index.json`` (None elsewhere)."""
    rank, size = world()
    dist = _group()
    main, error = None, None
    if rank == 0:
        try:
            main = StoreWriter(directory, meta, n, shard_size, fingerprint, check=False)
        except BaseException as exc:  # noqa: BLE001 - sent to every rank, then raised
            error = exc
    _agree(dist, error)
    try:
        mine = StoreWriter(directory, meta, n, shard_size, fingerprint, rank=rank, world=size)
    except BaseException:
        if main is not None:
            main.close()
        raise
    return mine, main


def finish(mine: StoreWriter, main: StoreWriter | None) -> ActivationStore:
    """Wait for every rank, merge the parts on rank 0, and return the finished store on every rank."""
    dist = _group()
    mine.close()
    dist.barrier()
    error = None
    if main is not None:
        try:
            main.merge_parts()
            main.finish()
        except BaseException as exc:  # noqa: BLE001
            error = exc
        finally:
            main.close()
    _agree(dist, error)
    return ActivationStore(directory=mine.directory)
