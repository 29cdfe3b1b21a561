"""Per-family knowledge, one module per family, and the registry that picks one for a model.

Each family is a :class:`~.base.Family` subclass holding every fact specific to it: module
paths per hook point, point widths, activation shapes, image-token positions, the residual
stream's writers and how a prompt with an image is written. Adding a family: one module here,
one line in :data:`_REGISTRY`, one tiny builder (:mod:`probekit.models.tiny_zoo`).
"""

from __future__ import annotations

from torch import nn

from ...errors import InputError
from .base import Family
from .blip2 import Blip2
from .florence2 import Florence2
from .gemma3 import Gemma3
from .generic import GenericFamily
from .glm4v import Glm4V
from .idefics3 import Idefics3
from .instructblip import InstructBlip
from .lighton_ocr import LightOnOcr
from .llama4 import Llama4
from .llava import Llava
from .mistral3 import Mistral3
from .mllama import Mllama
from .paligemma import PaliGemma
from .qwen2_vl import Qwen2VL

__all__ = ["FAMILIES", "family_for", "Family", "GenericFamily", "Llava", "PaliGemma", "Gemma3", "Qwen2VL", "Glm4V",
           "Idefics3", "Mllama", "Blip2", "InstructBlip", "Mistral3", "LightOnOcr", "Llama4",
           "Florence2"]

# Detection tries these in order (``config.model_type`` in ``model_types``); generic comes last.
_REGISTRY: tuple[Family, ...] = (
    Llava(),
    PaliGemma(),
    Gemma3(),
    Qwen2VL(),
    Glm4V(),
    Idefics3(),
    Mllama(),
    Blip2(),
    InstructBlip(),
    Mistral3(),
    LightOnOcr(),
    Llama4(),
    Florence2(),
    GenericFamily(),
)

FAMILIES: dict[str, Family] = {f.name: f for f in _REGISTRY}
"""Family name -> its object, in detection order."""


def family_for(hf: nn.Module, family: str | None = None) -> Family:
    """The family object for a model: by name if given, else by ``config.model_type``."""
    if family is not None:
        if family not in FAMILIES:
            raise InputError(f"unknown family {family!r}", fix=f"use one of {sorted(FAMILIES)} or None to detect it")
        return FAMILIES[family]
    model_type = str(getattr(getattr(hf, "config", None), "model_type", ""))
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    return FAMILIES["generic"]
