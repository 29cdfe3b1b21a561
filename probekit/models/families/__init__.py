"""Per-family knowledge, one module per family, and the registry that picks one for a model.

Each family is a :class:`~.base.Family` subclass holding every fact specific to it: module
paths per hook point, point widths, activation shapes, image-token positions, the residual
stream's writers and how a prompt with an image is written. Adding a family: one module here,
one line in :data:`_REGISTRY`, one tiny builder (:mod:`probekit.tiny.zoo`); or, without editing
probekit, :func:`register_family` at run time. The coverage list (:data:`probekit.models.coverage.COVERED`)
is derived from this registry.
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

__all__ = ["FAMILIES", "family_for", "check_family", "register_family", "Family", "GenericFamily", "Llava", "PaliGemma", "Gemma3", "Qwen2VL", "Glm4V",
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


def check_family(model_type: str, family: str | None) -> None:
    """Refuse a forced ``family`` that contradicts the checkpoint's ``config.model_type``.

    ``"generic"`` may be forced on anything, and any family on a model type no family claims
    (a custom model laid out like a known one); forcing ``"mllama"`` on a ``llava`` checkpoint is
    an error here, before any weight is loaded, instead of a model read at the wrong modules.
    """
    if family is None:
        return
    if family not in FAMILIES:
        raise InputError(f"unknown family {family!r}", fix=f"use one of {sorted(FAMILIES)} or None to detect it")
    owner = next((f.name for f in FAMILIES.values() if f.claims(model_type)), None)
    if family != "generic" and owner is not None and owner != family:
        raise InputError(f"family={family!r} does not match this checkpoint: its config.model_type is "
                         f"{model_type!r}, which is the {owner!r} family",
                         fix=f"leave family=None (it is detected as {owner!r}), or pass family={owner!r} or 'generic'")


def family_for(hf: nn.Module, family: str | None = None) -> Family:
    """The family object for a model: by name if given (checked against ``config.model_type``),
    else by ``config.model_type``."""
    model_type = str(getattr(getattr(hf, "config", None), "model_type", ""))
    if family is not None:
        check_family(model_type, family)
        return FAMILIES[family]
    for fam in FAMILIES.values():
        if fam.claims(model_type):
            return fam
    return FAMILIES["generic"]


def register_family(family: Family, *, replace: bool = False) -> None:
    """Add a family at run time, as :func:`probekit.readout.register_scorer` adds a scorer: detection tries it
    before ``generic`` (after the families already registered), and ``probekit.load(..., family=NAME)``
    forces it. ``replace=True`` swaps a registered family of the same name (not ``generic``).

    Example:
        >>> from probekit.models.families import FAMILIES, Llava, register_family
        >>> class MyLlava(Llava):
        ...     name, model_types = "my_llava", ("my_llava",)
        >>> register_family(MyLlava())
        >>> list(FAMILIES)[-2:]
        ['my_llava', 'generic']
        >>> _ = FAMILIES.pop("my_llava")  # (the docs' own clean-up)
    """
    if not isinstance(family, Family):
        raise InputError(f"register_family takes a Family instance, got {type(family).__name__}",
                         fix="subclass probekit.models.families.Family (or a family like Llava) and pass an instance")
    name = getattr(family, "name", None)
    if not isinstance(name, str) or not name or name == "generic":
        raise InputError(f"a family needs a name other than 'generic', got {name!r}", fix="set name = 'my_family'")
    if name in FAMILIES and not replace:
        raise InputError(f"family {name!r} is already registered", fix="pass replace=True to swap it, or another name")
    clash = {mt: f.name for f in FAMILIES.values() if f.name != name for mt in f.model_types + f.aliases
             if mt in family.model_types + family.aliases}
    if clash:
        raise InputError(f"model types {sorted(clash)} are already claimed by {sorted(set(clash.values()))}",
                         fix="claim other model types, or force the family with load(..., family=...)")
    generic = FAMILIES.pop("generic")
    FAMILIES[name] = family
    FAMILIES["generic"] = generic  # the fallback stays last
