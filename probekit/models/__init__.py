"""Model adapters: where everything lives in each VLM family, loading (tiny offline checkpoints: :mod:`probekit.tiny`)."""

from .adapter import HookTarget, Layout, Model
from .families import FAMILIES, family_for
from .loading import load, wrap

__all__ = ["Model", "Layout", "HookTarget", "FAMILIES", "family_for", "load", "wrap"]
