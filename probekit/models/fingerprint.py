"""`fingerprint`: a short hash of a model's architecture and weights, read in milliseconds at any size."""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

__all__ = ["fingerprint", "sample_index", "FINGERPRINT_SAMPLE"]

FINGERPRINT_SAMPLE = 4096  # values per parameter that enter Model.fingerprint


def sample_index(numel: int, k: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``k`` evenly spaced indices into ``numel`` values, the first and the last included.

    Above 2**24 values the indices are computed in integers (rounded half up): a float32
    ``linspace(0, numel - 1)`` rounds ``numel - 1`` up to ``numel`` there (every 7B embedding and MLP
    matrix), an index out of bounds. Up to 2**24 every index is exact in float32, and the float
    ``linspace`` is kept so that fingerprints (hence the stores they guard) stay what they were.
    """
    if numel <= 2**24:
        return torch.linspace(0, numel - 1, k, device=device).round().long()
    i = torch.arange(k, dtype=torch.long, device=device)
    return (2 * i * (numel - 1) + (k - 1)) // (2 * (k - 1))


def fingerprint(hf: nn.Module, name: str) -> str:
    """Hash of the config, every parameter's name, shape and dtype, and a strided sample of its values
    (:func:`sample_index`; parameters on the meta device contribute no values). See :meth:`probekit.Model.fingerprint`."""
    cfg = hf.config.to_dict() if hasattr(hf.config, "to_dict") else {}
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_") and k not in ("transformers_version",)}
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode())
    h.update(name.encode())
    samples: list[torch.Tensor] = []
    with torch.no_grad():
        for n, p in hf.named_parameters():
            h.update(f"{n}:{tuple(p.shape)}:{p.dtype}".encode())
            if p.device.type == "meta" or p.numel() == 0:  # offloaded by device_map: nothing to read
                continue
            flat = p.detach().reshape(-1)
            k = min(flat.numel(), FINGERPRINT_SAMPLE)
            samples.append(flat[sample_index(flat.numel(), k, flat.device)].float().cpu())
    if samples:
        h.update(torch.cat(samples).numpy().tobytes())
    return h.hexdigest()[:16]
