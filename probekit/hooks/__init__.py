"""Hook layer: hook points, position selectors, the recorder, the activation store, collect().

The names below load on first use, so that ``import probekit.hooks.points`` (a value type, used
by the readout and the report) does not import torch through the recorder and ``collect``.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

_LAZY = {
    "collect": ("collect", "collect"),
    "Recorder": ("recorder", "Recorder"),
    "ActivationStore": ("store", "ActivationStore"),
    "as_store": ("coerce", "as_store"),
    "PositionContext": ("positions", "PositionContext"),
    "normalize_positions": ("positions", "normalize_positions"),
    "select": ("positions", "select"),
    "store_layout": ("plan", "store_layout"),
    "remove_hooks": ("owners", "remove_hooks"),
    "live_hooks": ("owners", "live_hooks"),
}
if TYPE_CHECKING:  # what _LAZY resolves, spelled out for type checkers and the API docs
    from .coerce import as_store
    from .owners import live_hooks, remove_hooks
    from .collect import collect
    from .positions import PositionContext, normalize_positions, select
    from .plan import store_layout
    from .recorder import Recorder
    from .store import ActivationStore

__all__ = ["collect", "Recorder", "ActivationStore", "as_store", "PositionContext", "normalize_positions", "select",
           "store_layout", "remove_hooks", "live_hooks"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """Keeps ``probekit.hooks.collect`` the function, as it was when this package imported it eagerly.

    Loading a submodule binds it on its package (``setattr(probekit.hooks, "collect", <module>)``),
    which would shadow the function of the same name; that one binding is skipped, and
    ``__getattr__`` returns the function. The module stays in ``sys.modules["probekit.hooks.collect"]``.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "collect" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
