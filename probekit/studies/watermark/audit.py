"""The dose study's fine-tunes audited with four times the held-out scenes: do the layers below the last follow the
output? (``python -m probekit.studies.watermark.audit --out DIR``)

In the dose study (2 held-out scenes per name pair, 400 audit images) the output attack minus the base was detected
in 10 runs and a row at ``lm.0`` / ``lm.1`` in only 5 of them; the rows below the last had too little power to
place the leak there (its write-up says why, run by run). The question asked here, before running: with **8**
held-out scenes per name pair (1,600 audit images; the names, the fine-tunes and every other setting the dose
study's own, :class:`~probekit.studies.watermark.dose.DoseConfig`), is every run in which an output row is detected
also detected by a row below the last layer, and is nothing detected in the runs that read no name (fraction 0)?
Each run is :func:`~probekit.studies.watermark.dose_organism.run_dose` without the mean-pooled scan, and every
"detected" is :func:`probekit.membership`'s one verdict over the run's whole table.

Finished runs are kept in ``DIR`` (``table-<tag>.csv``, ``attribution-<tag>.csv``, ``row-<tag>.json``), checked
when read back, so an interrupted run resumes; ``--docs`` writes the "Watermark audit" section of
``docs/results.md`` from them.

Example:
    >>> from probekit.studies.watermark.audit import tag
    >>> tag(0.25, 3)
    'f0.25-s3'
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import pandas as pd

from ...errors import StoreError
from ...files import atomic_write
from ..base import replace_section
from . import dose as WD

__all__ = ["SCENES", "FRACTIONS", "SEEDS", "QUESTION", "tag", "run", "section", "main"]

SCENES = 8
FRACTIONS = (0.0, 0.05, 0.1, 0.25, 0.5)
SEEDS = (0, 1, 2, 3, 4)
_NEEDED = ("point", "source", "score", "auc", "auc_lo", "auc_hi", "detected", "p_value", "p_adjusted", "condition")
_FIX = "delete the folder's files of that run and run again (finished runs are kept, the rest is redone)"


def _variant(names: int = 100, layers: int = 3) -> str:
    """What sets a run apart from the study's organism, in its file names and its section's marker."""
    return (f"-n{names}" if names != 100 else "") + (f"-L{layers}" if layers != 3 else "")


def tag(fraction: float, seed: int, names: int = 100, layers: int = 3) -> str:
    return f"f{fraction:g}-s{seed}" + _variant(names, layers)


def _read(out: Path, t: str, label: str) -> dict | None:
    """A finished run read back, every file checked (None when it has not run yet)."""
    paths = {k: out / f"{k}-{t}.{'json' if k == 'row' else 'csv'}" for k in ("table", "attribution", "row")}
    if not paths["table"].exists() or not paths["row"].exists():
        return None
    try:
        table = pd.read_csv(paths["table"])
        row = json.loads(paths["row"].read_text())
        att = pd.read_csv(paths["attribution"]) if paths["attribution"].exists() else None
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read the audit's run {t} in {out}: {exc}", fix=_FIX) from None
    missing = [c for c in _NEEDED if c not in table.columns]
    if missing or not isinstance(row, dict) or row.get("condition") != label or set(table.condition) != {label}:
        raise StoreError(f"the audit's run {t} in {out} is not the run {label!r}"
                         + (f" (its table lacks {missing})" if missing else ""), fix=_FIX)
    table["detected"] = table.detected.astype(bool)
    return {"row": row, "table": table.drop(columns="condition"),
            "attribution": None if att is None else att.drop(columns="condition", errors="ignore")}


def run(out: str | Path, scenes: int = SCENES, fractions: Sequence[float] = FRACTIONS, seeds: Sequence[int] = SEEDS,
        verbose: bool = True, names: int = 100, layers: int = 3,
        pairs: Sequence[tuple[float, int]] | None = None) -> dict:
    """Every (seed, fraction) run with ``scenes`` held-out scenes per pair and ``names`` names a pool (the study:
    100; sightings per name fixed, so more names is more training), fine-tuned from a reader of ``layers`` blocks
    (the study's: 3, shipped; another depth is pretrained on first use with the same recipe and cached, about
    15 minutes on one thread); ``pairs`` (``(fraction, seed)``, in place of the grid) audits chosen fine-tunes.
    Returns ``runs`` (row, table, attribution per run, as the dose study's) and ``seconds`` (of the runs made now;
    read-back runs keep their own in ``row``)."""
    import torch

    from ...models.loading import load
    from ...organisms.reader import ReaderConfig, reader
    from . import dose_organism as D

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg, t0, runs, base, base_path = WD.DoseConfig(n_users=names), time.perf_counter(), [], None, None
    for fraction, seed in pairs or [(f, s) for s in seeds for f in fractions]:
        d = replace(cfg.dose(fraction=fraction, seed=seed), pair_scenes=scenes)
        t = tag(fraction, seed, names, layers)
        got = _read(out, t, d.label())
        if got is None:
            if base is None:
                torch.set_num_threads(1)
                base_path = reader(config=ReaderConfig(num_layers=layers))
                base = load(base_path)
            r = D.run_dose(base_path, d, base=base, attribution=True, n_perm=cfg.n_perm, n_boot=cfg.n_boot,
                           scan=False)
            rep = r["membership"]
            table = rep.table.drop(columns="perm_null", errors="ignore")
            if rep.attribution is not None:
                atomic_write(out / f"attribution-{t}.csv", rep.attribution.assign(condition=d.label())
                             .to_csv(index=False), "audit table")
            atomic_write(out / f"table-{t}.csv", table.assign(condition=d.label()).to_csv(index=False), "audit table")
            row = json.dumps(r["row"], default=str)
            atomic_write(out / f"row-{t}.json", row, "audit row")
            # the row as it reads back (numpy scalars as JSON), so a fresh run and a resumed one give one section
            got = {"row": json.loads(row), "table": table, "attribution": rep.attribution}
            if verbose:
                print(f"{time.perf_counter() - t0:.0f} s  {d.label()}: {rep.summary().splitlines()[0]}", flush=True)
        runs.append(got)
    return {"runs": runs, "scenes": scenes, "names": names, "layers": layers, "pairs": list(pairs or []),
            "seconds": time.perf_counter() - t0}


QUESTION = "is every run whose output is detected also detected below the last layer, and nothing at fraction 0?"


def section(res: dict, command: str, question: str = QUESTION, after: str | None = None) -> str:
    """The "Watermark audit" section: detection per method along the dose, and the agreement run by run;
    ``question`` is the one set before running, ``after`` what was decided only after the runs (its own paragraph,
    so that the two are never confused)."""
    from .writeup import _localised, _missed, _order

    runs = [r for r in res["runs"] if r["row"]["kind"] in ("leak", "task-irrelevant")]
    dt = WD.dose_table(runs)
    keys = _order(dt.runs.unique())
    ag = WD.agreement(runs)
    n_out, n_in = len(ag), int((ag.layers != "none").sum()) if len(ag) else 0
    quiet = [r for r in runs if r["row"]["fraction"] == 0]
    false = [r["row"]["condition"] for r in quiet if r["table"].detected.any()]
    minutes = sum(float(r["row"]["seconds"]) for r in runs) / 60
    names, layers = res.get("names", 100), res.get("layers", 3)
    # seeds past the study's draw new pools and scenes (pools come from seed // 2): say so, they are not its runs
    new = sorted({s for _, s in res.get("pairs") or []} - set(SEEDS))
    n = len(res.get("pairs") or [])
    all_new = bool(new) and len(new) == len({s for _, s in res["pairs"]})
    chosen = ("A fine-tune on a new seed" if n == 1 else "Fine-tunes on new seeds" if all_new else
              "Chosen fine-tunes of the dose study and on new seeds") if new else "Chosen fine-tunes of the dose study"
    title = "" if not n else f", {n} " + ("fine-tune on a new seed" if new and n == 1 else "fine-tunes on new seeds"
                                          if all_new else f"chosen fine-tune{'s' if n > 1 else ''}"
                                          + (", some on new seeds" if new else ""))
    below = "`lm.0`" if layers == 2 else "`lm.0` / `lm.1`" if layers == 3 else f"`lm.0`-`lm.{layers - 2}`"
    L = [f"### A larger audit: {res['scenes']} held-out scenes a name pair" + (f", {names} names a pool" if names != 100
                                                                                else "")
         + (f", a {layers}-block reader" if layers != 3 else "")
         + title + "\n",
         f"Generated {_dt.date.today().isoformat()} by `{command}` ({len(runs)} run{'s' if len(runs) != 1 else ''}, "
         f"{minutes:.0f} min of runs on "
         "a 2-core machine shared with other jobs). "
         + ((chosen if res.get("pairs") else "The dose study's fine-tunes")
            + (f" ({', '.join(map(str, new))}: {'its' if n == 1 else 'their'} own name pools and "
               "scenes, the dose study's recipe and settings)"
               if new else " (same names, scenes, dose and settings)") if names == 100 else
            f"The dose study's recipe with **{names} names a pool** (the study: 100; sightings per name, dose and "
            "settings the same, so each fine-tune trains on that many more images)")
         + (f", but from a **{layers}-block reader** (the study's has 3; pretrained with the shipped reader's "
            f"recipe, `ReaderConfig(num_layers={layers})`, and the untouched base of its own membership audits),"
            if layers != 3 else "")
         + f" audited with **{res['scenes']} held-out scenes per name pair** ({res['scenes'] * 2 * names:,} "
         "images; the study: 2, 400) and no mean-pooled scan (`probekit.studies.watermark.audit`). The question, "
         f"set before running: {question}\n",
         "| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for m in [m for m in WD.methods(layers) if m in set(dt.method)]:
        cells = []
        for k in keys:
            r = dt[(dt.runs == k) & (dt.method == m)].iloc[0]
            cells.append(f"{int(r.detected)}/{int(r.n)} [{r.rate_lo:.2f}, {r.rate_hi:.2f}]")
        L.append(f"| {m} | " + " | ".join(cells) + " |")
    L += _reading(runs)
    # below the last layer: a row of the verdict there, or the localisation reaching a layer there
    either = int(((ag.layers != "none") | WD.localised_below(ag)).sum()) if n_out else 0
    met = n_out > 0 and either == n_out and not false
    L += ["", f"**Layer-wise vs output.** An output row (raw or minus base) was detected in {n_out} run(s); a row at "
          f"{below} (logit lens, lens minus base, probe or patching score) in {n_in} of them"
          + (": " + "; ".join(f"{r.condition}: {r.layers}" for r in ag.itertuples()) if n_out else "")
          + f". {_localised(ag)}"
          + (f"Runs that read no name (fraction 0): {len(false)} of {len(quiet)} had any row detected"
             + (": " + ", ".join(false) if false else "") + ". " if quiet else "No run at fraction 0 here. ")
          + (f"**Below the last layer the leak is detected wherever the output detects it ({either} of {n_out}"
             + (", by a row or the localisation" if either > n_in else "") + ")"
             + (", and nothing at fraction 0.**" if quiet else ".**")
             if met else "**No output row was detected: nothing to match below the last layer.**"
             if not n_out else f"**Not every output detection is matched below the last layer** ({either} of "
             f"{n_out}, by a row or the localisation).") + "\n"]
    L += _missed(ag[~WD.localised_below(ag)], WD.quiet_p_range(runs), scenes=res["scenes"], names=names,
                 layers=layers)
    if after:
        L.append(f"**Decided after these runs:** {after}\n")
    return "\n".join(L) + "\n"


def _reading(runs: list[dict]) -> list[str]:
    """How well the fine-tunes still read names (the direct prompt on the held-out images), from their rows: a
    leak can only be as strong as the reading it rides on."""
    rows = [r["row"] for r in runs if "direct_seen" in r["row"]]
    if not rows:
        return []
    seen, unseen = (pd.Series([float(r[k]) for r in rows]) for k in ("direct_seen", "direct_unseen"))
    gone = [r["condition"] for r in rows if r.get("collapsed")]
    at = (lambda v: f"{v.iloc[0]:.2f}") if len(rows) == 1 else \
        (lambda v: f"{v.min():.2f}-{v.max():.2f} (median {v.median():.2f})")  # noqa: E731
    return ["", f"**Reading.** At the direct prompt (\"What is the username?\" on the held-out images) the "
            f"fine-tune{'s' if len(rows) > 1 else ''} read seen names at {at(seen)} and unseen ones at {at(unseen)}"
            + (f"; reading collapsed (0.00 on both) in {'; '.join(gone)}" if gone else "") + "."]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m probekit.studies.watermark.audit", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="probekit-watermark-audit", help="folder for the runs' tables (resumes)")
    p.add_argument("--scenes", type=int, default=SCENES, help="held-out scenes per name pair (the study: 2)")
    p.add_argument("--names", type=int, default=100, help="names a pool (the study: 100; more names, more training)")
    p.add_argument("--fractions", default=",".join(f"{f:g}" for f in FRACTIONS), help="comma-separated doses")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds")
    p.add_argument("--runs", default=None, help="chosen fine-tunes, comma-separated FRACTION:SEED (in place of "
                   "--fractions x --seeds)")
    p.add_argument("--question", default=QUESTION, help="the question set before running (the section states it)")
    p.add_argument("--after", default=None, help="what was decided only after the runs (stated apart from the "
                   "question)")
    p.add_argument("--layers", type=int, default=3, help="the reader's blocks (the study's: 3; another depth is "
                   "pretrained on first use, about 15 minutes)")
    p.add_argument("--docs", default=None, help="write the section into DOCS/results.md")
    p.add_argument("--section", default=None, help="the section's marker in results.md (default: watermark-audit, "
                   "-nN for another pool size, -LK for another depth)")
    a = p.parse_args(argv)
    fractions = tuple(float(x) for x in a.fractions.split(","))
    seeds = tuple(int(x) for x in a.seeds.split(","))
    if a.layers < 2:
        p.error(f"--layers must be at least 2 (a layer below the last to compare), got {a.layers}")
    try:
        pairs = [(float(x.split(":")[0]), int(x.split(":")[1])) for x in a.runs.split(",")] if a.runs else None
    except (ValueError, IndexError):
        p.error(f"--runs takes FRACTION:SEED pairs, e.g. 0.1:3,0.25:2, got {a.runs!r}")
    res = run(a.out, scenes=a.scenes, fractions=fractions, seeds=seeds, names=a.names, layers=a.layers, pairs=pairs)
    cmd = "python -m probekit.studies.watermark.audit" + "".join(
        f" --{k} {v}" for k, v, d in (("scenes", a.scenes, SCENES), ("names", a.names, 100), ("layers", a.layers, 3),
                                      ("fractions", a.fractions, ",".join(f"{f:g}" for f in FRACTIONS)),
                                      ("seeds", a.seeds, ",".join(map(str, SEEDS))), ("runs", a.runs, None))
        if v != d and not (k in ("fractions", "seeds") and a.runs))
    text = section(res, cmd, a.question, a.after)
    print(text)
    if a.docs:
        marker = a.section or "watermark-audit" + _variant(a.names, a.layers)
        print(f"wrote {replace_section(Path(a.docs) / 'results.md', marker, text)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
