"""Small VLMs trained here whose leaks are known by construction (one module per organism).

``ladder``: a tiny LLaVA fine-tuned to answer yes/no about CLEVR-like scenes, and Apple's
leakage ladder on it (:mod:`.ladder`). ``reader``: a tiny LLaVA pretrained to read rendered
text (:mod:`.reader`; it does not read yet: see its docstring); ``watermark``: the
ProbingPrivacy watermark study on it (:mod:`.watermark`). ``profiles``: fictitious people with
portraits and biographies for the unlearning study (:mod:`.profiles`).
"""

from .ladder import LadderConfig, run_ladder, write_section  # noqa: F401
from .reader import ReaderConfig, ocr_accuracy, read, reader  # noqa: F401
from . import profiles  # noqa: F401
