"""Tiny activation stores and what the store tests do with them: build one, copy it, snapshot its
bytes, edit its index, count the forwards a collect runs. (tests/ is on sys.path under pytest.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import probekit
from probekit.hooks import ActivationStore
from probekit import tiny


def tiny_images(n: int = 6, seed: int = 1) -> list:
    """``n`` 32x32 fixture images."""
    return tiny.fixture_images(n, 32, seed=seed)


def tiny_store(model: Any, directory: str | Path, images: list | None = None, *, n: int = 6, seed: int = 1,
               points: str | list[str] = "lm.0.resid", batch_size: int = 3, shard_size: int = 3,
               prompts: Any = "x", **kw: Any) -> ActivationStore:
    """A finished disk store at ``directory``: ``points`` of ``model`` over ``images`` (default
    :func:`tiny_images` ``(n, seed)``), shards of ``shard_size``; ``kw`` go to :func:`probekit.collect`."""
    images = tiny_images(n, seed) if images is None else images
    return probekit.collect(model, images, prompts, points=points, store=directory, batch_size=batch_size,
                            shard_size=shard_size, progress=False, **kw)


def copy_store(src: Path, parent: Path, name: str = "s") -> Path:
    """A copy of the store directory ``src`` at ``parent/name``, to damage without touching ``src``."""
    return Path(shutil.copytree(src, parent / name))


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` and its bytes: equal snapshots, untouched directory."""
    return {str(f.relative_to(directory)): f.read_bytes() for f in sorted(directory.rglob("*")) if f.is_file()}


def edit_index(directory: Path, edit: Callable[[dict], Any], checksum: bool = True) -> None:
    """Rewrite ``directory/index.json`` after ``edit(index)`` changed it in place; with ``checksum``
    its checksum is made to match (a crafted index, as a buggy writer would leave it: what the schema
    and tiling checks must catch on their own), else the old one stays (damage: the checksum catches it)."""
    from probekit.hooks.store_index import index_checksum

    index = json.loads((directory / "index.json").read_text())
    edit(index)
    if checksum and "checksum" in index:
        index["checksum"] = index_checksum(index)
    (directory / "index.json").write_text(json.dumps(index))


def count_prepare(model: Any, monkeypatch: Any) -> dict:
    """``calls["n"]``: how many batches ``model`` prepares (one per forward) from now on."""
    calls = {"n": 0}
    real = type(model).prepare

    def counting(*a: Any, **k: Any) -> Any:
        calls["n"] += 1
        return real(model, *a, **k)

    monkeypatch.setattr(model, "prepare", counting)
    return calls
