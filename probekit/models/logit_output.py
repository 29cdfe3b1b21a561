"""What a model's forward does to ``lm_head``'s output before it returns the logits.

Most VLMs return ``lm_head(norm(h))`` as is. Some rescale it: Cohere-family language models
(Aya Vision) multiply by ``logit_scale``, Gemma 2 text models (PaliGemma 2) cap it with
``cap * tanh(logits / cap)``. The logit lens, the tuned lens and the ``logits`` hook point must
apply the same map, or the lens on the last block is not the model's output.

Whether a model applies it depends on the transformers release, not only on the config:
``AyaVisionForConditionalGeneration`` ignored ``logit_scale`` up to 5.24 and applies it from 5.25.
So the map is read off the forward of the installed class: a config value counts only where
that forward names it. The coverage matrix checks the result on every architecture, on the
lowest and the newest supported transformers.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LogitOutput", "logit_output", "OutputHead"]


@dataclass(frozen=True)
class LogitOutput:
    """``logits -> softcap(logits * scale)``; ``None`` leaves a step out.

    Example:
        >>> import torch
        >>> LogitOutput(scale=0.5)(torch.tensor([2.0, -4.0])).tolist()
        [1.0, -2.0]
        >>> LogitOutput().identity
        True
    """

    scale: float | None = None
    softcap: float | None = None

    @property
    def identity(self) -> bool:
        return self.scale is None and self.softcap is None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.scale is not None:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


class OutputHead(nn.Module):
    """The unembedding followed by the model's output map: normed residual -> the model's logits."""

    def __init__(self, unembed: nn.Module, output: LogitOutput):
        super().__init__()
        self.unembed = unembed
        self.output = output

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.output(self.unembed(h))


@functools.lru_cache(maxsize=None)
def _forward_names(cls: type) -> str:
    """Source of ``cls.forward`` (and of the class that defines it); empty when it has none."""
    try:
        return inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return ""


def _number(cfg: object, name: str) -> float | None:
    v = getattr(cfg, name, None)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def logit_output(hf: nn.Module, unembed: str = "lm_head") -> LogitOutput:
    """The output map of an HF model, from its config and what its forward applies.

    The forward read is the one of the module that owns the unembedding (``unembed``, a dotted
    path): the top-level class for most VLMs, the inner causal LM where the VLM delegates to one
    (BLIP-2's ``language_model``). A value counts when that forward names the config field
    (``logit_scale``, ``final_logit_softcapping``); without readable source it counts when the
    config sets it (what the current transformers releases do).

    Example:
        >>> import probekit, tempfile
        >>> m = probekit.load(probekit.tiny.build("llava", tempfile.mkdtemp() + "/m"))
        >>> logit_output(m.hf).identity
        True
    """
    owner = hf
    for part in unembed.split(".")[:-1]:
        owner = owner[int(part)] if part.isdigit() else getattr(owner, part)
    src = _forward_names(type(owner))
    cfg = getattr(owner, "config", hf.config)
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    found = {}
    for field in ("logit_scale", "final_logit_softcapping"):
        value = _number(text, field)
        if value is None:
            value = _number(cfg, field)
        if value is not None and (not src or field in src):
            found[field] = value
    scale = found.get("logit_scale")
    return LogitOutput(scale=None if scale == 1.0 else scale, softcap=found.get("final_logit_softcapping") or None)
