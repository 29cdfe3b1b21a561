"""What differs between the transformers releases probekit supports, in one place.

transformers 5.24 renamed the KV-cache argument and output from ``past_key_values`` to
``cache`` (the old name is deprecated until 5.40 on ``forward``, but ``generate`` passes only the
new one). Code that reads a forward's keyword arguments from a hook, or hands a cache to the
next forward, goes through these helpers so it works on every supported release.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

__all__ = ["CACHE_NAMES", "cache_from_kwargs", "cache_kwarg", "output_cache"]

# newest first: the first one present wins
CACHE_NAMES = ("cache", "past_key_values", "past_key_value", "cache_params")


def cache_from_kwargs(kwargs: dict) -> Any:
    """The KV cache handed to a forward, under whichever name this release uses (None if none).

    Example:
        >>> cache_from_kwargs({"past_key_values": 3}), cache_from_kwargs({"cache": 4}), cache_from_kwargs({})
        (3, 4, None)
    """
    for name in CACHE_NAMES:
        value = kwargs.get(name)
        if value is not None:
            return value
    return None


def cache_kwarg(model: nn.Module) -> str:
    """The keyword ``model.forward`` takes its KV cache by: ``"cache"`` from 5.24, else ``"past_key_values"``.

    Example:
        >>> class M(nn.Module):
        ...     def forward(self, input_ids=None, cache=None): ...
        >>> cache_kwarg(M())
        'cache'
    """
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(output: Any) -> Any:
    """The KV cache a forward returned (``output.cache`` from 5.24, ``output.past_key_values`` before)."""
    keys = output.keys() if hasattr(output, "keys") else ()
    for name in ("cache", "past_key_values"):
        if name in keys:
            return output[name]
    return None
