"""`Recorder`: plain torch forward hooks that record chosen points, always removed on exit."""

from __future__ import annotations

import weakref
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from ..errors import InputError
from ..models.adapter import HookTarget, Model, get_module
from .owners import Hooks

__all__ = ["Recorder", "first_tensor", "StopForward"]


class StopForward(Exception):
    """Raised inside a hook once every requested point is recorded: the rest of the forward is skipped."""


def first_tensor(value: Any) -> torch.Tensor:
    """The activation inside a module's output (a tensor, a tuple led by one, or a ModelOutput)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    if hasattr(value, "last_hidden_state") and isinstance(value.last_hidden_state, torch.Tensor):
        return value.last_hidden_state
    if hasattr(value, "values"):
        for v in value.values():
            if isinstance(v, torch.Tensor):
                return v
    raise TypeError(f"no tensor in module output of type {type(value).__name__}")


def _input_hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    return kwargs["hidden_states"]


class Recorder:
    """Record the outputs (or inputs) of hook points during a forward pass.

    ``reduce(point, tensor)`` runs inside the hook (e.g. a position selector), so only what is
    kept stays in memory. ``targets`` overrides where some points are read (a point -> a
    :class:`~probekit.models.adapter.HookTarget`). With ``stop_early=True`` the forward stops as soon as every point has
    been recorded (run the model inside ``with rec: ...`` and call :meth:`run`).

    Every hook is removed when the ``with`` block exits, also when the forward raises (or on
    Ctrl-C); a recorder entered and never exited loses its hooks when it is garbage-collected
    (:mod:`probekit.hooks.owners`; :func:`~probekit.hooks.owners.remove_hooks` clears them at once).

    Example:
        >>> import probekit, tempfile, torch
        >>> m = probekit.load(probekit.tiny.build("llava", tempfile.mkdtemp() + "/m"))
        >>> inputs = m.prepare(probekit.tiny.fixture_images(1, 32), ["What shape?"])
        >>> with Recorder(m, ["lm.0.resid"]) as rec, torch.no_grad():
        ...     _ = m.hf(**inputs)
        >>> rec.cache["lm.0.resid"].shape[0]
        1
    """

    def __init__(
        self,
        model: Model,
        points: Iterable[str],
        reduce: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
        stop_early: bool = False,
        detach: bool = True,
        targets: Mapping[str, HookTarget] | None = None,
    ):
        self.model = model
        self.points = list(points)
        self.reduce = reduce
        self.stop_early = stop_early
        self.detach = detach
        self.cache: dict[str, torch.Tensor] = {}
        self._hooks = Hooks(self, model.hf)  # removed on exit, or when this recorder is garbage-collected
        # raises on unknown points before hooking; ``targets`` reads a point elsewhere (run_backend reads
        # ``logits`` at the unembedding's input and applies the head to the selected rows only)
        self._targets = {p: (targets or {}).get(p) or model.target(p) for p in self.points}

    def _store(self, point: str, t: torch.Tensor) -> None:
        if self.detach:
            t = t.detach()
        self.cache[point] = self.reduce(point, t) if self.reduce is not None else t
        if self.stop_early and len(self.cache) == len(self.points):
            raise StopForward

    def __enter__(self) -> "Recorder":
        if self._hooks:
            raise InputError("this Recorder is already recording (entered twice)",
                             fix="exit it first, or create a new Recorder for each `with` block")
        self.cache = {}
        me = weakref.ref(self)  # the hooks hold the recorder weakly: dropping it removes them
        try:
            for point, tgt in self._targets.items():
                mod: nn.Module = get_module(self.model.hf, tgt.path)
                if tgt.mode == "input":
                    def pre(module, args, kwargs, _p=point):
                        rec = me()
                        if rec is not None:
                            rec._store(_p, _input_hidden(args, kwargs))
                    self._hooks.add(mod.register_forward_pre_hook(pre, with_kwargs=True))
                else:
                    def post(module, args, output, _p=point, _f=tgt.post):
                        rec = me()
                        if rec is not None:
                            t = first_tensor(output)
                            rec._store(_p, t if _f is None else _f(t))
                    self._hooks.add(mod.register_forward_hook(post))
        except BaseException:
            self.remove()
            raise
        return self

    def run(self, **inputs: Any) -> Any:
        """Run the model's forward; a :class:`StopForward` from an early stop returns None."""
        try:
            return self.model.hf(**inputs)
        except StopForward:
            return None

    def remove(self) -> None:
        self._hooks.remove()

    def __exit__(self, *exc: Any) -> None:
        self.remove()
