"""Does an intervention remove what it should, and what does it cost?

``evaluate`` puts side by side

- suppression: probe accuracy (95% CI), its distance from chance ``|accuracy - chance|`` (a
  probe reliably *below* chance reads the label too) and mutual information (bits) per point,
  before and after, with probes *retrained* on activations recorded under the intervention (a
  probe trained before the edit only shows that the old read-out broke, not that the
  information is gone), on images the intervention was *not* fitted on (see
  :mod:`probekit.steering.heldout`: a seeded split, or a refusal when the direction's recorded
  fitting images overlap the evaluation images);
- cost: KL divergence of the next-token distribution at the last prompt token on clean
  inputs (nats, mean and 95% bootstrap CI), task accuracy before/after (Wilson CIs) and the
  change in answer loss (nats per answer token, paired bootstrap CI).

``sweep`` repeats the "after" half over settings (alpha, number of layers, ...);
``probekit.report.figures.tradeoff_figure`` plots cost against suppression, one marker per setting.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ContextManager

import numpy as np
import pandas as pd

from .._stats import bootstrap_mean, wilson
from ..data.images import check_images
from ..errors import InputError, check_bool
from ..hooks.collect import check_prompts, collect
from ..models.adapter import Model
from .directions import Direction
from .heldout import plan
from .outputs import _grouped_inputs, answer_scores, next_token_kl, next_token_logprobs  # noqa: F401 (_grouped_inputs: experiments)
from .tables import EvalReport, _data_numbers, _summary_numbers, build_report

__all__ = ["EvalReport", "evaluate", "sweep", "next_token_logprobs", "answer_scores"]




def _boot_mean(x: np.ndarray, seed: int, n_boot: int = 2000) -> tuple[float, float, float]:
    """Mean and 95% percentile-bootstrap interval (:func:`probekit._stats.bootstrap_mean`)."""
    return bootstrap_mean(x, seed, n_boot)


class _Evaluator:
    """Holds the 'before' half (probes, clean log-probs, task scores) so sweeps compute it once."""

    def __init__(self, model: Model, items: list, labels: np.ndarray, clean_images: Any, task_samples: Any,
                 prompts: Any, clean_prompts: Any, points: Any, positions: Any, groups: Any, seed: int,
                 cv: int, batch_size: int, n_boot: int, progress: bool, data: dict):
        self.model = model
        self.items = items
        self.prompts = check_prompts(prompts, len(items))
        self.labels = labels
        self.data = data
        self.names = model.resolve(points)
        self.positions = positions
        self.clean = check_images(clean_images) if clean_images is not None else self.items
        if clean_prompts is None:
            clean_prompts = prompts if (prompts is None or isinstance(prompts, str) or clean_images is None) else None
            if clean_prompts is None:
                raise InputError("clean_images have no prompts", fix="pass clean_prompts= (or one prompt string)")
        self.clean_prompts = check_prompts(clean_prompts, len(self.clean))
        self.tasks = list(task_samples) if task_samples is not None else None
        self.groups, self.seed, self.cv = groups, seed, cv
        self.batch_size, self.n_boot, self.progress = batch_size, n_boot, progress
        # before
        self.probes_before = self._probe(contextlib.nullcontext())
        self.logp_before = next_token_logprobs(model, self.clean, self.clean_prompts, batch_size)
        self.task_before = answer_scores(model, self.tasks, batch_size) if self.tasks else None

    def _probe(self, ctx: ContextManager) -> pd.DataFrame:
        from ..readout.probes import probe_layers  # readout sits beside steering; imported when used

        with ctx:
            store = collect(self.model, self.items, self.prompts, points=self.names, positions=self.positions,
                            batch_size=self.batch_size, progress=self.progress)
        multi = len(store.info(self.names[0])["shape"]) == 2  # [n, p, d]: label slots 'last', 'image_mean', ...
        names = store.positions(self.names[0]) if multi else None
        return probe_layers(store, self.labels, groups=self.groups, cv=self.cv, seed=self.seed, positions=names,
                            n_boot=self.n_boot, progress=self.progress)

    def after(self, intervention: Callable[[], ContextManager]) -> EvalReport:
        # each context is made right where it is entered: orthogonalize edits the weights when it is
        # called, so one made ahead and never entered (an interrupt, no task samples) would stay applied
        after = self._probe(_made(intervention))
        with _made(intervention):
            logp_after = next_token_logprobs(self.model, self.clean, self.clean_prompts, self.batch_size)
        kl = next_token_kl(self.logp_before, logp_after)
        kl_mean, kl_lo, kl_hi = _boot_mean(kl, self.seed)
        cost: dict[str, Any] = {"kl_mean": kl_mean, "kl_lo": kl_lo, "kl_hi": kl_hi, "kl_n": len(kl)}
        if self.tasks:
            with _made(intervention):
                task_after = answer_scores(self.model, self.tasks, self.batch_size)
            (c0, l0), (c1, l1) = self.task_before, task_after
            nt = len(c0)
            lo0, hi0 = wilson(int(c0.sum()), nt)
            lo1, hi1 = wilson(int(c1.sum()), nt)
            d_mean, d_lo, d_hi = _boot_mean(l1 - l0, self.seed)
            cost.update({
                "task_accuracy_before": float(c0.mean()), "task_accuracy_before_lo": lo0, "task_accuracy_before_hi": hi0,
                "task_accuracy_after": float(c1.mean()), "task_accuracy_after_lo": lo1, "task_accuracy_after_hi": hi1,
                "task_n": nt, "answer_loss_before": float(l0.mean()), "answer_loss_after": float(l1.mean()),
                "answer_loss_delta": d_mean, "answer_loss_delta_lo": d_lo, "answer_loss_delta_hi": d_hi,
            })
        return build_report(self.probes_before, after, cost, self.positions, self.data)


def _made(intervention: Callable[[], ContextManager]) -> ContextManager:
    """``intervention()``, checked to be a context manager (to be entered at once)."""
    c = intervention()
    if not (hasattr(c, "__enter__") and hasattr(c, "__exit__")):
        raise InputError(f"intervention() returned a {type(c).__name__}, not a context manager",
                         fix="return e.g. probekit.ablate(model, direction) (without entering it)")
    return c


_DATA_KW = ("fit", "fit_images", "fit_labels", "eval_images", "eval_labels", "split", "direction", "allow_overlap")


def _start(model: Model, intervention: Any, images: Any, labels: Any, opts: dict, setting: dict):
    """Check everything and plan the data (before any forward), fit when asked, then the 'before' half."""
    if not isinstance(model, Model):
        raise InputError(f"model is a {type(model).__name__}", fix="pass a probekit.Model (probekit.load / wrap)")
    model.resolve(opts["points"])  # an unknown point fails here, before any fitting
    check_bool(opts["progress"], "progress")
    if opts["clean_images"] is not None:
        check_images(opts["clean_images"])
        p = opts["prompts"]
        if opts["clean_prompts"] is None and not (p is None or isinstance(p, str)):
            raise InputError("clean_images have no prompts", fix="pass clean_prompts= (or one prompt string)")
    items, lab, prompts, groups, make, data = plan(
        intervention, images, labels, fit=opts["fit"], fit_images=opts["fit_images"], fit_labels=opts["fit_labels"],
        eval_images=opts["eval_images"], eval_labels=opts["eval_labels"], split=opts["split"],
        direction=opts["direction"], allow_overlap=opts["allow_overlap"], prompts=opts["prompts"],
        groups=opts["groups"], seed=opts["seed"], setting=setting)
    ev = _Evaluator(model, items, lab, opts["clean_images"], opts["task_samples"], prompts, opts["clean_prompts"],
                    opts["points"], opts["positions"], groups, opts["seed"], opts["cv"], opts["batch_size"],
                    opts["n_boot"], opts["progress"], data)
    return ev, make


def evaluate(model: Model, intervention: Callable[..., ContextManager], images: Any = None, labels: Any = None, *,
             fit: Callable[[list, np.ndarray], Any] | None = None, fit_images: Any = None, fit_labels: Any = None,
             eval_images: Any = None, eval_labels: Any = None, split: float = 0.5,
             direction: Direction | None = None, allow_overlap: bool = False,
             clean_images: Any = None, task_samples: Sequence[Any] | None = None,
             prompts: str | Sequence[str] | None = None, clean_prompts: str | Sequence[str] | None = None,
             points: str | Sequence[str] = "lm.*.resid", positions: Any = "last", groups: Any = None,
             seed: int = 0, cv: int = 5, batch_size: int = 16, n_boot: int = 1000,
             progress: bool = False) -> EvalReport:
    """Suppression and cost of an intervention, side by side, on images it was not fitted on.

    Two ways to call it:

    - ``evaluate(model, lambda: ablate(model, d), images, labels)``: ``images`` are the
      evaluation images (``eval_images=`` / ``eval_labels=`` say the same). When the
      direction records the images it was fitted on (:func:`leace_sequential`, or any
      constructor on a store from :func:`probekit.collect`) or ``fit_images=`` names them,
      an evaluation image among them raises :class:`~probekit.errors.InputError` before any
      forward pass: an eraser graded on its own fitting images drives retrained probes far
      below chance and looks like a success. ``allow_overlap=True`` measures anyway, with an
      :class:`~probekit.steering.heldout.OverlapWarning` and ``fit_overlap`` in the report.
    - ``evaluate(model, lambda d: ablate(model, d), images, labels, fit=fitter)``: one image
      set; ``fitter(images, labels) -> Direction`` is fitted on a seeded, label-stratified
      ``split`` of it (half by default; ``fit_images=`` / ``fit_labels=`` to choose) and
      the intervention, built from the fitted direction, is evaluated on the rest.
      ``report.data`` records which indices went where.

    Suppression is reported as accuracy, as ``abs_excess = |accuracy - chance|`` (with its
    95% interval; a probe reliably below chance still reads the label and is flagged in
    ``below_chance_after``) and as mutual information, before and after.

    Args:
        intervention: a callable returning a fresh (not yet entered) context manager, e.g.
            ``lambda: probekit.ablate(model, direction)`` (with ``fit``: taking the direction);
            it is entered once per measurement.
        images, labels: evaluation images and the attribute to suppress (one label per
            image); with ``fit`` and no ``fit_images``, the set that is split.
        fit, fit_images, fit_labels, eval_images, eval_labels, split: see above.
        direction: the direction the intervention uses, for the overlap check (read from
            ``ablate`` / ``steer`` contexts when not given).
        allow_overlap: evaluate even when the direction was fitted on evaluation images.
        clean_images: inputs without the attribute for the KL cost (default: the evaluation images).
        task_samples: objects with ``image``, ``question``, ``answer`` for task accuracy and
            answer loss (skipped when None).
        prompts / clean_prompts: one string or one per image (collect's default when None).
        points, positions: where probes read (as in :func:`probekit.collect`).
        groups: passed to the probes' cross-validation (samples sharing a source) and kept
            whole by the split.

    Returns:
        :class:`EvalReport` (``report.table`` is the tidy side-by-side table).

    Example:
        >>> import probekit, tempfile, torch
        >>> from probekit.steering import Direction, ablate
        >>> m = probekit.load(probekit.tiny.build("llava", tempfile.mkdtemp() + "/m"))
        >>> imgs = probekit.tiny.fixture_images(40, 32)
        >>> y = [i % 2 for i in range(40)]
        >>> from probekit.steering import leace_sequential
        >>> fitter = lambda im, lab: leace_sequential(m, im, lab, "What colour?", points="lm.0.resid")
        >>> rep = evaluate(m, lambda d: ablate(m, d), imgs, y, fit=fitter, prompts="What colour?",
        ...                points="lm.0.resid", n_boot=100)
        >>> sorted(set(rep.table.metric)), rep.data["split"], rep.data["n_eval"], rep.data["fit_overlap"]
        (['abs_excess', 'kl_nats', 'mi_bits', 'probe_accuracy'], 'seeded', 20, 0)
    """
    opts = {"fit": fit, "fit_images": fit_images, "fit_labels": fit_labels, "eval_images": eval_images,
            "eval_labels": eval_labels, "split": split, "direction": direction, "allow_overlap": allow_overlap,
            "clean_images": clean_images, "task_samples": task_samples, "prompts": prompts,
            "clean_prompts": clean_prompts, "points": points, "positions": positions, "groups": groups, "seed": seed,
            "cv": cv, "batch_size": batch_size, "n_boot": n_boot, "progress": progress}
    ev, make = _start(model, intervention, images, labels, opts, {})
    return ev.after(make)


def _settings(grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]]) -> list[dict]:
    if isinstance(grid, Mapping):
        keys = list(grid)
        vals = [list(grid[k]) for k in keys]
        if not keys or any(len(v) == 0 for v in vals):
            raise InputError("the sweep grid is empty", fix='pass e.g. {"alpha": [0, 2, 4]}')
        import itertools

        return [dict(zip(keys, combo)) for combo in itertools.product(*vals)]
    out = [dict(s) for s in grid]
    if not out:
        raise InputError("no settings to sweep", fix='pass e.g. [{"alpha": 1}, {"alpha": 2}]')
    return out


def sweep(model: Model, intervention: Callable[..., ContextManager],
          grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]], images: Any = None, labels: Any = None,
          **kwargs: Any) -> pd.DataFrame:
    """Evaluate ``intervention(**setting)`` for every setting; one row per setting.

    ``grid`` is ``{"alpha": [1, 2, 4]}`` (every combination of the lists) or a list of
    setting dicts. The 'before' half is computed once. Each row holds the setting, a
    ``label``, the worst case over points (``abs_excess_after_max`` = the largest
    ``|accuracy - chance|``, ``accuracy_after_max`` / ``_min``, ``mi_after_max``, with their
    'before' values and ``chance``), the data used (``split``, ``n_fit``, ``n_eval``,
    ``fit_overlap``) and the cost numbers of :class:`EvalReport` (``kl_mean``, ``kl_lo``,
    ``kl_hi``, task accuracy and answer loss when ``task_samples`` is given). Other keyword
    arguments are those of :func:`evaluate`; with ``fit=`` the direction is fitted once on
    the fitting part and ``intervention(direction, **setting)`` is evaluated on the rest.

    Example:
        >>> import probekit, tempfile, torch
        >>> m = probekit.load(probekit.tiny.build("llava", tempfile.mkdtemp() + "/m"))
        >>> imgs, y = probekit.tiny.fixture_images(40, 32), [i % 2 for i in range(40)]
        >>> v = torch.randn(m.d_model)
        >>> df = sweep(m, lambda alpha: probekit.steering.steer(m, v, alpha), {"alpha": [0.0, 4.0]},
        ...            imgs, y, prompts="What colour?", points="lm.0.resid", n_boot=100)
        >>> df.label.tolist(), bool(df.kl_mean.iloc[0] == 0.0)
        (['alpha=0.0', 'alpha=4.0'], True)
    """
    if not callable(intervention):
        raise InputError("intervention must be a callable taking the setting as keywords",
                         fix="e.g. lambda alpha: probekit.steer(model, v, alpha)")
    settings = _settings(grid)
    opts = {"fit": None, "fit_images": None, "fit_labels": None, "eval_images": None, "eval_labels": None,
            "split": 0.5, "direction": None, "allow_overlap": False, "clean_images": None, "task_samples": None,
            "prompts": None, "clean_prompts": None, "points": "lm.*.resid", "positions": "last", "groups": None,
            "seed": 0, "cv": 5, "batch_size": 16, "n_boot": 1000, "progress": False}
    unknown = set(kwargs) - set(opts)
    if unknown:
        raise InputError(f"unknown arguments {sorted(unknown)}", fix=f"use among {sorted(opts)}")
    opts.update(kwargs)
    ev, make = _start(model, intervention, images, labels, opts, settings[0])
    rows = []
    for s in settings:
        rep = ev.after(lambda s=s: make(**s))
        label = ", ".join(f"{k}={v}" for k, v in s.items())
        rows.append({**s, "label": label, **_summary_numbers(rep.suppression), **_data_numbers(rep.data), **rep.cost})
    return pd.DataFrame(rows)
