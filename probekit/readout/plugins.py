"""Scan readouts as plug-ins: what :func:`probekit.scan` turns its one collection into (issue 26).

``scan`` checks its inputs once into a :class:`Context`, asks every readout what it :class:`Needs`
recorded, runs ``collect`` once for all of them, then each readout's :meth:`Readout.run` fills
report slots (``"table"``, ``"lens"``, ``"targets"``, ``"ladder"``; any other name is kept in
``ScanReport.extra``). The built-ins wrap the existing functions and nothing else:
``"probes"`` (:func:`probekit.readout.leakage.leakage`), ``"lens"``
(:meth:`probekit.readout.lens.Lens.top_k`), ``"targets"`` (:meth:`probekit.readout.lens.Lens.target_ranks`)
and ``"ladder"`` (:func:`probekit.readout.ladder.leakage_ladder`).
:func:`register_readout` adds one by name, for ``scan(..., readouts=[name])`` and
``probekit scan --readouts name``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import pandas as pd

from ..errors import InputError, plain

__all__ = ["Readout", "Needs", "Context", "READOUTS", "register_readout", "resolve_readouts", "output_topk", "SLOTS"]

SLOTS = ("table", "lens", "targets", "ladder")
"""The report slots of :class:`probekit.ScanReport`; a readout's other tables go to ``ScanReport.extra``."""


@dataclass(frozen=True)
class Needs:
    """What a readout needs collected (every readout's needs are merged into one ``collect``).

    Attributes:
        points: globs the scan's own points widen to (the probes read them too; the ladder's every residual).
        record: points recorded for this readout alone (e.g. ``"logits"``).
        output_ks: the top ks of the output distribution it reads; ``None`` in it: every token's
            log-probability (the full logits are kept). The largest k is what ``collect(logits_topk=)`` keeps.
        lens: reads lens points (``lm.embed`` / ``lm.*.resid``); ``lm.*.resid`` is recorded when the scan's
            points hold none.
        labels: needs labels (checked before any forward pass).
    """

    points: tuple[str, ...] = ()
    record: tuple[str, ...] = ()
    output_ks: tuple[int | None, ...] = ()
    lens: bool = False
    labels: bool = False


@dataclass(frozen=True, eq=False)
class Context:
    """What ``scan`` checked once, handed to every readout. ``points`` are the probed points, ``record``
    what ``collect`` recorded and ``lens_points`` the lens points among them (filled in once the needs are merged)."""

    model: Any
    labels: Any = None
    groups: Any = None
    cv: int = 5
    seed: int = 0
    n_boot: int = 1000
    n_perm: int = 1000
    topk: int | None = 10
    lens_k: int = 5
    targets: tuple[str, ...] | None = None
    ladder: tuple[int | None, ...] | None = None
    answer_tokens: Any = None  # the ladder's fixed answer words, as given (checked by the ladder readout)
    positions: tuple[str, ...] = ()  # the scan's position names
    tuned_lens: Any = True
    memory_limit: int = 64 * 2**20  # probekit.scan.SCAN_MEMORY_LIMIT (scan always passes its own)
    progress: bool = True
    points: tuple[str, ...] = ()
    record: tuple[str, ...] = ()
    lens_points: tuple[str, ...] = ()


class Readout:
    """One readout of a scan: what it needs collected, the tables it makes of the store, its figure.

    ``after`` names the readouts whose tables :meth:`run` reads from ``tables`` (when chosen, they run first).

    Example:
        >>> import probekit, tempfile
        >>> class Norms(Readout):  # the mean L2 norm of every probed point at every position
        ...     def run(self, acts, ctx, tables):
        ...         rows = [{"point": p, "position": pos, "norm": float(acts.read(p, j).norm(dim=-1).mean())}
        ...                 for p in ctx.points for j, pos in enumerate(acts.positions(p))]
        ...         return {"norms": pd.DataFrame(rows)}
        >>> _ = register_readout("norms", Norms)
        >>> m = probekit.load(probekit.tiny.build("llava", tempfile.mkdtemp() + "/m"))
        >>> r = probekit.scan(m, probekit.tiny.fixture_images(8, 32), readouts=["lens", "norms"], progress=False)
        >>> r.extra["norms"][["point", "position"]].values.tolist()[:2], len(r.lens) > 0
        ([['lm.0.resid', 'last'], ['lm.0.resid', 'image_mean']], True)
        >>> _ = READOUTS.pop("norms")  # (the docs' own clean-up)
    """

    name: str = "readout"
    after: tuple[str, ...] = ()

    def needs(self, ctx: Context) -> Needs:
        """What to record for this readout; raise InputError here when ``ctx`` cannot serve it (before collecting)."""
        return Needs()

    def run(self, acts: Any, ctx: Context, tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        """Tables by report slot, from the store ``acts``; ``tables`` holds the slots filled before it."""
        raise NotImplementedError

    def figure(self, report: Any) -> Any:
        """A figure of this readout's tables in ``report`` (a :class:`probekit.ScanReport`), or None."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


READOUTS: dict[str, type[Readout]] = {}


def register_readout(name: str, cls: type[Readout] | None = None, *, replace: bool = False):
    """Make ``scan(..., readouts=[name])`` and ``probekit scan --readouts name`` run ``cls()`` (usable as a
    class decorator, as :func:`probekit.readout.register_scorer`); returns ``cls``. ``replace=True`` swaps a
    registered name (the default scan keeps its built-ins either way).

    Example:
        >>> @register_readout("nothing")
        ... class Nothing(Readout):
        ...     def run(self, acts, ctx, tables):
        ...         return {}
        >>> "nothing" in READOUTS, Nothing.name
        (True, 'nothing')
        >>> _ = READOUTS.pop("nothing")  # (the docs' own clean-up)
    """
    if not isinstance(name, str) or not name.strip() or "," in name or name != name.strip():
        raise InputError(f"a readout name is a non-empty word without commas, got {plain(name)!r}", fix='e.g. "norms"')

    def add(c: type[Readout]) -> type[Readout]:
        if not (isinstance(c, type) and issubclass(c, Readout)):
            raise InputError(f"{c!r} is not a Readout subclass", fix="subclass probekit.readout.plugins.Readout")
        if name in READOUTS and READOUTS[name] is not c and not replace:
            raise InputError(f"readout {name!r} is already registered",
                             fix="pass replace=True to swap it, or another name")
        READOUTS[name] = c
        c.name = name
        return c

    return add if cls is None else add(cls)


def resolve_readouts(readouts: Any) -> list[Readout] | None:
    """Instances from ``readouts=`` (names, Readout instances, or one comma-separated string); None stays None."""
    if readouts is None:
        return None
    items = [r.strip() for r in readouts.split(",")] if isinstance(readouts, str) else readouts
    if not isinstance(items, (list, tuple)) or not items:
        raise InputError(f"readouts must be a non-empty list of names or Readout instances, got {plain(readouts)!r}",
                         fix=f"e.g. readouts=['probes', 'lens'] (one of {sorted(READOUTS)})")
    out = []
    for r in items:
        if isinstance(r, Readout):
            out.append(r)
        elif isinstance(r, str) and r in READOUTS:
            out.append(READOUTS[r]())
        else:
            raise InputError(f"unknown readout {plain(r)!r} in readouts=",
                             fix=f"use one of {sorted(READOUTS)}, a Readout instance, or register_readout(name, cls)")
    names = [r.name for r in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"readouts= names {twice[0]!r} twice", fix="list each readout once")
    return out


def choose(chosen: list[Readout] | None, *, labels: bool, targets: bool, ladder: bool) -> list[Readout]:
    """The scan's readouts: today's default list when ``chosen`` is None (probes with labels, the lens
    without, targets with targets=, the ladder with ladder=); else ``chosen``, refusing settings it would ignore."""
    if chosen is None:
        return ([LensReadout()] if targets or not labels else []) + ([TargetsReadout()] if targets else []) + \
            ([ProbesReadout()] if labels else []) + ([LadderReadout()] if ladder else [])
    for given, cls, arg in ((targets, TargetsReadout, "targets="), (ladder, LadderReadout, "ladder=")):
        if given and not any(isinstance(r, cls) for r in chosen):
            raise InputError(f"{arg} was given but readouts= leaves out {cls.name!r}, which reads it",
                             fix=f"add {cls.name!r} to readouts=, or drop {arg}")
    return chosen


def plan(chosen: Sequence[Readout], ctx: Context) -> tuple[Context, int | None]:
    """Merge the readouts' needs: the context with what to record filled in, and ``collect``'s ``logits_topk``."""
    from .lens import lens_points

    needs = [r.needs(ctx) for r in chosen]
    if ctx.labels is None and any(n.labels for n in needs):
        bad = next(r.name for r, n in zip(chosen, needs) if n.labels)
        raise InputError(f"the {bad!r} readout probes a label, but no labels were given",
                         fix=f"pass labels= (one per image), or leave {bad!r} out of readouts=")
    model, names = ctx.model, list(ctx.points)
    widen = [g for n in needs for g in n.points]
    if widen:  # the probes read these too; the output point is recorded below, as scan always did
        names = model.resolve(widen + [p for p in names if p != "logits"])
    record = list(names)
    for p in (p for n in needs for p in n.record):
        if p not in record:
            record.append(p)
    topk = output_topk(needs) if "logits" in record else None
    if any(n.lens for n in needs) and not lens_points(record):
        record = model.resolve(["lm.*.resid"] + record)
    return replace(ctx, points=tuple(names), record=tuple(record), lens_points=tuple(lens_points(record))), topk


def output_topk(needs: Sequence[Needs]) -> int | None:
    """How many of the output distribution's top tokens ``collect(logits_topk=)`` keeps per position: the
    largest k the readouts read; None keeps the full logits (a readout reads every token's log-probability
    (the ladder's full and answer-token rungs), or none reads a top k)."""
    ks = [k for n in needs for k in n.output_ks]
    return None if not ks or None in ks else max(int(k) for k in ks)


def run_readouts(chosen: Sequence[Readout], acts: Any, ctx: Context) -> dict[str, pd.DataFrame]:
    """Every readout's tables by slot, in the order given, except that a readout runs after those it names
    in ``after``."""
    order = list(chosen)
    for r in list(order):
        last = max((i for i, q in enumerate(order) if q.name in r.after), default=-1)
        if order.index(r) < last:
            order.remove(r)
            order.insert(last, r)  # the removal shifted ``last`` one place left: this lands just after it
    tables: dict[str, pd.DataFrame] = {}
    owner: dict[str, str] = {}
    for r in order:
        got = r.run(acts, ctx, dict(tables))
        for slot, df in got.items():
            if slot in owner:
                raise InputError(f"readouts {owner[slot]!r} and {r.name!r} both fill the report's {slot!r} table",
                                 fix="give one of them another table name")
            if not isinstance(df, pd.DataFrame):
                raise InputError(f"readout {r.name!r} returned {type(df).__name__} for {slot!r}, not a DataFrame",
                                 fix="return {name: pandas.DataFrame}")
            owner[slot] = r.name
            tables[slot] = df
    return tables


# ---- the built-ins: glue around the existing functions


class ProbesReadout(Readout):
    """The leakage table (:func:`probekit.readout.leakage.leakage`): probes per point, position and output top-k."""

    after = ("targets",)  # its target_prob / target_rank columns come from the targets readout's table

    def needs(self, ctx: Context) -> Needs:
        return Needs(record=("logits",) if ctx.topk else (), output_ks=(ctx.topk,) if ctx.topk else (), labels=True)

    def run(self, acts: Any, ctx: Context, tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        from ..hooks.points import topk_points
        from .leakage import leakage

        keep = [p for p in acts.points if p in ctx.points or p in ("logits", *topk_points("logits"))]
        return {"table": leakage(acts, ctx.labels, ctx.groups, cv=ctx.cv, seed=ctx.seed, topk=ctx.topk,
                                 lens_targets=tables.get("targets"), points=keep, n_boot=ctx.n_boot, n_perm=ctx.n_perm,
                                 progress=ctx.progress, memory_limit=ctx.memory_limit)}

    def figure(self, report: Any) -> Any:
        return report.figure("leakage") if report.has_leakage else None


class LensReadout(Readout):
    """The logit lens's top tokens per layer and position (:meth:`probekit.readout.lens.Lens.top_k`)."""

    def needs(self, ctx: Context) -> Needs:
        return Needs(lens=True)

    def run(self, acts: Any, ctx: Context, tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        from .lens import LogitLens

        return {"lens": LogitLens(ctx.model).top_k(acts, k=ctx.lens_k, points=list(ctx.lens_points))}

    def figure(self, report: Any) -> Any:
        return report.figure("lens") if report.lens is not None and not report.lens.empty else None


class TargetsReadout(Readout):
    """The targets' logit-lens rank and probability per layer (:meth:`probekit.readout.lens.Lens.target_ranks`)."""

    def needs(self, ctx: Context) -> Needs:
        if not ctx.targets:
            raise InputError("the 'targets' readout ranks target strings, but no targets were given",
                             fix='pass targets=["alice_1987"] (probekit scan --targets alice_1987)')
        return Needs(lens=True)

    def run(self, acts: Any, ctx: Context, tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        from .lens import LogitLens

        lens = LogitLens(ctx.model)
        return {"targets": lens.target_ranks(acts, list(ctx.targets or ()), points=list(ctx.lens_points))}

    def figure(self, report: Any) -> Any:
        return report.figure("targets") if report.targets is not None and not report.targets.empty else None


class LadderReadout(Readout):
    """The leakage ladder at ``"last"`` (:func:`probekit.readout.ladder.leakage_ladder`); its tuned-lens rung
    as ``ctx.tuned_lens`` says (True: fitted on the collected residuals)."""

    def needs(self, ctx: Context) -> Needs:
        from .ladder import check_ladder
        from .lens import TunedLens

        if ctx.ladder is None:  # scan gives the chosen ladder its default sweep; only ladder=False leaves none
            raise InputError("the 'ladder' readout was chosen but ladder=False", fix="drop ladder=False, or 'ladder'")
        if not (isinstance(ctx.tuned_lens, (bool, TunedLens)) or ctx.tuned_lens is None):
            raise InputError(f"tuned_lens must be True, False or a TunedLens, got {type(ctx.tuned_lens).__name__}",
                             fix="e.g. tuned_lens=True (fit one on the collected residuals)")
        ids = check_ladder(ctx.model, ctx.ladder, ctx.answer_tokens, ctx.positions)
        ks = tuple(ctx.ladder)
        full = None in ks or (ids is not None and len(ids) in ks)  # every token's log-prob
        return Needs(points=("lm.*.resid",), record=("logits",), labels=True,
                     output_ks=(None,) if full else tuple(int(k) for k in ks))

    def run(self, acts: Any, ctx: Context, tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        from .ladder import LADDER_K, check_ladder, leakage_ladder
        from .lens import LogitLens, TunedLens

        tl = ctx.tuned_lens
        tl = TunedLens.fit(ctx.model, acts, seed=ctx.seed, progress=ctx.progress) if tl is True else (tl or None)
        lens = LogitLens(ctx.model, tuned=tl) if tl is not None else None
        ids = check_ladder(ctx.model, ctx.ladder, ctx.answer_tokens, ctx.positions)  # a tokenizer call: cheap
        return {"ladder": leakage_ladder(acts, ctx.labels, ctx.groups, lens=lens, ks=list(ctx.ladder or LADDER_K),
                                         answer_ids=ids, position="last", cv=ctx.cv, seed=ctx.seed, n_boot=ctx.n_boot,
                                         n_perm=ctx.n_perm, progress=ctx.progress, memory_limit=ctx.memory_limit)}

    def figure(self, report: Any) -> Any:
        return report.figure("ladder") if report.ladder is not None and not report.ladder.empty else None


class SufficientReadout(Readout):
    """The probe table from sufficient statistics (:func:`probekit.readout.sufficient.stats_table`): closed-form
    ridge/LDA per fold from summed statistics, point by point and shard by shard, so memory stays one shard
    plus ``cv x d x d`` whatever n is (and across ranks under ``torchrun``). For stores too large for the
    default probes; its verdict reads a p off the bootstrap CI (the permutation test needs the points in
    memory), which holds its level only with many independent units, so fewer than :data:`MIN_UNITS` are
    refused before any forward pass."""

    MIN_UNITS = 1000

    def needs(self, ctx: Context) -> Needs:
        if ctx.labels is not None:
            units = len(set(map(str, ctx.groups))) if ctx.groups is not None else len(ctx.labels)
            if units < self.MIN_UNITS:
                raise InputError(f"the 'sufficient' readout's verdict needs at least {self.MIN_UNITS} independent "
                                 f"units (groups, else samples); this scan has {units}",
                                 fix="use readouts=['probes'] (the permutation verdict) at this size")
        return Needs(labels=True)

    def run(self, acts: Any, ctx: Context, tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        from .sufficient import stats_table

        return {"table": stats_table(acts, ctx.labels, ctx.groups, points=[p for p in acts.points if p in ctx.points],
                                     cv=ctx.cv, seed=ctx.seed, n_boot=ctx.n_boot)}

    def figure(self, report: Any) -> Any:
        return report.figure("leakage") if report.has_leakage else None


for _name, _cls in (("probes", ProbesReadout), ("lens", LensReadout), ("targets", TargetsReadout),
                    ("ladder", LadderReadout), ("sufficient", SufficientReadout)):
    register_readout(_name, _cls)
