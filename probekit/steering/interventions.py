"""Interventions on a running model: `ablate` and `steer`, context managers of plain torch hooks.

The model's weights are never touched and every hook is removed on exit, also when the body
raises. Positions are chosen on the *prompt* (:mod:`probekit.steering.tracker`, with the
selectors of :mod:`probekit.hooks.positions`); tokens past the prompt are "generated" (edited
when ``generated=True``). A new intervention is an ``edit(point, h) -> h'`` function handed
to :class:`Intervention`.

``orthogonalize`` (a weight edit with an undo handle) lives in
:mod:`probekit.steering.weights` and is re-exported here.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any, Callable

import torch
from torch import Tensor

from ..errors import InputError, PositionError, check_number
from ..hooks.owners import Hooks
from ..hooks.positions import NAMED_POSITIONS, edit_positions, position_mask
from ..models.adapter import Model, get_module
from .directions import Direction
from .inputs import _coerce
from .weights import OrthogonalizeHandle, orthogonalize, stream_writers
from .tracker import PromptTracker

__all__ = ["ablate", "steer", "orthogonalize", "Intervention", "OrthogonalizeHandle", "position_mask",
           "stream_writers"]

Positions = Any  # a selector of probekit.hooks.positions, a list/tuple of them, or None (every position)
_check_positions = edit_positions  # the name steering used before the registry moved to hooks/positions.py


# ---------------------------------------------------------------------------- hooks


def _replace_first(output: Any, new: Tensor) -> Any:
    """``output`` with its leading tensor replaced (a tensor, a tuple led by one, a ModelOutput)."""
    if isinstance(output, Tensor):
        return new
    if isinstance(output, tuple) and output and isinstance(output[0], Tensor):
        return (new,) + tuple(output[1:])
    if isinstance(output, list) and output and isinstance(output[0], Tensor):
        return [new] + output[1:]
    if hasattr(output, "keys"):
        for k in output.keys():
            if isinstance(output[k], Tensor):
                output[k] = new
                return output
    raise TypeError(f"cannot edit a module output of type {type(output).__name__}")


def _first(output: Any) -> Tensor:
    from ..hooks.recorder import first_tensor

    return first_tensor(output)


class Intervention:
    """Context manager applying ``edit(point, h) -> h'`` at the outputs (or inputs) of hook points.

    Built by :func:`ablate` and :func:`steer`; all checks run at construction, before any
    forward pass. On exit every hook is removed (also after an exception or Ctrl-C; one entered
    and never exited loses its hooks when it is garbage-collected); the model's parameters and
    buffers are never written.
    """

    def __init__(self, model: Model, points: list[str], edit: Callable[[str, Tensor], Tensor],
                 positions: list | None, generated: bool):
        self.model = model
        self.points = points
        self.edit = edit
        self.positions = positions
        self.generated = generated
        self.direction: Direction | None = None  # set by ablate / steer
        self._hooks = Hooks(self, model.hf)  # removed on exit, or when this intervention is garbage-collected
        sides = sorted({model.target(p).side for p in points} - {"vision"})
        self._tracker = PromptTracker(model, positions, generated, sides) if positions is not None else None

    def _apply(self, point: str, h: Tensor) -> Tensor:
        side = self.model.target(point).side
        if self._tracker is None or side == "vision":
            return self.edit(point, h)
        shape = h.shape
        h = self.model.lm_activation(point, h, self._tracker.batch(side))
        m = self._tracker.mask(h.shape[0], h.shape[1], h.device, side, point)
        return torch.where(m[..., None], self.edit(point, h), h).view(shape)

    def __enter__(self) -> "Intervention":
        if self._hooks:
            raise InputError("this intervention is already active", fix="create a new one for each `with` block")
        me = weakref.ref(self)  # the hooks hold the intervention weakly: dropping it removes them
        try:
            if self._tracker is not None:
                self._hooks.add(self.model.hf.register_forward_pre_hook(self._tracker, with_kwargs=True))
            for point in self.points:
                tgt = self.model.target(point)
                mod = get_module(self.model.hf, tgt.path)
                if tgt.mode == "input":
                    def pre(module, args, kwargs, _p=point):
                        iv = me()
                        if iv is None:
                            return None
                        if args and isinstance(args[0], Tensor):
                            return (iv._apply(_p, args[0]),) + tuple(args[1:]), kwargs
                        kwargs = dict(kwargs)
                        kwargs["hidden_states"] = iv._apply(_p, kwargs["hidden_states"])
                        return args, kwargs
                    self._hooks.add(mod.register_forward_pre_hook(pre, with_kwargs=True))
                else:
                    def post(module, args, output, _p=point):
                        iv = me()
                        return None if iv is None else _replace_first(output, iv._apply(_p, _first(output)))
                    self._hooks.add(mod.register_forward_hook(post))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        self._hooks.remove()
        if self._tracker is not None:
            self._tracker.prompt_masks = {}

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def _resolve_points(model: Model, direction: Direction | None, points: str | Sequence[str] | None) -> list[str]:
    if points is None:
        points = "lm.*.resid" if direction is None or direction.shared else direction.points
    return model.resolve(points)


def _check_positions_side(model: Model, names: list[str], positions: list | None) -> None:
    vision = [p for p in names if model.target(p).side == "vision"]
    if vision and positions is not None:
        raise PositionError(f"points {vision} are on the image side, where token positions do not apply",
                            fix="intervene there with positions=None (every patch), in a separate call")
    image = [p for p in positions or () if isinstance(p, str) and NAMED_POSITIONS[p].label == "image"]
    free = [p for p in names if model.image_free(model.target(p).side)]
    if image and free:
        side = model.target(free[0]).side
        raise PositionError(f"position {image[0]!r} does not apply to points {free[:4]}: they lie on "
                            f"{model.describe_sequence(side)}, which holds no image tokens",
                            fix="edit them at 'last', 'text', an int, a slice or every position (None); image "
                                "positions apply to the points of the sequence that holds the image")


def _point_width(model: Model, point: str) -> int | None:
    """Width of a point's activation, known without a forward pass (None when it is not)."""
    return model.point_width(point)


def _check_widths(model: Model, names: list[str], width: int, what: str) -> None:
    for p in names:
        want = _point_width(model, p)
        if want is not None and want != width:
            raise InputError(f"{what} has width {width} but point {p!r} of this model is {want} wide",
                             fix="use a direction fitted on this model at these points")


def ablate(model: Model, direction: Direction, points: str | Sequence[str] | None = None,
           positions: Positions = None, generated: bool = True) -> Intervention:
    """Project ``direction`` out of the outputs of ``points`` (a context manager).

    ``x <- x - Q^T Q x`` for the point's orthonormal basis ``Q [k, d]``; a LEACE direction
    applies its affine eraser ``x <- x - left right (x - mean)`` instead.

    Args:
        points: names or globs; None = the direction's own points (``"lm.*.resid"`` for a
            direction shared by every point).
        positions: None edits every position; else selectors (``"last"``, ``"image"``,
            ``"text"``, an int, a slice, a callable(ctx) -> mask/indices, or a list of them)
            evaluated on the prompt of each forward.
        generated: whether positions after the prompt (``generate``'s new tokens) are edited
            when ``positions`` is given.

    To match :func:`orthogonalize` exactly, ablate at every write into the residual stream:
    ``points=["lm.embed", "lm.*.attn", "lm.*.mlp"]`` (plus ``"lm.*.xattn"`` for Mllama).

    Example:
        >>> import probekit, tempfile, torch
        >>> m = probekit.load(probekit.tiny.build("llava", tempfile.mkdtemp() + "/m"))
        >>> d = Direction.from_vectors(torch.randn(m.d_model))
        >>> inputs = m.prepare(probekit.tiny.fixture_images(1, 32), ["What colour?"])
        >>> with ablate(m, d, points="lm.*.resid"), torch.no_grad():
        ...     logits = m.hf(**inputs).logits
        >>> logits.shape[0]
        1
    """
    if not isinstance(direction, Direction):
        raise InputError(f"direction is a {type(direction).__name__}", fix="build one with probekit.Direction.from_means(...)")
    names = _resolve_points(model, direction, points)
    pos = _check_positions(positions)
    _check_positions_side(model, names, pos)
    for p in names:
        if direction.eraser(p) is None:
            direction.basis(p)  # raises UnknownPointError when the direction has nothing for p
    _check_widths(model, names, direction.d_model, f"direction ({direction.method})")
    cache: dict[tuple, Any] = {}

    def edit(point: str, h: Tensor) -> Tensor:
        eraser = direction.eraser(point)
        if eraser is not None:
            return eraser(h)
        key = (point, h.device)
        if key not in cache:
            cache[key] = direction.basis(point).to(h.device, torch.promote_types(h.dtype, torch.float32))
        Q = cache[key]
        hh = h.to(Q.dtype)
        return (hh - (hh @ Q.T) @ Q).to(h.dtype)

    iv = Intervention(model, names, edit, pos, bool(generated))
    iv.direction = direction  # evaluate() reads which images it was fitted on
    return iv


def steer(model: Model, vector: Direction | Tensor, alpha: float = 1.0, points: str | Sequence[str] | None = None,
          positions: Positions = None, generated: bool = True) -> Intervention:
    """Add ``alpha * vector`` to the outputs of ``points`` (a context manager).

    ``vector`` is a :class:`Direction` (its unit vector per point) or a ``Tensor[d]`` used as
    given (not normalised) at every point. ``points``, ``positions`` and ``generated`` as in
    :func:`ablate`; ``points=None`` with a tensor means ``"lm.*.resid"``.

    Example:
        >>> import probekit, tempfile, torch
        >>> m = probekit.load(probekit.tiny.build("llava", tempfile.mkdtemp() + "/m"))
        >>> inputs = m.prepare(probekit.tiny.fixture_images(1, 32), ["What colour?"])
        >>> with steer(m, torch.ones(m.d_model), alpha=0.0, points="lm.0.resid"), torch.no_grad():
        ...     a = m.hf(**inputs).logits
        >>> bool(torch.equal(a, m.hf(**inputs).logits))
        True
    """
    check_number(alpha, "alpha", example=4.0)
    if isinstance(vector, Direction):
        direction = vector
    elif isinstance(vector, Tensor):
        vector = _coerce(vector, "steering vector", ndim=(1,), floating=False,
                         fix="pass a finite Tensor[d_model] or a Direction")
        direction = Direction({"*": vector}, method="vector")
    else:
        raise InputError(f"vector is a {type(vector).__name__}", fix="pass a Direction or a Tensor[d_model]")
    names = _resolve_points(model, direction, points)
    pos = _check_positions(positions)
    _check_positions_side(model, names, pos)
    _check_widths(model, names, direction.d_model, "steering vector")
    vecs = {p: (direction.vector(p) if isinstance(vector, Direction) else direction.basis(p)[0]) for p in names}
    cache: dict[tuple, Tensor] = {}
    a = float(alpha)

    def edit(point: str, h: Tensor) -> Tensor:
        key = (point, h.device, h.dtype)
        if key not in cache:
            cache[key] = (a * vecs[point]).to(h.device, h.dtype)
        return h + cache[key]

    iv = Intervention(model, names, edit, pos, bool(generated))
    iv.direction = direction  # evaluate() reads which images it was fitted on
    return iv
