"""Small VLMs trained here whose leaks are known by construction (one module per organism).

``ladder``: a tiny LLaVA fine-tuned to answer yes/no about CLEVR-like scenes, and Apple's
leakage ladder on it (:mod:`.ladder`).
"""

from .ladder import LadderConfig, run_ladder, write_section  # noqa: F401
