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
from ...models.adapter import HookTarget, Model, get_module
from ...models.logit_output import LogitOutput
from ..recorder import Recorder

__all__ = ["BACKENDS", "check_backend", "run_backend", "deferred_head", "DEFER_HEAD"]

DEFER_HEAD = True
"""Whether the torch backend computes the ``logits`` point from the unembedding's input at the kept
positions only (see :func:`deferred_head`); False runs the unembedding on every token, as before
issue 28 (the benchmarks and the equality tests switch it off to compare)."""

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
        # are not needed (a real saving when only early layers are probed). The logits are read
        # at the unembedding's input and the head applied to the positions kept only
        # (deferred_head), so the forward stops before the full-vocabulary unembedding too.
        head = deferred_head(model, names) if DEFER_HEAD else None
        targets = None
        if head is not None:
            tgt = model.target("logits")
            targets = {"logits": HookTarget(path=tgt.path, mode="input", side=tgt.side, width=tgt.width)}
            inner = reduce

            def reduce(point: str, h: torch.Tensor) -> torch.Tensor:
                kept = inner(point, h)
                return head(kept) if point == "logits" else kept

        with Recorder(model, names, reduce=reduce, stop_early=True, targets=targets) as rec:
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


def deferred_head(model: Model, names: list[str]) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The head to apply to the unembedding's input at the kept positions, when ``logits`` can be read so.

    Every position selector keeps rows or averages them (``last``, an index, ``image_mean``, ...), and the
    unembedding followed by the model's output map is affine when it is a ``nn.Linear`` and the map at
    most scales (no soft-capping): then the logits at the kept positions are that head applied to the
    kept rows of its input (a mean of logits is the head of the mean input), and the forward can stop
    before the unembedding instead of running it over every token and the whole vocabulary. None when
    ``logits`` is not recorded or the head is not of that form (soft-capped logits, a custom head):
    the unembedding then runs as the model runs it.
    """
    if "logits" not in names:
        return None
    tgt = model.target("logits")
    if tgt.mode != "output" or tgt.side != "lm":
        return None
    unembed = get_module(model.hf, tgt.path)
    post = tgt.post
    if type(unembed) is not torch.nn.Linear or not (post is None or (isinstance(post, LogitOutput) and post.softcap is None)):
        return None
    # a head placed by accelerate (device_map: offloaded to disk or another device) gets its weights from its
    # hooks during its own forward only; reading them outside it gives the placeholder: run it as the model does
    if hasattr(unembed, "_hf_hook") or unembed.weight.device.type == "meta":
        return None
    output = post or LogitOutput()

    def head(h: torch.Tensor) -> torch.Tensor:  # the unembedding's own weights, not its module: its hooks stay out
        return output(torch.nn.functional.linear(h, unembed.weight, unembed.bias))

    return head
