"""Position selectors: which token positions of a ``[b, s, d]`` activation are kept, or edited.

Selectors work on the *real* tokens of each row, so left padding, right padding and prompts
of different lengths give the same answer for the same sample:

- ``"last"``: the last real token -> ``[b, d]``
- ``"image_mean"`` / ``"text_mean"``: mean over image / text tokens -> ``[b, d]``
- ``"image"`` / ``"text"``: every image / text token -> ``[b, k, d]`` (k must agree across the batch)
- ``"answer_mean"``: with ``collect(..., answers=...)`` (the answer teacher-forced after the prompt),
  the mean over the tokens that predict an answer token (the prompt's last token to the answer's
  second-last) -> ``[b, d]``: how the model reads while it says the answer
- ``"prompt_last"``: the prompt's last token, before any forced answer (``"last"`` without answers)
- ``"prompt_second_last"``: the token before it, before any forced answer: ProbingPrivacy's position
  (Ju et al., ICML 2025 read index -2 of the chat-formatted prompt, in Qwen-VL-Chat's template the
  ``assistant`` of the assistant header; in LLaVA's ``ASSISTANT`` before the colon)
- ``int``: the i-th real token (negative counts back from the last real one) -> ``[b, d]``
- ``slice``: a slice of the real tokens -> ``[b, k, d]``
- callable ``f(ctx) -> LongTensor[b] | LongTensor[b, k] | BoolTensor[b, s]`` on a :class:`PositionContext`
  (indices are into the padded sequence) -> ``[b, d]`` or ``[b, k, d]``

Every selector is first a boolean mask over ``(batch, seq)`` (:func:`mask`): :func:`select`
reduces an activation with it (recording), :func:`position_mask` takes the union of several
(interventions, which edit in place). The named selectors live in one registry,
:data:`NAMED_POSITIONS` (name -> :class:`NamedPosition`: a mask function and how a recording
reduces the masked tokens); :func:`register_position` adds one, and both recording and
editing then accept it. Means (``"image_mean"``) are recorded, never edited: a mean is not a
position.

Vision-side points (vision tower, projector, Q-Former) have no text positions: every selector
except ``"image"`` (all patches) reduces them to the mean over the image's patches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence, Union

import torch

from ..errors import InputError, PositionError
from .reductions import gather_rows, mask_to_index, masked_mean, mean_weights, one_index

__all__ = ["PositionContext", "Position", "NamedPosition", "NAMED_POSITIONS", "register_position",
           "normalize_positions", "edit_positions", "editable_names", "position_name", "mask", "position_mask",
           "select", "select_vision"]

Position = Union[str, int, slice, Callable[["PositionContext"], torch.Tensor]]


@dataclass
class PositionContext:
    """What a selector may look at: the batch's masks and ids (all ``[b, s]``).

    A named selector's rows (or mean weights) are worked out once per context and shared by
    every point of the batch; ``scratch`` (``collect`` sets it) holds buffers reused across batches.
    """

    attention_mask: torch.Tensor
    image_mask: torch.Tensor
    input_ids: torch.Tensor
    scratch: dict | None = field(default=None, repr=False, compare=False)
    answer_len: torch.Tensor | None = None  # [b]: forced answer tokens at the end of each row (collect's answers=)
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_inputs(cls, inputs: dict, image_mask: torch.Tensor) -> "PositionContext":
        ids = inputs["input_ids"]
        am = inputs.get("attention_mask")
        if am is None:
            am = torch.ones_like(ids)
        return cls(attention_mask=am.bool(), image_mask=image_mask & am.bool(), input_ids=ids)

    def real_index(self) -> torch.Tensor:
        """``[b, s]``: rank of each real token within its row (pads get -1)."""
        am = self.attention_mask.long()
        return torch.where(self.attention_mask, am.cumsum(1) - 1, torch.full_like(am, -1))


# ---------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class NamedPosition:
    """A named selector: ``mask(ctx) -> BoolTensor[b, s]`` and how :func:`select` reduces it.

    ``reduce``: ``"one"`` (exactly one token per row -> ``[b, d]``), ``"tokens"`` (every masked
    token -> ``[b, k, d]``, k equal across the batch) or ``"mean"`` (their mean -> ``[b, d]``;
    not editable). ``label`` names the tokens in error messages.
    """

    mask: Callable[[PositionContext], torch.Tensor]
    reduce: Literal["one", "tokens", "mean"]
    label: str


def _last(ctx: PositionContext) -> torch.Tensor:
    # highest index with attention 1: the last real token for left and right padding alike
    am = ctx.attention_mask
    b, s = am.shape
    idx = (am.long() * torch.arange(1, s + 1, device=am.device)).argmax(1)
    out = torch.zeros(b, s, dtype=torch.bool, device=am.device)
    out[torch.arange(b, device=am.device), idx] = True
    return out


def _answer_span(ctx: PositionContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row the real-token rank of the prompt's last token, and the real-token ranks ``[b, s]``."""
    ri = ctx.real_index()
    n_real = ctx.attention_mask.long().sum(1)
    n_ans = ctx.answer_len.to(n_real.device) if ctx.answer_len is not None else torch.zeros_like(n_real)
    return (n_real - 1 - n_ans).unsqueeze(1), ri


def _prompt_last(ctx: PositionContext) -> torch.Tensor:
    start, ri = _answer_span(ctx)
    return ri == start


def _prompt_second_last(ctx: PositionContext) -> torch.Tensor:
    start, ri = _answer_span(ctx)
    if bool((start < 1).any()):
        raise PositionError('"prompt_second_last" needs prompts of at least two tokens', fix='use "prompt_last"')
    return ri == start - 1


def _answer(ctx: PositionContext) -> torch.Tensor:
    if ctx.answer_len is None:
        raise PositionError('"answer_mean" needs the answers the model is teacher-forced with',
                            fix="pass answers=[...] (one string per image) to collect / scan")
    start, ri = _answer_span(ctx)
    # the prompt's last token predicts the first answer token; the answer's last token predicts nothing of it
    return (ri >= start) & (ri < start + ctx.answer_len.to(ri.device).unsqueeze(1))


def _image(ctx: PositionContext) -> torch.Tensor:
    return ctx.image_mask


def _text(ctx: PositionContext) -> torch.Tensor:
    return ctx.attention_mask & ~ctx.image_mask


NAMED_POSITIONS: dict[str, NamedPosition] = {
    "last": NamedPosition(_last, "one", "last"),
    "image_mean": NamedPosition(_image, "mean", "image"),
    "text_mean": NamedPosition(_text, "mean", "text"),
    "image": NamedPosition(_image, "tokens", "image"),
    "text": NamedPosition(_text, "tokens", "text"),
    "answer_mean": NamedPosition(_answer, "mean", "answer"),
    "prompt_last": NamedPosition(_prompt_last, "one", "prompt_last"),
    "prompt_second_last": NamedPosition(_prompt_second_last, "one", "prompt_second_last"),
}
NAMED = tuple(NAMED_POSITIONS)  # the built-in names (kept for callers that listed them)


def register_position(name: str, mask: Callable[[PositionContext], torch.Tensor],
                      reduce: Literal["one", "tokens", "mean"] = "tokens", label: str | None = None) -> None:
    """Add a named selector, usable by :func:`probekit.collect` and by ``ablate`` / ``steer``.

    Example:
        >>> import torch
        >>> register_position("first_image", lambda ctx: ctx.image_mask & (ctx.image_mask.cumsum(1) == 1), "one")
        >>> ctx = PositionContext(torch.ones(1, 4, dtype=torch.bool), torch.tensor([[False, True, True, False]]),
        ...                       torch.zeros(1, 4, dtype=torch.long))
        >>> select(torch.arange(4.0).view(1, 4, 1), "first_image", ctx).tolist()
        [[1.0]]
        >>> del NAMED_POSITIONS["first_image"]
    """
    if not isinstance(name, str) or not name or name in NAMED_POSITIONS:
        raise InputError(f"cannot register position name {name!r}",
                         fix=f"use a new, non-empty string (taken: {sorted(NAMED_POSITIONS)})")
    if not callable(mask):
        raise InputError(f"mask for position {name!r} is a {type(mask).__name__}",
                         fix="pass a callable(ctx) -> BoolTensor[b, s]")
    if reduce not in ("one", "tokens", "mean"):
        raise InputError(f"reduce={reduce!r} for position {name!r}", fix="use 'one', 'tokens' or 'mean'")
    NAMED_POSITIONS[name] = NamedPosition(mask, reduce, label or name)


def editable_names() -> tuple[str, ...]:
    """Names an intervention can edit: every registered one except means."""
    return tuple(n for n, e in NAMED_POSITIONS.items() if e.reduce != "mean")


# ---------------------------------------------------------------------------- validation


def position_name(p: Position) -> str:
    if isinstance(p, str):
        return p
    if isinstance(p, bool):
        raise PositionError(f"position {p!r} is a bool", fix="use an int index, a slice or a name like 'last'")
    if isinstance(p, int):
        return str(p)
    if isinstance(p, slice):
        return f"{'' if p.start is None else p.start}:{'' if p.stop is None else p.stop}" + (
            f":{p.step}" if p.step is not None else "")
    return getattr(p, "__name__", "callable")


def _check_selector(p: Position, names: Sequence[str], edit: bool) -> None:
    """The checks recording and editing share: a selector's type, its name, its slice parts."""
    if isinstance(p, bool) or not (isinstance(p, (str, int, slice)) or callable(p)):
        what = "is not a selector" if edit else f"({type(p).__name__}) is not a selector"
        raise PositionError(f"position {p!r} {what}",
                            fix=f"use one of {tuple(names)}, an int, a slice, or a callable(ctx) -> indices or mask"
                                + (", or None for every position" if edit else ""))
    if isinstance(p, str) and p not in names:
        if edit and p in NAMED_POSITIONS:
            raise PositionError(f"position {p!r} cannot be edited (a mean is not a position)",
                                fix=f"use one of {tuple(names)}, an int, a slice, a callable, or None for every position")
        raise PositionError(f"unknown position name {p!r}", fix=f"use one of {tuple(names)}")
    if isinstance(p, slice):
        parts = (p.start, p.stop, p.step)
        if not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in parts):
            raise PositionError(f"position slice {p!r} has a part that is not an int",
                                fix="use int (or None) start, stop and step, e.g. slice(0, 4)")


def normalize_positions(positions: Position | Sequence[Position]) -> tuple[list[Position], bool]:
    """Validate selectors for recording up front; returns (list, whether several were asked for)."""
    many = isinstance(positions, (list, tuple))
    items = list(positions) if many else [positions]
    if not items:
        raise PositionError("positions is empty", fix="pass e.g. positions='last' or positions=('last', 'image_mean')")
    for p in items:
        _check_selector(p, tuple(NAMED_POSITIONS), edit=False)
        if isinstance(p, slice) and p.step is not None and p.step < 1:
            raise PositionError(f"position slice {p!r} has step {p.step}; selected tokens keep their order",
                                fix="use a positive step (or None)")
    names = [position_name(p) for p in items]
    if len(set(names)) != len(names):
        raise PositionError(f"positions repeat: {names}", fix="list each position once")
    return items, many


def edit_positions(positions: Position | Sequence[Position] | None) -> list[Position] | None:
    """Validate selectors for an edit (their union is edited); None means every position."""
    if positions is None:
        return None
    items = list(positions) if isinstance(positions, (list, tuple)) else [positions]
    if not items:
        raise PositionError("positions is empty", fix="pass None for every position, or e.g. positions='last'")
    names = editable_names()
    for p in items:
        _check_selector(p, names, edit=True)
    return items


# ---------------------------------------------------------------------------- masks


def _index_mask(p: int, ctx: PositionContext) -> torch.Tensor:
    am = ctx.attention_mask
    lengths = am.sum(1)
    rank = torch.full_like(lengths, p) if p >= 0 else lengths + p
    if bool(((rank < 0) | (rank >= lengths)).any()):
        raise PositionError(f"position {p} is outside a prompt of {int(lengths.min())} real tokens",
                            fix="use a smaller index or 'last'")
    return (ctx.real_index() == rank[:, None]) & am


def _slice_mask(p: slice, ctx: PositionContext) -> torch.Tensor:
    am = ctx.attention_mask
    lengths = am.sum(1)
    out = torch.zeros_like(am, dtype=torch.bool)
    for r in range(am.shape[0]):
        keep = torch.zeros(int(lengths[r]), dtype=torch.bool, device=am.device)
        keep[p] = True
        out[r, am[r]] = keep
    return out


def _call(p: Callable, ctx: PositionContext) -> torch.Tensor:
    """A callable selector's output, checked: a BoolTensor ``[b, s]`` or indices ``[b]`` / ``[b, k]``."""
    am = ctx.attention_mask
    b, s = am.shape
    out = p(ctx)
    if not isinstance(out, torch.Tensor):
        raise PositionError(f"position callable {position_name(p)} returned {type(out).__name__}",
                            fix="return a LongTensor [b] or [b, k] of indices, or a BoolTensor [b, s] mask")
    out = out.to(am.device)
    if out.dtype == torch.bool:
        if out.shape != am.shape:
            raise PositionError(f"position mask has shape {tuple(out.shape)}, the batch is {tuple(am.shape)}",
                                fix="return a BoolTensor shaped like ctx.attention_mask")
        return out
    if out.shape[0] != b or out.dim() not in (1, 2):
        raise PositionError(f"position callable returned indices of shape {tuple(out.shape)} for a batch of {b}",
                            fix="return one index per sample ([b]) or k per sample ([b, k])")
    if bool(((out < 0) | (out >= s)).any()):
        raise PositionError(f"position callable returned an index outside 0..{s - 1}",
                            fix="return indices into the padded sequence (see ctx.attention_mask)")
    return out.long()


def mask(p: Position, ctx: PositionContext) -> torch.Tensor:
    """BoolTensor ``[b, s]``: the tokens one selector covers (rows may cover different numbers)."""
    if isinstance(p, str):
        if p not in NAMED_POSITIONS:
            raise PositionError(f"unknown position name {p!r}", fix=f"use one of {tuple(NAMED_POSITIONS)}")
        return NAMED_POSITIONS[p].mask(ctx).to(torch.bool)
    if isinstance(p, int) and not isinstance(p, bool):
        return _index_mask(p, ctx)
    if isinstance(p, slice):
        return _slice_mask(p, ctx)
    out = _call(p, ctx)
    if out.dtype == torch.bool:
        return out
    m = torch.zeros_like(ctx.attention_mask, dtype=torch.bool)
    return m.scatter_(1, out.view(out.shape[0], -1), True)


def position_mask(ctx: PositionContext, positions: Sequence[Position]) -> torch.Tensor:
    """Bool ``[b, s]``: the union of the selectors' tokens (what an intervention edits).

    Unlike :func:`select`, rows may choose different numbers of tokens.
    """
    out = torch.zeros_like(ctx.attention_mask, dtype=torch.bool)
    for p in positions:
        out |= mask(p, ctx)
    return out


# ---------------------------------------------------------------------------- reductions


def _named(p: str, ctx: PositionContext) -> tuple[NamedPosition, Any]:
    """A named selector's row indices (``[b]`` / ``[b, k]``) or mean weights for this batch, once per context."""
    if p not in NAMED_POSITIONS:
        raise PositionError(f"unknown position name {p!r}", fix=f"use one of {tuple(NAMED_POSITIONS)}")
    entry = NAMED_POSITIONS[p]
    hit = ctx._memo.get(p)
    if hit is not None and hit[0] is entry:
        return hit
    m = entry.mask(ctx).to(torch.bool)
    how = (one_index(m, entry.label) if entry.reduce == "one" else mean_weights(m, entry.label)
           if entry.reduce == "mean" else mask_to_index(m, entry.label))
    ctx._memo[p] = (entry, how)
    return entry, how


def select(h: torch.Tensor, p: Position, ctx: PositionContext) -> torch.Tensor:
    """Apply one selector to ``h[b, s, d]`` of a language-model-side point."""
    if isinstance(p, str):
        entry, how = _named(p, ctx)
        if entry.reduce == "mean":
            return masked_mean(h, *how, ctx.scratch)
        return gather_rows(h, how)
    if isinstance(p, int) and not isinstance(p, bool):
        return gather_rows(h, _index_mask(p, ctx).long().argmax(1))
    if isinstance(p, slice):
        return gather_rows(h, mask_to_index(_slice_mask(p, ctx), position_name(p)))
    out = _call(p, ctx)
    if out.dtype == torch.bool:
        return gather_rows(h, mask_to_index(out, position_name(p)))
    return gather_rows(h, out)


def select_vision(h: torch.Tensor, p: Position, counts: list[int] | None, batch: int) -> torch.Tensor:
    """Reduce a vision-side activation to one row per sample.

    ``h`` is ``[B', p, d]`` (B' a multiple of the batch: several images or tiles per sample) or
    ``[N, d]`` flattened over the batch (Qwen2-VL), split by ``counts``, or ``[1, N, d]``: one
    sequence of every image's patches (Pixtral), split by ``counts`` too.
    """
    if h.dim() == 3 and h.shape[0] == 1 and counts is not None and sum(counts) == h.shape[1]:
        h = h[0]
    if h.dim() == 2:
        if counts is None:
            if h.shape[0] % batch:
                raise PositionError(f"cannot split a flattened vision activation of {h.shape[0]} rows over {batch} samples",
                                    fix="pass one image per prompt")
            counts = [h.shape[0] // batch] * batch
        if len(counts) % batch:
            raise PositionError(f"{len(counts)} images for {batch} samples", fix="pass one image per prompt")
        per = len(counts) // batch
        counts = [sum(counts[i * per:(i + 1) * per]) for i in range(batch)]
        chunks = torch.split(h, counts, dim=0)
        if p == "image":
            if len(set(counts)) != 1:
                raise PositionError("'image' needs the same number of patches per sample", fix="use 'image_mean'")
            return torch.stack(chunks)
        return torch.stack([c.float().mean(0).to(h.dtype) for c in chunks])
    if h.dim() != 3:
        raise PositionError(f"vision activation of unexpected shape {tuple(h.shape)}",
                            fix="record this point with positions='image_mean', or open an issue with the model")
    if h.shape[0] % batch:
        raise PositionError(f"vision activation has {h.shape[0]} images for {batch} samples", fix="pass one image per prompt")
    per = h.shape[0] // batch
    h = h.reshape(batch, per * h.shape[1], h.shape[2])
    if p == "image":
        return h
    return h.float().mean(1).to(h.dtype)
