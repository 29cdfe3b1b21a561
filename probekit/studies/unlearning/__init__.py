"""Memorised facts and their unlearning (``probekit study unlearning [--small]``).

A tiny LLaVA taught biographies of drawn profiles (:mod:`probekit.studies.unlearning.profiles`), audited before and
after GA, GD, KL, NPO, the steering removers and the SAE removers against a retrained reference
(:mod:`probekit.studies.unlearning.study`); full size rewrites its sections of ``docs/results.md``.
"""

from __future__ import annotations

from ..base import Options, Outcome, Study


def _run(o: Options) -> Outcome:
    from .report import EMPTY, verdict_lines, write_section
    from .study import StudyConfig, run_study

    cfg = StudyConfig.small() if o.small else StudyConfig()
    cfg.out = STUDY.out(o)
    res = run_study(cfg)
    docs = None if o.small else (lambda md, img: write_section(res, md, img, command="probekit study unlearning"))
    # raw tables next to the checkpoints (CSV; nothing is pickled)
    return Outcome(verdict_lines(res), res, res["seconds"], cfg.out, empty=EMPTY, write_docs=docs)


def _out(o: Options) -> str:
    from .study import StudyConfig

    return (StudyConfig.small() if o.small else StudyConfig()).out


STUDY = Study("unlearning", "memorised facts: MLLMU-Bench's protocols, unlearning methods against a retrained reference",
              _run, _out, docs="Before unlearning; Unlearning")
