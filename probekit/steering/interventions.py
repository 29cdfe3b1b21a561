"""Interventions on a running model: `ablate` and `steer` (hooks), `orthogonalize` (weights).

``ablate`` and ``steer`` are context managers made of plain torch hooks; the model's weights
are never touched and every hook is removed on exit, also when the body raises. Positions
are chosen on the *prompt*: a forward pre-hook on the whole model sees each call's
``input_ids`` / ``attention_mask`` and the KV cache. A call with an empty (or no) cache is a
new prompt and the selectors run on it; a call that continues a cache (``generate``'s decoding
steps, where every hook sees a sequence of length 1) is placed at absolute positions
``cache_length + 0..L-1``, so prompt positions stay the same positions as the cache grows and
tokens past the prompt are "generated" (edited when ``generated=True``).

``orthogonalize`` removes a direction from every weight that writes into the residual stream,
for good; it returns a handle that undoes the edit bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..errors import InputError, PositionError, UnsupportedModelError
from ..hooks.positions import PositionContext
from ..models.adapter import Model, get_module
from ..models.compat import cache_from_kwargs
from .directions import Direction

__all__ = ["ablate", "steer", "orthogonalize", "Intervention", "OrthogonalizeHandle", "position_mask",
           "stream_writers"]

Positions = Any  # a selector of probekit.hooks.positions, a list/tuple of them, or None (every position)
_EDIT_NAMES = ("last", "image", "text")


# ---------------------------------------------------------------------------- positions


def _check_positions(positions: Positions) -> list | None:
    if positions is None:
        return None
    items = list(positions) if isinstance(positions, (list, tuple)) else [positions]
    if not items:
        raise PositionError("positions is empty", fix="pass None for every position, or e.g. positions='last'")
    for p in items:
        if isinstance(p, bool) or not (isinstance(p, (str, int, slice)) or callable(p)):
            raise PositionError(f"position {p!r} is not a selector",
                                fix=f"use one of {_EDIT_NAMES}, an int, a slice, a callable(ctx), or None")
        if isinstance(p, str) and p not in _EDIT_NAMES:
            raise PositionError(f"position {p!r} cannot be edited" + (" (a mean is not a position)" if p.endswith("_mean") else ""),
                                fix=f"use one of {_EDIT_NAMES}, an int, a slice, a callable, or None for every position")
    return items


def position_mask(ctx: PositionContext, positions: Sequence[Any]) -> Tensor:
    """Bool ``[b, s]``: the prompt positions the selectors choose (their union), real tokens only.

    Unlike :func:`probekit.hooks.positions.select`, rows may choose different numbers of tokens.
    """
    am = ctx.attention_mask
    b, s = am.shape
    real = ctx.real_index()
    lengths = am.sum(1)
    out = torch.zeros(b, s, dtype=torch.bool, device=am.device)
    for p in positions:
        if p == "last":
            idx = (am.long() * torch.arange(1, s + 1, device=am.device)).argmax(1)
            m = torch.zeros_like(out)
            m[torch.arange(b), idx] = True
        elif p == "image":
            m = ctx.image_mask.clone()
        elif p == "text":
            m = am & ~ctx.image_mask
        elif isinstance(p, int):
            rank = torch.full_like(lengths, p) if p >= 0 else lengths + p
            if bool(((rank < 0) | (rank >= lengths)).any()):
                raise PositionError(f"position {p} is outside a prompt of {int(lengths.min())} real tokens",
                                    fix="use a smaller index or 'last'")
            m = (real == rank[:, None]) & am
        elif isinstance(p, slice):
            m = torch.zeros_like(out)
            for r in range(b):
                keep = torch.zeros(int(lengths[r]), dtype=torch.bool, device=am.device)
                keep[p] = True
                m[r, am[r]] = keep
        else:
            got = p(ctx)
            if not isinstance(got, Tensor):
                raise PositionError(f"position callable returned {type(got).__name__}",
                                    fix="return a BoolTensor [b, s] or a LongTensor [b] / [b, k] of indices")
            got = got.to(am.device)
            if got.dtype == torch.bool:
                if got.shape != am.shape:
                    raise PositionError(f"position mask has shape {tuple(got.shape)}, the prompt is {tuple(am.shape)}")
                m = got
            else:
                if got.shape[0] != b or got.dim() not in (1, 2) or bool(((got < 0) | (got >= s)).any()):
                    raise PositionError(f"position callable returned indices of shape {tuple(got.shape)} for a "
                                        f"prompt of shape {(b, s)}", fix="return indices in 0..s-1, one row per sample")
                m = torch.zeros_like(out)
                m.scatter_(1, got.long().view(b, -1), True)
        out |= m
    return out


def _cache_length(cache: Any) -> int:
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    if isinstance(cache, (tuple, list)) and cache and isinstance(cache[0], (tuple, list)):
        return int(cache[0][0].shape[-2])  # legacy tuple cache: [layers][k, v] of [b, heads, s, hd]
    return 0


class _PromptTracker:
    """Pre-hook on the whole model: the prompt's edit mask and the absolute offset of each call."""

    def __init__(self, model: Model, positions: list | None, generated: bool):
        self.model = model
        self.positions = positions
        self.generated = generated
        self.prompt_mask: Tensor | None = None
        self.offset = 0

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        past = _cache_length(cache_from_kwargs(kwargs))
        if past > 0:
            if self.prompt_mask is None:
                raise PositionError("a forward continues a KV cache whose prompt ran outside this intervention",
                                    fix="enter the ablate/steer context before the prompt's forward (or generate)")
            self.offset = past
            return
        ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], Tensor) else None)
        if ids is None:
            raise PositionError("positions need input_ids, but the model was called with inputs_embeds only",
                                fix="call the model with input_ids, or use positions=None (every position)")
        am = kwargs.get("attention_mask")
        ctx = PositionContext.from_inputs({"input_ids": ids, "attention_mask": am}, self.model.image_mask({"input_ids": ids}))
        self.prompt_mask = position_mask(ctx, self.positions)
        self.offset = 0

    def mask(self, b: int, length: int, device: torch.device) -> Tensor:
        """Bool ``[b, length]``: which positions of the current call to edit."""
        if self.prompt_mask is None:
            raise PositionError("an edited module ran without the model's forward (no prompt seen)",
                                fix="run the whole model (model.hf(...) or generate), or use positions=None")
        pm = self.prompt_mask.to(device)
        if pm.shape[0] != b:
            if b % pm.shape[0]:
                raise PositionError(f"batch of {b} rows but the prompt had {pm.shape[0]}")
            pm = pm.repeat_interleave(b // pm.shape[0], 0)  # beams / samples expanded after the prompt
        idx = torch.arange(self.offset, self.offset + length, device=device)
        out = torch.full((b, length), self.generated, dtype=torch.bool, device=device)
        inside = idx < pm.shape[1]
        out[:, inside] = pm[:, idx[inside]]
        return out


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
    forward pass. On exit every hook is removed (also after an exception); the model's
    parameters and buffers are never written.
    """

    def __init__(self, model: Model, points: list[str], edit: Callable[[str, Tensor], Tensor],
                 positions: list | None, generated: bool):
        self.model = model
        self.points = points
        self.edit = edit
        self.positions = positions
        self.generated = generated
        self.direction: Direction | None = None  # set by ablate / steer
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._tracker = _PromptTracker(model, positions, generated) if positions is not None else None

    def _apply(self, point: str, h: Tensor) -> Tensor:
        side = self.model.target(point).side
        if self._tracker is None or side == "vision":
            return self.edit(point, h)
        shape = h.shape
        h = self.model.lm_activation(point, h, self._tracker.prompt_mask.shape[0] if self._tracker.prompt_mask is not None else 1)
        m = self._tracker.mask(h.shape[0], h.shape[1], h.device)
        return torch.where(m[..., None], self.edit(point, h), h).view(shape)

    def __enter__(self) -> "Intervention":
        if self._handles:
            raise InputError("this intervention is already active", fix="create a new one for each `with` block")
        try:
            if self._tracker is not None:
                self._handles.append(self.model.hf.register_forward_pre_hook(self._tracker, with_kwargs=True))
            for point in self.points:
                tgt = self.model.target(point)
                mod = get_module(self.model.hf, tgt.path)
                if tgt.mode == "input":
                    def pre(module, args, kwargs, _p=point):
                        if args and isinstance(args[0], Tensor):
                            return (self._apply(_p, args[0]),) + tuple(args[1:]), kwargs
                        kwargs = dict(kwargs)
                        kwargs["hidden_states"] = self._apply(_p, kwargs["hidden_states"])
                        return args, kwargs
                    self._handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
                else:
                    def post(module, args, output, _p=point):
                        return _replace_first(output, self._apply(_p, _first(output)))
                    self._handles.append(mod.register_forward_hook(post))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()
        if self._tracker is not None:
            self._tracker.prompt_mask = None

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def _resolve_points(model: Model, direction: Direction | None, points: str | Sequence[str] | None) -> list[str]:
    if points is None:
        points = "lm.*.resid" if direction is None or direction.shared else direction.points
    return model.resolve(points)


def _check_width(model: Model, width: int, what: str) -> None:
    if width != model.d_model:
        raise InputError(f"{what} has width {width} but the model's d_model is {model.d_model}",
                         fix="use a direction fitted on this model")


def _check_positions_side(model: Model, names: list[str], positions: list | None) -> None:
    vision = [p for p in names if model.target(p).side == "vision"]
    if vision and positions is not None:
        raise PositionError(f"points {vision} are on the image side, where token positions do not apply",
                            fix="intervene there with positions=None (every patch), in a separate call")


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
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(float(alpha)):
        raise InputError(f"alpha must be a finite number, got {alpha!r}", fix="e.g. alpha=4.0")
    if isinstance(vector, Direction):
        direction = vector
    elif isinstance(vector, Tensor):
        if vector.ndim != 1 or not bool(torch.isfinite(vector).all()):
            raise InputError(f"steering vector has shape {tuple(vector.shape)} or non-finite values",
                             fix="pass a finite Tensor[d_model] or a Direction")
        direction = Direction({"*": vector.detach().to("cpu", torch.float64)}, method="vector")
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


# ---------------------------------------------------------------------------- orthogonalize


def stream_writers(model: Model) -> list[tuple[str, str]]:
    """``(dotted path, kind)`` of every module that writes into the language model's residual stream (its family knows them)."""
    return model.residual_writers()


class OrthogonalizeHandle:
    """Undo handle of :func:`orthogonalize`: ``undo()`` (or leaving a ``with`` block) restores the
    original weights bit for bit, the embedding tie included."""

    def __init__(self, model: Model, saved: dict[str, Tensor], untied: tuple | None, paths: list[str]):
        self.model = model
        self._saved = saved
        self._untied = untied
        self.edited = paths
        self.active = True

    def undo(self) -> None:
        if not self.active:
            return
        params = dict(self.model.hf.named_parameters(remove_duplicate=False))
        with torch.no_grad():
            for name, value in self._saved.items():
                params[name].copy_(value)
        if self._untied is not None:
            head, original, flags = self._untied
            head.weight = original
            for cfg, value in flags:
                cfg.tie_word_embeddings = value
        self._saved = {}
        self.active = False

    def __enter__(self) -> "OrthogonalizeHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.undo()


def orthogonalize(model: Model, direction: Direction | Tensor, point: str | None = None) -> OrthogonalizeHandle:
    """Remove a direction (or subspace) from every weight that writes into the residual stream.

    Embedding rows ``E <- E - E Q^T Q``; output projections (the projector's last linear layer,
    every attention output and MLP down projection) ``W <- W - Q^T Q W`` and ``b <- b - Q^T Q b``.
    Afterwards the residual stream has no component along ``Q`` at any layer, and the
    logits equal those inside ``ablate(model, d, points=["lm.embed", "lm.*.attn", "lm.*.mlp"])``
    (norms sit at block inputs, so the stream itself must be orthogonal; ablating at
    ``lm.*.resid`` alone is not equivalent, as the MLP reads the stream after attention).

    Tied embeddings (PaliGemma, BLIP-2's OPT): ``lm_head`` is given its own copy of the
    original weights first, so unembedding is unchanged, and ``tie_word_embeddings`` is set
    to False in the config so that ``save_pretrained`` / ``from_pretrained`` keep them apart;
    ``undo()`` ties them again.

    ``direction``: a Direction with one shared basis, or one for ``point``; or a ``Tensor[d]``.
    LEACE erasers are affine and oblique, not a weight edit: they raise InputError.

    Example:
        >>> import probekit, tempfile, torch
        >>> m = probekit.load(probekit.tiny.build("llava", tempfile.mkdtemp() + "/m"))
        >>> before = {k: v.clone() for k, v in m.hf.state_dict().items()}
        >>> with orthogonalize(m, torch.randn(m.d_model)):
        ...     pass
        >>> all(torch.equal(before[k], v) for k, v in m.hf.state_dict().items())
        True
    """
    if isinstance(direction, Tensor):
        direction = Direction.from_vectors(direction)
    if not isinstance(direction, Direction):
        raise InputError(f"direction is a {type(direction).__name__}", fix="pass a Direction or a Tensor[d_model]")
    if direction.erasers:
        raise InputError("a LEACE eraser is affine and oblique; it cannot be folded into the weights",
                         fix="ablate with it, or orthogonalize an orthogonal direction (Direction.from_means)")
    if point is None:
        if not direction.shared and len(direction.points) != 1:
            raise InputError(f"direction has {len(direction.points)} per-point vectors; orthogonalize uses one",
                             fix="pass point='lm.12.resid' (which point's vector to remove everywhere)")
        point = direction.points[0]
    Q = direction.basis(point)
    _check_width(model, Q.shape[1], "direction")
    writers = stream_writers(model)  # raises on unsupported models before anything is edited
    hf = model.hf
    params = dict(hf.named_parameters(remove_duplicate=False))
    targets = []  # (name, kind, parameter), all checked before anything is edited
    for path, kind in writers:
        mod = get_module(hf, path)
        for pname in ("weight", "bias"):
            if getattr(mod, pname, None) is None:
                continue
            full = f"{path}.{pname}"
            if full not in params:
                raise UnsupportedModelError(f"{full} is not a parameter of the model", fix="use ablate instead")
            targets.append((full, kind, pname))
    emb = hf.get_input_embeddings()
    head = model.unembed
    untied = None
    saved: dict[str, Tensor] = {}
    try:
        if getattr(head, "weight", None) is not None and head.weight is emb.weight:
            # lm_head shares the embedding matrix: give it its own copy so unembedding is unchanged
            original = head.weight
            head.weight = nn.Parameter(original.detach().clone(), requires_grad=original.requires_grad)
            cfgs = [c for c in (hf.config, getattr(hf.config, "text_config", None)) if c is not None]
            flags = [(c, getattr(c, "tie_word_embeddings", True)) for c in cfgs]
            for c in cfgs:
                c.tie_word_embeddings = False
            untied = (head, original, flags)
        with torch.no_grad():
            for full, kind, pname in targets:
                p = params[full]
                saved[full] = p.detach().to("cpu", copy=True)
                q = Q.to(p.device, torch.float64)
                w = p.detach().to(torch.float64)
                if kind == "embedding":  # rows live in the stream: E - (E Q^T) Q
                    new = w - (w @ q.T) @ q
                else:  # output side of a linear layer (weight [d, in], bias [d]): Q^T Q removed from the left
                    new = w - q.T @ (q @ w)
                p.copy_(new.to(p.dtype))
    except BaseException:
        OrthogonalizeHandle(model, saved, untied, []).undo()
        raise
    return OrthogonalizeHandle(model, saved, untied, [p for p, _ in writers])
