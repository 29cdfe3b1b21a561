"""The watermark study's dose-response and paired designs: the grid, its runs, and the tables they give.

:func:`run_dose_study` fine-tunes the reader once per :class:`~probekit.studies.watermark.dose_organism.Dose` of
:meth:`DoseConfig.grid` (every leak fraction on every seed, and per seed the matched ``p = 0`` control, and U3
controls where asked), audits each with :func:`probekit.membership` against the untouched reader, and runs
the distribution-shift guard on a deliberately shifted split. The tables:

- :func:`dose_table`: detection rate per method and fraction (runs detected / runs, Wilson 95% CI), every
  "detected" the membership report's own verdict (:func:`probekit.readout.significance.add_verdicts`).
- :func:`layer_table`: membership AUC and TPR@1%FPR per layer and score, per kind of run, over seeds.
- :func:`agreement`: in every run where an output attack detects, which layers below the last detect too.
- :func:`paired_tests`: the paired design (each held-out scene with seen name ``i`` and with unseen name
  ``i``): per name pair, (score with the seen name - with the unseen one) in the fine-tune minus the same in
  the ``p = 0`` control of its seed, averaged over the two seeds that swap the pools' roles; a sign-flip test
  over name pairs per score, one verdict per fraction, and the minimal detectable shift of every null.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import pandas as pd

from ..._progress import say
from ..._stats import min_detectable_shift, sign_flip_null, t_half_width, wilson
from . import dose_organism as D
from ...readout.significance import add_verdicts
from ...readout.localise import localise, lowest

__all__ = ["DoseConfig", "METHODS", "methods", "depth", "run_dose_study", "dose_table", "layer_table", "agreement",
           "localised_below", "paired_tests", "shifted_guard"]


@dataclass(frozen=True)
class DoseConfig:
    """The grid: every fraction on every seed, per seed a ``p = 0`` control, U3 controls at ``u3`` fractions.

    Sized from single pilot runs (seed 0 unless said, 100 names, fraction 0.5, one thread on the shared
    2-core machine) to fit about 90 minutes: a run (fine-tune, audit, scan, direct prompt) takes 1.5-2 min,
    so 5 fractions x 5 seeds + 5 ``p = 0`` + 5 U3 controls = 35 runs. 20 sightings per name (10 readings)
    gave output-minus-base AUC 0.62 and a raw output AUC of 0.53; 40 sightings with a quarter replay (20
    readings, 5,333 samples, 667 steps) gave 0.68 (seed 1: 0.62) at about the same cost as 20 with half
    replay, and at fraction 0 kept the reader reading (direct prompt 0.59 / 0.57); lr 2e-3 made reading
    collapse at fraction 0 (direct prompt 0.00), lr 3e-3 halved the shape task's accuracy. 40 sightings
    make every fraction a whole number of readings (2, 4, 10, 20).
    """

    fractions: tuple[float, ...] = (0.0, 0.05, 0.1, 0.25, 0.5)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    n_users: int = 100
    sightings: int = 40
    lr: float = 1e-3
    replay: float = 0.25
    u3: tuple[float, ...] = (0.5,)
    n_perm: int = 1000
    n_boot: int = 1000

    @classmethod
    def quick(cls) -> "DoseConfig":
        """``probekit study watermark`` without ``--full``: fractions 0 and 0.5 on one seed, 32 names, no U3."""
        return cls(fractions=(0.0, 0.5), seeds=(0,), n_users=32, u3=(), n_perm=500, n_boot=300)

    def dose(self, **kw: Any) -> D.Dose:
        return D.Dose(n_users=self.n_users, sightings=self.sightings, lr=self.lr, replay=self.replay, **kw)

    def grid(self) -> list[D.Dose]:
        out = []
        for s in self.seeds:
            out.append(self.dose(p=0.0, fraction=0.0, seed=s))
            out += [self.dose(fraction=f, seed=s) for f in self.fractions]
            out += [self.dose(fraction=f, seed=s, leak_pool="other") for f in self.u3]
        return out


def _scanned(run: dict) -> bool:
    v = run["row"].get("residual_detected")
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _rows(pred: Callable[[pd.DataFrame], pd.Series]) -> Callable[[dict], bool]:
    return lambda run: bool(run["table"][pred(run["table"])].detected.any())


def _at(source: str, point: str) -> Callable[[pd.DataFrame], pd.Series]:
    """Rows of a source family (``logit-lens`` with its "minus base" rows, ``patched`` both ways) at a point."""
    return lambda t: t.source.str.startswith(source) & (t.point == point)


def methods(layers: int = 3) -> dict[str, Callable[[dict], bool]]:
    """method -> (run -> detected) for a reader of ``layers`` blocks: the output attacks, the logit lens at every
    layer (the last one's is the output itself) and patching at every layer below the last, the membership probe
    and the old mean-pooled probe; each the report's own verdict over its whole table (one family per run)."""
    last = layers - 1
    return {
        "output loss": _rows(lambda t: (t.source == "output") & (t.score == "loss")),
        "output Min-K%++": _rows(lambda t: (t.source == "output") & (t.score == "min_k_pp")),
        "output minus base (any score)": _rows(lambda t: t.source == "output minus base"),
        **{f"logit lens lm.{i}" + (" (= output)" if i == last else ""): _rows(_at("logit-lens", f"lm.{i}.resid"))
           for i in range(layers)},
        **{f"patched lm.{i} (either direction)": _rows(_at("patched", f"lm.{i}.resid")) for i in range(last)},
        "membership probe (any layer)": _rows(lambda t: t.source == "probe"),
        "mean-pooled residual probe (scan)": lambda run: _scanned(run) and bool(run["row"]["residual_detected"]),
    }


METHODS = methods(3)  # the shipped reader's 3 blocks
OUTPUT = ("output loss", "output Min-K%++", "output minus base (any score)")


def run_dose_study(cfg: DoseConfig, base_path: Any = None, verbose: bool = True, base: Any = None) -> dict:
    """Every run of ``cfg.grid()`` (with the patching rows and attribution), then, on the first fraction-0 fine-tune,
    the guard on a shifted split and Ju et al.'s unsplit folds; the base reader's scan beside the first
    top-fraction fine-tune's (for the comparison figure).

    Returns ``runs`` (per run: ``row``, ``table``, ``guard``, ``attribution``, ``pairs``, ``scores``,
    ``summary``), ``rows`` (a DataFrame), ``guard_shift`` (:func:`shifted_guard`), ``protocol``, ``scans``,
    ``config`` and ``seconds``.
    """
    import torch

    from ...models.loading import load
    from . import organism as W
    from ...organisms.reader import reader

    t0 = time.perf_counter()
    torch.set_num_threads(1)
    base_path = base_path or reader()
    base = base if base is not None else load(base_path)
    top = max(cfg.fractions)
    runs, shift, protocol, scans = [], None, [], {}
    for d in cfg.grid():
        r = D.run_dose(base_path, d, base=base, attribution=True,  # the patching rows: in every run, controls too
                       n_perm=cfg.n_perm, n_boot=cfg.n_boot)
        rep = r["membership"]
        runs.append({"row": r["row"], "table": rep.table.drop(columns="perm_null", errors="ignore"),
                     "guard": rep.guard.drop(columns="perm_null", errors="ignore"), "attribution": rep.attribution,
                     "pairs": r["pairs"], "scores": r["scores"], "summary": rep.summary()})
        if shift is None and d.kind == "task-irrelevant":  # no name read: any membership found is the shift
            shift = shifted_guard(r["tuned"], base, r["dose"], cfg)
            protocol = [{"model": "base reader", **W.stratified(base, r["eval"], d.seed)},
                        {"model": d.label(), **W.stratified(r["tuned"], r["eval"], d.seed)}]
        if not scans and d.kind == "leak" and d.fraction == top and r["scan"] is not None:
            scans = {"base reader": W._scan(base, r["eval"], d.seed, min(cfg.n_boot, 300)), d.label(): r["scan"]}
        say(f"Finished {d.label()} ({r['row']['seconds']:.0f} s).", t0, verbose)
    return {"runs": runs, "rows": pd.DataFrame([r["row"] for r in runs]), "guard_shift": shift,
            "protocol": pd.DataFrame(protocol), "scans": scans, "config": cfg, "seconds": time.perf_counter() - t0}


def shifted_guard(tuned: Any, base: Any, d: D.Dose, cfg: DoseConfig) -> dict:
    """The membership audit on a deliberately shifted split of a fine-tune that read no name: members' names
    written opaque (opacity 1), non-members' at the study's 0.5, on the same scenes. Reading is easier on
    opaque text, so the output attacks "detect"; the blind baseline must call the split confounded."""
    from ...membership import membership

    seen, unseen, _ = D.pools(d)
    opaque = D.paired_set(replace(d, opacity=1.0), seen, unseen)
    normal = D.paired_set(d, seen, unseen)
    members, _ = D.membership_samples(opaque)
    _, nonmembers = D.membership_samples(normal)
    rep = membership(tuned, members, nonmembers, base=base, n_perm=cfg.n_perm, n_boot=cfg.n_boot,
                              seed=d.seed, attribution=False, progress=False)
    return {"condition": d.label(), "confounded": rep.confounded, "summary": rep.summary(),
            "guard": rep.guard.drop(columns="perm_null", errors="ignore"),
            "table": rep.table.drop(columns="perm_null", errors="ignore")}


def _key(row: dict) -> str:
    return row["kind"] if row["kind"] not in ("leak", "task-irrelevant") else f"fraction {row['fraction']:g}"


def depth(runs: list[dict]) -> int:
    """The reader's blocks, read off the runs' tables (the deepest ``lm.K.resid`` point plus one)."""
    pts = {p for r in runs for p in r["table"].point.unique() if str(p).startswith("lm.")}
    return 1 + max(map(_depth, pts)) if pts else 3


def dose_table(runs: list[dict]) -> pd.DataFrame:
    """One row per kind of run (every fraction, the controls) and method (:func:`methods` of the runs' reader):
    runs detected of runs, Wilson CI."""
    out = []
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(_key(run["row"]), []).append(run)
    chosen = methods(depth(runs))
    for key, rs in groups.items():
        r0 = rs[0]["row"]
        for name, hit in chosen.items():
            k = sum(hit(r) for r in rs)
            if name.startswith("mean-pooled") and not all(_scanned(r) for r in rs):
                continue  # not scanned
            lo, hi = wilson(k, len(rs))
            out.append({"runs": key, "kind": r0["kind"], "fraction": r0["fraction"] if r0["p"] else math.nan,
                        "readings": r0["readings"], "method": name, "detected": k, "n": len(rs), "rate": k / len(rs),
                        "rate_lo": lo, "rate_hi": hi})
    return pd.DataFrame(out)


def layer_table(runs: list[dict]) -> pd.DataFrame:
    """Membership AUC and TPR@1%FPR per (kind of run, source, point, score): mean over seeds, the seeds' range,
    and in how many runs the row was detected."""
    parts = [run["table"].assign(runs=_key(run["row"]), seed=run["row"]["seed"]) for run in runs]
    t = pd.concat(parts, ignore_index=True)
    g = t.groupby(["runs", "source", "point", "score"], sort=False)
    return g.agg(auc=("auc", "mean"), auc_min=("auc", "min"), auc_max=("auc", "max"), tpr1=("tpr_at_1fpr", "mean"),
                 tpr1_min=("tpr_at_1fpr", "min"), tpr1_max=("tpr_at_1fpr", "max"), detected=("detected", "sum"),
                 n=("detected", "size"), mde_auc=("mde_auc", "mean")).reset_index()


def _depth(point: str) -> int:
    return int(point.split(".")[1])


def _last_point(t: pd.DataFrame) -> str | None:
    """A run's deepest layer-wise point: its lens rows are the output's by construction (``lm.{L-1}.resid``)."""
    points = t[~t.source.str.startswith("output")].point.unique()
    return max(points, key=_depth) if len(points) else None


def _below_last(t: pd.DataFrame) -> pd.DataFrame:
    """A run's layer-wise rows (lens, probe, patching) at the layers below the last (:func:`_last_point`)."""
    inner = t[~t.source.str.startswith("output")]
    return inner[inner.point != _last_point(t)]


def localised_below(ag: pd.DataFrame) -> pd.Series:
    """Per run of :func:`agreement`: whether the localisation named a layer below the last (``localised`` holds
    that layer; ``none`` where it stopped at the last, empty where the tables carry no p-values to test)."""
    return ~ag.localised.isin(("none", ""))


def agreement(runs: list[dict]) -> pd.DataFrame:
    """Per run where an output row (raw or minus base) is detected: the detected layer-wise rows below the last
    layer (logit lens, lens minus base, probe, patching scores), by layer; the lowest layer the fixed-sequence
    localisation reaches (:func:`probekit.readout.localise.localise`, ``none`` if it stops at the last; see
    :func:`localised_below`); and, to say why none was where none was, the smallest p of those rows (raw and
    corrected) and the causal share of the member/non-member gap carried up to the deepest layer below the last,
    with its bootstrap interval (how well the data place the leak there)."""
    out = []
    for run in runs:
        t = run["table"]
        out_hit = t[t.source.str.startswith("output") & t.detected]
        if not len(out_hit):
            continue
        below = _below_last(t)
        inner = below[below.detected]
        att = run.get("attribution")
        deep = max(below.point.unique(), key=_depth) if len(below) else None
        share = att[att.point == deep] if att is not None and deep is not None else None
        got = share is not None and len(share) > 0
        p_min = {k: float(below[k].min()) if k in below and len(below) else float("nan") for k in ("p_value", "p_adjusted")}
        tested = "p_value" in t  # tables written without p-values have nothing to localise
        low = lowest(localise(t, last=_last_point(t))) if tested else None
        out.append({"condition": run["row"]["condition"], "output": ", ".join(f"{r.source} {r.score}" for r in out_hit.itertuples()),
                    "layers": ", ".join(sorted(set(inner.point))) or "none", "localised": low or ("none" if tested else ""),
                    "rows": ", ".join(f"{r.point} {r.source} {r.score}" for r in inner.itertuples()),
                    "min_p_below": p_min["p_value"], "min_p_adjusted_below": p_min["p_adjusted"],
                    "share_point": deep or "", "share": float(share.share_tuned.iloc[0]) if got else float("nan"),
                    "share_lo": float(share.share_tuned_lo.iloc[0]) if got else float("nan"),
                    "share_hi": float(share.share_tuned_hi.iloc[0]) if got else float("nan")})
    return pd.DataFrame(out, columns=["condition", "output", "layers", "localised", "rows", "min_p_below",
                                      "min_p_adjusted_below",
                                      "share_point", "share", "share_lo", "share_hi"])


def quiet_p_range(runs: list[dict]) -> tuple[float, float] | None:
    """Over the runs that read no name (fraction 0 and the controls): the range of each run's smallest uncorrected
    p among the rows below the last layer (how low a null run's rows go; None without such runs or p-values)."""
    lows = [float(_below_last(r["table"]).p_value.min()) for r in runs
            if r["row"]["kind"] != "leak" and "p_value" in r["table"]]
    return (min(lows), max(lows)) if lows else None


def _pair_diffs(pairs: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """Per name pair: the mean over its scenes of (score with the seen name - score with the unseen name)."""
    s = scores.assign(pair=pairs.pair.to_numpy(), scene=pairs.scene.to_numpy(), label=pairs.label.to_numpy())
    seen = s[s.label == "seen"].set_index(["pair", "scene"]).drop(columns="label")
    unseen = s[s.label != "seen"].set_index(["pair", "scene"]).drop(columns="label")
    return (seen - unseen.loc[seen.index]).groupby(level="pair").mean()


def paired_tests(runs: list[dict], n_flip: int = 1000, seed: int = 0) -> tuple[pd.DataFrame, list[str]]:
    """The difference-in-differences test of every fraction against the ``p = 0`` control, over name pairs.

    Per seed: D_i = (seen - unseen) in the fine-tune - (seen - unseen) in its seed's ``p = 0`` control, per
    name pair ``i`` and score (:func:`~probekit.studies.watermark.dose_organism.paired_scores`); a unit is a name pair
    of one pool, its D the mean over the seeds that share the pool (their roles swapped). Runs whose reading
    collapsed (direct prompt 0.00 on both pools), or whose control did, are dropped and listed.

    Per fraction, one verdict over its rows (:func:`probekit._stats.sign_flip_null` as the permutation null of
    :func:`add_verdicts`): ``estimate`` (mean D) with a t 95% CI, ``p_value``, ``p_adjusted``, ``leaks``, and
    ``mde`` (:func:`probekit._stats.min_detectable_shift`, at the family's size). Returns the table and the
    dropped runs.
    """
    controls = {r["row"]["seed"]: r for r in runs if r["row"]["kind"] == "p=0 control"}
    dropped = [r["row"]["condition"] for r in runs if r["row"]["collapsed"]]
    by_fraction: dict[float, list[pd.DataFrame]] = {}
    readings: dict[float, int] = {}
    for r in runs:
        row = r["row"]
        if row["kind"] not in ("leak", "task-irrelevant") or row["collapsed"]:
            continue
        ctl = controls.get(row["seed"])
        if ctl is None or ctl["row"]["collapsed"]:
            dropped.append(f"{row['condition']} (its control {'collapsed' if ctl else 'is missing'})")
            continue
        did = _pair_diffs(r["pairs"], r["scores"]) - _pair_diffs(ctl["pairs"], ctl["scores"])
        by_fraction.setdefault(row["fraction"], []).append(did.assign(pool=row["seed"] // 2))
        readings[row["fraction"]] = row["readings"]
    rows = []
    for f, parts in sorted(by_fraction.items()):
        units = pd.concat(parts).reset_index().groupby(["pool", "pair"]).mean()  # role-swapped seeds averaged
        cols = [c for c in units.columns if ":lm." not in c or not _is_last(c, units.columns)]
        x = units[cols].to_numpy().T  # [rows, units]
        null = sign_flip_null(x, n_flip=n_flip, seed=seed)
        n = x.shape[1]
        sd = x.std(1, ddof=1)
        half = t_half_width(sd, n)
        t = pd.DataFrame([{"fraction": f, "readings": readings[f], "task": c.split(":")[0], "source": c.split(":")[1], "point": c.split(":")[2],
                           "score": c.split(":")[3], "estimate": float(m), "lo": float(m - h), "hi": float(m + h),
                           "sd": float(s), "n_units": n, "seeds": len(parts), "perm_null": nl}
                          for c, m, h, s, nl in zip(cols, x.mean(1), half, sd, null)])
        t = add_verdicts(t).drop(columns=["mde_accuracy", "perm_null"])
        t["mde"] = min_detectable_shift(t.sd, n, len(t))
        rows.append(t)
    return (pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()), dropped


def _is_last(col: str, cols: Any) -> bool:
    """Whether a lens column reads the last layer (the output itself: kept once, as the output row)."""
    layers = sorted({int(c.split(":")[2].split(".")[1]) for c in cols if ":lm." in c})
    return int(col.split(":")[2].split(".")[1]) == layers[-1]
