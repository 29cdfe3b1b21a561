"""`orthogonalize`: remove a direction from every weight that writes into the residual stream.

A weight edit for good (no hooks); it returns a handle that undoes the edit bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InputError, UnsupportedModelError
from ..models.adapter import Model, get_module
from .directions import Direction

__all__ = ["orthogonalize", "OrthogonalizeHandle", "stream_writers"]


def _check_width(model: Model, width: int, what: str) -> None:
    if width != model.d_model:
        raise InputError(f"{what} has width {width} but the model's d_model is {model.d_model}",
                         fix="use a direction fitted on this model")




def stream_writers(model: Model) -> list[tuple[str, str]]:
    """``(dotted path, kind)`` of every module that writes into the language model's residual stream.

    Kinds: ``"embedding"`` and ``"linear"``; the model's family knows them
    (:meth:`probekit.Model.residual_writers`), and raises UnsupportedModelError where the
    stream is not a plain sum of these outputs (post-norm blocks).
    """
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
