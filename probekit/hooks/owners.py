"""Who owns the hooks probekit puts on a model, so that none outlives its owner.

Every torch hook probekit registers belongs to an owner (a :class:`~probekit.hooks.Recorder`, a
steering :class:`~probekit.steering.Intervention`) through a :class:`Hooks` set. The owner removes
them when its ``with`` block exits, also on an exception or Ctrl-C. An owner that was entered and
never exited (``rec.__enter__()`` and then dropped) has its hooks removed when it is garbage
collected: the hooks hold the owner only weakly, so dropping the last reference is enough.
:func:`remove_hooks` clears every probekit hook still on a model, whoever holds its owner.

Example:
    >>> import probekit, tempfile, gc
    >>> m = probekit.load(probekit.tiny.build("llava", tempfile.mkdtemp() + "/m"))
    >>> rec = probekit.Recorder(m, ["lm.0.resid"]).__enter__()   # entered, never exited
    >>> len(live_hooks(m)), remove_hooks(m), len(live_hooks(m))
    (1, 1, 0)
"""

from __future__ import annotations

import weakref
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["Hooks", "remove_hooks", "live_hooks"]

_LIVE: "weakref.WeakKeyDictionary[nn.Module, weakref.WeakSet[Hooks]]" = weakref.WeakKeyDictionary()


def _remove(handles: list[RemovableHandle]) -> None:
    while handles:
        handles.pop().remove()


class Hooks:
    """The hooks one owner put on one model; removed by :meth:`remove` or when the owner is collected."""

    def __init__(self, owner: Any, hf: nn.Module):
        self.handles: list[RemovableHandle] = []
        self.owner = type(owner).__name__
        # the finalizer holds the list, never the owner: collecting the owner removes the hooks
        self._finalizer = weakref.finalize(owner, _remove, self.handles)
        self._hf = weakref.ref(hf)

    def add(self, handle: RemovableHandle) -> None:
        if not self.handles:
            hf = self._hf()
            if hf is not None:
                _LIVE.setdefault(hf, weakref.WeakSet()).add(self)
        self.handles.append(handle)

    def remove(self) -> None:
        _remove(self.handles)

    def __len__(self) -> int:
        return len(self.handles)

    def __bool__(self) -> bool:
        return bool(self.handles)


def _hf(model: Any) -> nn.Module:
    return getattr(model, "hf", model)


def live_hooks(model: Any) -> list[str]:
    """One entry per probekit hook on ``model`` (a probekit Model or its HF module): its owner's class."""
    return [h.owner for h in list(_LIVE.get(_hf(model), ())) for _ in h.handles]


def remove_hooks(model: Any) -> int:
    """Remove every hook probekit put on ``model`` that is still there; returns how many."""
    n = 0
    for h in list(_LIVE.get(_hf(model), ())):
        n += len(h.handles)
        h.remove()
    return n
