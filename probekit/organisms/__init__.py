"""Small VLMs trained here whose leaks are known by construction (one module per organism).

``reader``: a tiny LLaVA that reads rendered text (:mod:`.reader`); ``watermark``: the
ProbingPrivacy watermark study on it (:mod:`.watermark`).
"""

from .reader import ReaderConfig, ocr_accuracy, read, reader  # noqa: F401
