"""Where things live in a model: the :class:`Layout` a family finds, the :class:`HookTarget` of a point, and
the path helpers the families use to find them.

The lowest layer of :mod:`probekit.models`: it imports nothing of probekit but the errors, so the family
modules (which build layouts and targets) and the adapter (which uses them) both import it and not each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from ..errors import UnsupportedModelError

__all__ = ["HookTarget", "Layout", "find_first", "get_module", "require"]


@dataclass(frozen=True)
class HookTarget:
    """Where a point is read: a module and whether its output or its input is taken.

    ``side`` is ``"lm"`` for points on the language model's token sequence (positions apply),
    ``"encoder"`` for points on an encoder-decoder's encoder sequence (Florence-2: image tokens
    and prompt; positions apply there, its ``lm`` side being the decoder's sequence) and
    ``"vision"`` for points on image patches or query tokens (pooled per image). The
    family builds these (:meth:`~probekit.models.families.base.Family.hook_targets`).
    """

    path: str
    mode: str = "output"  # "output" | "input"
    side: str = "lm"  # "lm" | "encoder" | "vision"
    width: int | None = None  # features per token, when known without a forward pass
    # applied to the module's output before anything else (the ``logits`` point: the model's output map
    # after lm_head, e.g. Aya Vision's logit_scale), so the point holds what the model returns
    post: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass
class Layout:
    """Module paths of one model, as found by its family module (all dotted paths)."""

    family: str
    lm_layers: str  # an encoder-decoder's decoder blocks
    unembed: str
    vision_layers: str | list[str] | None = None
    projector: str | None = None
    final_norm: str | None = None
    attn_attr: str | None = "self_attn"
    mlp_attr: str | None = "mlp"
    # point index -> dotted path of a cross-attention module, and the prefix of its point name
    xattn: dict[int, str] = field(default_factory=dict)
    xattn_prefix: str = "lm"
    xattn_side: str = "lm"
    image_token_id: int | None = None
    missing: list[str] = field(default_factory=list)
    encoder_layers: str | None = None  # an encoder-decoder's encoder blocks (Florence-2)


def get_module(root: nn.Module, path: str) -> nn.Module:
    """Resolve a dotted path (``model.language_model.layers.3``) to a submodule."""
    mod = root
    for part in path.split("."):
        mod = mod[int(part)] if part.isdigit() else getattr(mod, part)
    return mod


def find_first(root: nn.Module, candidates: Iterable[str]) -> str | None:
    """The first dotted path among ``candidates`` that exists in ``root``."""
    for c in candidates:
        try:
            get_module(root, c)
            return c
        except (AttributeError, IndexError, TypeError):
            continue
    return None


def require(root: nn.Module, family: str, role: str, candidates: Sequence[str]) -> str:
    path = find_first(root, candidates)
    if path is None:
        raise UnsupportedModelError(
            f"{family} model {type(root).__name__}: could not find its {role} (looked for {', '.join(candidates)})",
            fix="pass family='generic' to probekit.wrap/load, or open an issue with print(model)",
        )
    return path
