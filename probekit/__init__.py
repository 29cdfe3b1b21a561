"""probekit: find what a vision-language model silently knows about its inputs, and remove it.

Layers (each uses only the ones above it in this list):

- :mod:`probekit.models`: load / wrap HF VLMs, map hook points to modules, tiny offline checkpoints
- :mod:`probekit.hooks`: record hook points at token positions into an :class:`ActivationStore`
- :mod:`probekit.readout`: logit lens, linear probes, mutual information per layer
- :mod:`probekit.steering`: directions, ablation / steering / weight orthogonalisation, evaluation
"""

from __future__ import annotations

import os as _os

# Hub access is opt-in: tests and the demo run offline, and transformers reads this at import.
_os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from . import errors  # noqa: E402
from .hooks import ActivationStore, Recorder, collect  # noqa: E402
from .models import Model, load, tiny, wrap  # noqa: E402

__version__ = "0.1.0"

__all__ = ["errors", "Model", "load", "wrap", "tiny", "collect", "ActivationStore", "Recorder", "__version__"]
