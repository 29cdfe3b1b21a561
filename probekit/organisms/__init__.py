"""What the studies are built from: the shared organism and the training, renderers, metrics and removers every
study may use. Each study's own organism, experiment and write-up live in its folder under
:mod:`probekit.studies`; nothing here imports a study.

- :mod:`.reader`: a tiny LLaVA pretrained here to read rendered text (the seed-0 checkpoint ships), on which the
  watermark study builds its leak; :mod:`.text` and :mod:`.ocr` render and score what it reads.
- :mod:`.finetune`: the fine-tuning loop and task accuracy every organism uses.
- :mod:`.unlearn`: the fine-tuning removers (gradient ascent / difference, KL, NPO) and relearning.
- :mod:`.mia`: the output membership attacks (loss, Min-K%) and their metrics; :mod:`.facts_metrics`: the
  facts-recall measures; :mod:`.gradients`: per-sample gradient norms of a fine-tune.
"""

from .reader import ReaderConfig, ocr_accuracy, read, reader  # noqa: F401
