"""The first watermark memorisation study, on random-init models (``probekit study memorization [--full]``).

:mod:`probekit.studies.memorization.study`: fine-tunes with watermarked usernames at several rates, gradient
cosines, probes per layer on seen vs unseen names, membership inference, removal; ``--full`` rewrites its
sections of ``docs/results.md``.
"""

from __future__ import annotations

from ..base import Options, Outcome, Study


def _run(o: Options) -> Outcome:
    from . import study as mem
    from .writeup import EMPTY, verdict_lines

    cfg = mem.MemorizationConfig.full() if o.full else mem.MemorizationConfig()
    cfg.out = STUDY.out(o)
    cfg.progress = cfg.verbose = True  # a study runs for minutes: say what it is doing
    res = mem.run_memorization(cfg)
    docs = (lambda md, img: mem.write_results(res, md, img, command="probekit study memorization --full")) \
        if o.full else None
    # keep the raw tables next to the checkpoints (CSV; nothing is pickled)
    return Outcome(verdict_lines(res), res, res["seconds"], cfg.out, empty=EMPTY, write_docs=docs)


def _out(o: Options) -> str:
    from .study import MemorizationConfig

    return (MemorizationConfig.full() if o.full else MemorizationConfig()).out


STUDY = Study("memorization", "the first watermark memorisation study (random-init models)", _run, _out,
              flags=("full",), docs="Headline per model")
