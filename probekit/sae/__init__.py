"""Sparse autoencoders on probekit's activations: train, save / load (sae-lens's format), measure.

- :class:`SAE`: the value (sae-lens's weight layout; TopK, ReLU ("standard") and JumpReLU); encodes and
  decodes, never runs a model.
- :func:`train_sae`: trains one on a hook point of an :class:`~probekit.hooks.store.ActivationStore`,
  streaming shard by shard, deterministic from a seed (:mod:`probekit.sae.train`).
- :func:`save_sae` / :func:`load_sae`: ``cfg.json`` + ``sae_weights.safetensors`` as sae-lens writes
  them, every field checked on load, written atomically (:mod:`probekit.sae.files`).
- :func:`sae_stats`: the quality the field reports without running the model: fraction of variance
  unexplained, L0, dead latents (:mod:`probekit.sae.stats`); the loss and KL recovered when the
  reconstruction is spliced into the forward pass need the model: :func:`probekit.steering.sae.splice_quality`.

Readouts on latents live in :mod:`probekit.readout.sae_latents`, interventions (Suri et al.'s steering,
SAUCE-style clamping) in :mod:`probekit.steering.sae`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {"SAE": "model", "train_sae": "train", "TrainSettings": "train", "save_sae": "model", "load_sae": "model",
         "sae_stats": "stats", "encode_store": "stats"}
if TYPE_CHECKING:
    from .model import SAE, load_sae, save_sae
    from .stats import encode_store, sae_stats
    from .train import TrainSettings, train_sae

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(__all__) | {k for k in globals() if not k.startswith("_")})
