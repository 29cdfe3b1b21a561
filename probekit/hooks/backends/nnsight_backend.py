"""Record hook points through nnsight, as a cross-check of the plain torch backend.

``record(hf_model, inputs, targets)`` runs ``hf_model(**inputs)`` once inside an
``nnsight`` trace and returns, per point, exactly the tensor a torch forward hook on
the target module would see (output, element 0 if a tuple; or first positional input /
``hidden_states`` kwarg).

How nnsight 0.8 touches the model: ``NNsight(model)`` does not register torch hooks.
It puts two entries into the ``__dict__`` of *every* submodule: ``forward`` (a
``Controller`` shadowing the class method) and ``__nnsight__`` (its state); nnsight
leaves them there for good ("inert outside a trace"). Wrapping costs ~2 ms per 70
modules, so we wrap per call and delete exactly the entries we added afterwards: the
model leaves ``record`` as it came in (no hooks, no attributes, no weight changes).

We read values through ``tracer.cache(modules=...)`` rather than ``envoy.output.save()``
per module: ``.output`` reads must follow execution order (vision tower before the
language model), which ``cache`` makes irrelevant.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator, Mapping

import torch

from probekit.errors import BackendError

__all__ = ["record", "record_many", "available"]

_ROOT = "model"  # nnsight's path for the root envoy
_STATE = "__nnsight__"  # nnsight.intervention.source.STATE


def available() -> bool:
    """True when nnsight can be imported."""
    try:
        import nnsight  # noqa: F401
    except Exception:
        return False
    return True


def _import_nnsight():
    try:
        import nnsight
    except Exception as exc:  # pragma: no cover - depends on the environment
        raise BackendError(
            f"the nnsight backend needs the nnsight package, which cannot be imported ({exc})",
            fix="pip install nnsight (0.8 tested), or use backend='torch'",
        ) from exc
    return nnsight


def _check_targets(hf_model: torch.nn.Module, targets: Mapping[str, tuple[str, str]]) -> None:
    names = dict(hf_model.named_modules())
    for point, (path, mode) in targets.items():
        if mode not in ("output", "input"):
            raise BackendError(
                f"point {point!r}: mode {mode!r} is neither 'output' nor 'input'",
                fix="use mode 'output' or 'input'",
            )
        if path not in names:
            raise BackendError(
                f"point {point!r}: module {path!r} is not in the model",
                fix="use a dotted path as listed by model.named_modules()",
            )


def _nn_path(path: str) -> str:
    return _ROOT if path == "" else f"{_ROOT}.{path}"


@contextmanager
def _wrapped(hf_model: torch.nn.Module) -> Iterator[object]:
    """``nnsight.NNsight(hf_model)``, undone on exit (only the attributes we added)."""
    nnsight = _import_nnsight()
    modules = list(hf_model.modules())
    had = [(m, "forward" in m.__dict__, _STATE in m.__dict__) for m in modules]
    try:
        yield nnsight.NNsight(hf_model)
    finally:
        for module, had_forward, had_state in had:
            if not had_forward:
                module.__dict__.pop("forward", None)
            if not had_state:
                module.__dict__.pop(_STATE, None)


def _first_input(inputs: object) -> torch.Tensor:
    args, kwargs = inputs  # nnsight records inputs as (args, kwargs)
    if args:
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    if kwargs:
        return next(iter(kwargs.values()))
    raise BackendError("module was called without inputs", fix="record its output instead")


def _trace_once(wrapped, inputs: Mapping[str, torch.Tensor], targets: Mapping[str, tuple[str, str]]):
    paths = sorted({_nn_path(path) for path, _ in targets.values()})
    want_inputs = any(mode == "input" for _, mode in targets.values())
    with torch.inference_mode():
        with wrapped.trace(**inputs) as tracer:
            cache = tracer.cache(
                modules=paths, device=None, detach=True, include_inputs=want_inputs
            )
    out: dict[str, torch.Tensor] = {}
    for point, (path, mode) in targets.items():
        entry = cache[_nn_path(path)]
        if mode == "output":
            value = entry.output
            if isinstance(value, (tuple, list)):
                value = value[0]
        else:
            value = _first_input(entry.inputs)
        if not isinstance(value, torch.Tensor):
            raise BackendError(
                f"point {point!r}: module {path!r} produced a {type(value).__name__}, not a tensor",
                fix="choose a module whose output (or element 0) is a tensor",
            )
        out[point] = value.detach()
    return out


def record(
    hf_model: torch.nn.Module,
    inputs: Mapping[str, torch.Tensor],
    targets: Mapping[str, tuple[str, str]],
) -> dict[str, torch.Tensor]:
    """Run ``hf_model(**inputs)`` under nnsight; return point -> full tensor.

    ``targets`` maps a point name to ``(dotted module path, "output" | "input")``.
    Tensors keep the dtype/device the model produced. The model is left unchanged.
    """
    return record_many(hf_model, [inputs], targets)[0]


def record_many(
    hf_model: torch.nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    targets: Mapping[str, tuple[str, str]],
) -> list[dict[str, torch.Tensor]]:
    """Like :func:`record` for several batches, wrapping the model once."""
    _check_targets(hf_model, targets)
    if not targets:
        return [{} for _ in batches]
    with _wrapped(hf_model) as wrapped:
        return [_trace_once(wrapped, batch, targets) for batch in batches]
