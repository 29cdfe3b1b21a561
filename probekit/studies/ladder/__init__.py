"""Apple's leakage ladder in miniature (``probekit study ladder [--small] [--sae]``).

The organism: a tiny LLaVA that learned yes/no questions about one object of a scene
(:mod:`probekit.studies.ladder.organism`); the unasked attributes leak and a coin flip cannot. ``--sae``: SAEs on the
organism, their quality per layer and the SAE-latent readout of every attribute
(:mod:`probekit.studies.ladder.sae`). Full size rewrites the "Leakage from inputs" (or the SAE) section of
``docs/results.md``.
"""

from __future__ import annotations

from pathlib import Path

from ..base import Options, Outcome, Study


def _run(o: Options) -> Outcome:
    if o.sae:  # SAEs on the organism: quality per layer and the SAE-latent readout of every attribute
        from . import sae as sae_ladder

        out = Path(STUDY.out(o))
        res = sae_ladder.run(small=o.small, out=str(out))
        docs = None if o.small else (lambda md, img: sae_ladder.write_section(
            res, md, img, "probekit study ladder --sae", html_path=out / "sae-ladder.html", library=sae_ladder.LIBRARY))
        return Outcome([], {"sae_quality": res["quality"], "sae_readout": sae_ladder.summary(res)}, res["seconds"], out,
                       table=sae_ladder.summary(res), write_docs=docs)
    from .organism import LadderConfig, headline, run_ladder, verdict_lines, write_section

    cfg = LadderConfig.small(progress=True) if o.small else LadderConfig()
    cfg.out = STUDY.out(o)
    res = run_ladder(cfg)
    docs = None if o.small else (lambda md, img: write_section(res, md, img, command="probekit study ladder"))
    # the headline's verdict column repeats the verdict lines above it: left out here
    return Outcome(verdict_lines(res), {"ladder": res["table"], "ladder_summary": res["summary"]}, res["seconds"],
                   cfg.out, table=headline(res).drop(columns="verdict"), write_docs=docs)


def _out(o: Options) -> str:
    from .organism import LadderConfig

    if o.sae:
        return "probekit-sae-ladder"
    return (LadderConfig.small() if o.small else LadderConfig()).out


STUDY = Study("ladder", "leakage from inputs: Apple's ladder on a yes/no organism (--sae: SAEs on it)", _run, _out,
              flags=("small", "sae"), docs="Leakage from inputs: Apple's ladder in miniature")
