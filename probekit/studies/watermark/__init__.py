"""The watermark study on the reader organism (``probekit study watermark [--full]``).

Dose and power: a reader fine-tuned on scenes whose usernames it reads a controlled number of times, audited
by :func:`probekit.membership` per layer against the untouched reader, with matched ``p = 0`` and U3 controls
(:mod:`probekit.studies.watermark.study`); ``--full`` rewrites its section of ``docs/results.md``.
``--sae --full``: every remover side by side on the dose study's leak organism, held out
(:mod:`probekit.studies.watermark.removal`), rewriting its section; ``--sae [--small]``: the quick check of
the SAE removers' code path (:mod:`probekit.studies.watermark.sae`).
"""

from __future__ import annotations

from ..base import Options, Outcome, Study


def _run(o: Options) -> Outcome:
    out = STUDY.out(o)
    if o.sae and o.full:
        from .removal import run_removal
        from .removal_writeup import verdict_lines as removal_lines
        from .removal_writeup import write

        res = run_removal(out=out)
        docs = lambda md, img: write(res, md, img, command="probekit study watermark --sae --full")  # noqa: E731
        return Outcome(removal_lines(res), {"removal": res["rows"], "removal_summary": res["summary"]},
                       res["seconds"], out, write_docs=docs)
    if o.sae:
        from .sae import run

        res = run(small=o.small, verbose=False)
        return Outcome(res["lines"], {"watermark_sae": res["table"]}, res["seconds"], out)
    from .study import run_study, tables, verdict_lines, write_section

    res = run_study(full=o.full)
    docs = (lambda md, img: write_section(res, md, img, command="probekit study watermark --full")) if o.full else None
    return Outcome(verdict_lines(res), tables(res), res["seconds"], out, write_docs=docs)


def _out(o: Options) -> str:
    return "probekit-watermark-removers" if o.sae and o.full else "probekit-watermark-sae" if o.sae else "probekit-watermark-full" if o.full else "probekit-watermark"


STUDY = Study("watermark", "training-data leakage with dose and power on the reader organism (--sae: SAE removers)",
              _run, _out, flags=("small", "full", "sae"), what="tables",
              docs="Watermark study on the reader organism (ProbingPrivacy in miniature, with dose and power)")
