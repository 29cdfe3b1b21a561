"""Recording backends. All return the same numbers; ``torch`` (plain forward hooks) is the default.

- ``torch``: :class:`~probekit.hooks.recorder.Recorder`, selection inside the hook, early stop.
- ``nnsight``: traces through nnsight and saves the module outputs, then selects.
- ``transformer_lens``: TransformerLens (4.x, or 3.9 as sae-lens pins it) ``TransformerBridge.run_with_cache`` where it supports
  the architecture.
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch

from ...errors import BackendError, InputError
from ...models.adapter import Model
from ..recorder import Recorder

__all__ = ["BACKENDS", "check_backend", "run_backend"]

BACKENDS = ("torch", "nnsight", "transformer_lens")
_MODULES = {"nnsight": "nnsight_backend", "transformer_lens": "transformer_lens_backend"}


def _module(name: str):
    return importlib.import_module(f"{__name__}.{_MODULES[name]}")


def check_backend(backend: str, model: Model) -> None:
    """Raise before any work if the backend is unknown or cannot serve this model."""
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}", fix=f"use one of {BACKENDS}")
    if backend == "torch":
        return
    try:
        mod = _module(backend)
    except ImportError as exc:
        raise BackendError(f"backend {backend!r} is not installed ({exc})", fix=f"pip install {backend.replace('_', '-')}") from exc
    supported = getattr(mod, "supported", None)
    if supported is not None and not supported(model.hf):
        raise BackendError(f"backend {backend!r} does not support {type(model.hf).__name__}",
                           fix="use backend='torch' (works for every model)")


def run_backend(backend: str, model: Model, inputs: dict, names: list[str],
                reduce: Callable[[str, torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """One forward pass recording ``names``; returns point -> reduced tensor."""
    if backend == "torch":
        # Stop the forward once every point is recorded: the later layers and the unembedding
        # are not needed (a real saving when only early layers are probed).
        with Recorder(model, names, reduce=reduce, stop_early=True) as rec:
            rec.run(**inputs, use_cache=False)
        missing = [p for p in names if p not in rec.cache]
        if missing:
            raise BackendError(f"the forward pass never reached {missing}",
                               fix="these modules are not used for this input; choose other points")
        return rec.cache
    mod = _module(backend)
    raw = mod.record(model.hf, inputs, {p: (model.target(p).path, model.target(p).mode) for p in names})
    posts = {p: model.target(p).post for p in names}
    return {p: reduce(p, raw[p] if posts[p] is None else posts[p](raw[p])) for p in names}
