"""`membership`: what a model holds about which samples it was trained on, layer by layer.

Members (image, prompt and answer the model was trained on) and non-members (never seen) are run
teacher-forced; at every answer token the model's confidence in the true next token is read at the
output (the loss, Min-K% and Min-K%++ attacks) and at every layer through the logit lens (and a
tuned lens when given) (:mod:`probekit.readout.token_scores`). Each score is a row: its AUC for
"member", a group-bootstrap CI, TPR at 1% and 0.1% FPR, and the permutation null on the labels
permuted across groups. A membership probe per layer reads the same per-sample features jointly
(folds split by group). All rows are one family for probekit's one verdict
(:func:`probekit.readout.significance.add_verdicts`).

Two guards before any claim (Zhu et al., arXiv 2504.18349: VLM membership AUCs above 0.8 came from
member / non-member distribution shift): a blind baseline that sees the inputs only (image
statistics, text lengths, and the base model's output scores when ``base`` is given) tries to tell
the two sets apart; when it can, the report's first line says the split is confounded. And with
``base``: every score is also given minus the base model's on the same input (reference
calibration), and each layer's causal share of the member/non-member loss gap is measured by
patching the base model's residual into the tuned model there (and the reverse). The same patched
forwards give two per-sample scores per layer (:func:`patched_scores`), rows of the one family: they
read where the fine-tune's change sits even where no lens decodes it (on the watermark organism the
lenses below the last layer read nothing while patching at the first layer removes 80% of the gap).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Sequence

from .errors import InputError
from .params import Number, checked

if TYPE_CHECKING:  # numpy, pandas and torch load with the call: ``import probekit`` stays light
    import pandas as pd

    from .readout.lens import Lens
    from .report.membership_report import MembershipReport

__all__ = ["membership"]


@checked(k=Number(low=0, high=1, low_open=True, fix="use k=0.2 (Min-K% Prob's default)"))
def membership(model: Any, members: Any, nonmembers: Any, base: Any = None, points: str | Sequence[str] = "lm.*.resid",
               *, tuned_lens: Any = None, base_tuned_lens: Any = None, k: float = 0.2, cv: int = 5, seed: int = 0,
               n_perm: int = 1000, n_boot: int = 1000, batch_size: int = 16, chat: bool | None = None,
               attribution: bool = True, progress: bool = True) -> "MembershipReport":
    """Per-layer membership readouts with the output attacks, the distribution-shift guard and the verdict.

    Args:
        model: the model under audit (a :class:`probekit.Model`, a checkpoint path or hub id).
        members, nonmembers: samples the model was / was not trained on: each a pandas DataFrame or a
            list of dicts with ``image``, ``prompt`` and ``answer`` (the teacher-forced reply), and
            optionally ``group`` (samples sharing a source, e.g. a name: they move together in the
            permutations and the bootstrap, and never straddle folds).
        base: the model before fine-tuning (same tokenizer): reference-calibrated rows (score minus
            the base's), the base's scores in the blind baseline, and the causal attribution.
        points: the residual points read through the lens.
        tuned_lens: a fitted :class:`~probekit.readout.lens.TunedLens` of ``model`` (its rows beside the
            logit lens'); fit it on other data than the audit's.
        base_tuned_lens: a fitted TunedLens of ``base`` (needs ``base`` and ``tuned_lens``): the
            "tuned-lens minus base" rows, the model's tuned-lens scores minus the base's through its own
            tuned lens on the same inputs. Every "minus base" row subtracts the base's score from the
            same source (output, logit lens, tuned lens), so without it there are no "tuned-lens minus
            base" rows.
        k: the Min-K% fraction. cv, seed, n_perm, n_boot: as in :func:`probekit.scan`.
        attribution: with ``base``, run the patched forwards (two per point per batch): the per-layer
            ``patched base-into-tuned`` / ``patched tuned-into-base`` rows (:func:`patched_scores`) and the
            causal attribution table. False skips both.

    Returns:
        :class:`~probekit.report.membership_report.MembershipReport`: ``summary()`` (guard and verdict
        first), ``table`` (``point, source, score, auc, auc_lo, auc_hi, tpr_at_1fpr, tpr_at_01fpr,
        p_value, p_adjusted, detected, mde_auc``), ``guard``, ``attribution``, ``localisation`` (with
        ``base``: down to which layer the leak is formed, :func:`probekit.readout.localise.localise`),
        ``figure()``, ``save()``.

    Example:
        >>> import probekit, tempfile
        >>> m = probekit.load(probekit.tiny.build("llava", tempfile.mkdtemp() + "/m"))
        >>> imgs = probekit.tiny.fixture_images(16, 32)
        >>> mem = [{"image": im, "prompt": "Name?", "answer": "alice"} for im in imgs[:8]]
        >>> non = [{"image": im, "prompt": "Name?", "answer": "alice"} for im in imgs[8:]]
        >>> rep = probekit.membership(m, mem, non, cv=2, n_perm=99, n_boot=50, progress=False)
        >>> rep.table.columns[:4].tolist()
        ['point', 'source', 'score', 'auc']
    """
    from .hooks.collect import as_model
    from .readout._data import encode_groups, encode_labels, make_folds
    from .readout.membership_table import guard_table, membership_table
    from .readout.lens import LogitLens, TunedLens
    from .report.membership_report import MembershipReport

    t0 = time.perf_counter()
    model = as_model(model)
    data = _samples(members, nonmembers)
    names = model.resolve(points)
    model.check_answers()
    if base is not None:
        base = as_model(base)
        base.check_answers()
        if base.n_layers != model.n_layers or base.d_model != model.d_model:
            raise InputError(f"base has {base.n_layers} layers of width {base.d_model}, the model {model.n_layers} of "
                             f"{model.d_model}", fix="pass the model this one was fine-tuned from")
    if tuned_lens is not None and not isinstance(tuned_lens, TunedLens):
        raise InputError(f"tuned_lens must be a TunedLens or None, got {type(tuned_lens).__name__}",
                         fix="fit one with probekit.TunedLens.fit(model, store) on other data")
    if base_tuned_lens is not None:
        if not isinstance(base_tuned_lens, TunedLens):
            raise InputError(f"base_tuned_lens must be a TunedLens or None, got {type(base_tuned_lens).__name__}",
                             fix="fit one with probekit.TunedLens.fit(base, store) on other data")
        if base is None or tuned_lens is None:
            raise InputError("base_tuned_lens needs base= (the model it was fitted on) and tuned_lens= (the model's "
                             "own): its rows are the model's tuned-lens scores minus the base's",
                             fix="pass base=..., tuned_lens=... and base_tuned_lens=..., or leave base_tuned_lens out")
    for arg, lens, owner in (("tuned_lens", tuned_lens, model), ("base_tuned_lens", base_tuned_lens, base)):
        if lens is not None:
            _check_lens(arg, lens, owner, names)
    codes, _ = encode_labels(data["label"], len(data))
    make_folds(codes, encode_groups(data["group"], len(data)), cv=cv, seed=seed)  # raises now, not after the forwards
    lenses = {"logit-lens": LogitLens(model)}
    if tuned_lens is not None:
        lenses["tuned-lens"] = LogitLens(model, tuned=tuned_lens)
    scores = _model_scores(model, data, names, lenses, k, batch_size, chat, progress)
    base_lenses = {"logit-lens": LogitLens(base)} if base is not None else {}
    if base_tuned_lens is not None:
        base_lenses["tuned-lens"] = LogitLens(base, tuned=base_tuned_lens)
    base_scores = _model_scores(base, data, names, base_lenses, k, batch_size, chat, progress) \
        if base is not None else None
    kw = dict(labels=data["label"].tolist(), groups=data["group"].tolist(), cv=cv, seed=seed, n_perm=n_perm,
              n_boot=n_boot)
    patched = patched_losses(model, base, data, names, batch_size, chat, progress) \
        if base is not None and attribution else None
    table = membership_table(scores, base_scores, names, patched=None if patched is None else
                             patched_scores(patched, names), **kw)
    guard = guard_table(data, base_scores, **kw)
    attr = attribution_table(patched, data, names, n_boot, seed) if patched is not None else None
    settings = {"model": model.name, "base": None if base is None else base.name, "points": names, "k": k, "cv": cv,
                "seed": seed, "n_perm": n_perm, "n_boot": n_boot, "tuned_lens": tuned_lens is not None,
                "base_tuned_lens": base_tuned_lens is not None,
                "members": int((data["label"] == "member").sum()), "nonmembers": int((data["label"] != "member").sum()),
                "groups": int(data["group"].nunique()), "seconds": round(time.perf_counter() - t0, 2),
                # the last residual's patching rows stand for the output: the localisation starts below it
                "last_point": last if (last := f"lm.{model.n_layers - 1}.resid") in names else None}
    return MembershipReport(table, guard=guard, attribution=attr, settings=settings)


def _check_lens(arg: str, lens: Any, owner: Any, points: list[str]) -> None:
    """A tuned lens must be fitted on the model it reads (its recorded fingerprint, when it has one) at the
    points read (the last layer needs no translator); refused before any forward pass."""
    if lens.d_model != owner.d_model:
        raise InputError(f"{arg} has width {lens.d_model}, its model {owner.d_model}",
                         fix=f"fit {arg} on the model it reads (TunedLens.fit(model, store))")
    fp = lens.meta.get("model_fingerprint")
    if fp and fp != owner.fingerprint():
        which = "the base" if arg == "base_tuned_lens" else "the model under audit"
        raise InputError(f"{arg} was fitted on another model ({lens.meta.get('model', '?')}, fingerprint {fp}), "
                         f"not on {which} ({owner.fingerprint()})",
                         fix="tuned_lens= is fitted on the model under audit, base_tuned_lens= on the base")
    from .readout.lens import lens_points

    last = f"lm.{owner.n_layers - 1}.resid"
    missing = [p for p in lens_points(points) if p != last and p not in lens.points]
    if missing:
        raise InputError(f"{arg} has no translator for {missing[0]!r} (it has {', '.join(lens.points) or 'none'})",
                         fix="fit it on residuals of every point read (points='lm.*.resid')")


def _samples(members: Any, nonmembers: Any) -> "pd.DataFrame":
    """Both sets as one frame: image, prompt, answer, group, label ("member" / "non-member"); checked."""
    import pandas as pd

    from .data.images import check_images

    parts = []
    for name, given in (("members", members), ("nonmembers", nonmembers)):
        if isinstance(given, pd.DataFrame):
            df = given.copy()
        elif isinstance(given, (list, tuple)) and all(isinstance(r, dict) for r in given):
            df = pd.DataFrame(list(given))
        else:
            raise InputError(f"{name} must be a pandas DataFrame or a list of dicts, got {type(given).__name__}",
                             fix='pass e.g. [{"image": img, "prompt": "What is the name?", "answer": "alice"}, ...]')
        missing = [c for c in ("image", "prompt", "answer") if c not in df.columns]
        if missing or df.empty:
            raise InputError(f"{name} {'is empty' if df.empty else 'has no ' + ', '.join(missing) + ' column'}",
                             fix="give every sample an image, a prompt and the answer it was (or would be) trained on")
        bad = [i for i, (p, a) in enumerate(zip(df.prompt, df.answer))
               if not (isinstance(p, str) and p.strip() and isinstance(a, str) and a.strip())]
        if bad:
            raise InputError(f"{name} row {bad[0]}: prompt and answer must be non-empty strings",
                             fix="fill in every prompt and answer")
        df["group"] = df["group"].astype(str) if "group" in df.columns else [f"{name}:{i}" for i in range(len(df))]
        df["label"] = "member" if name == "members" else "non-member"
        parts.append(df[["image", "prompt", "answer", "group", "label"]])
    out = pd.concat(parts, ignore_index=True)
    both = set(out.group[out.label == "member"]) & set(out.group[out.label != "member"])
    if both:
        raise InputError(f"group {sorted(both)[0]!r} has members and non-members",
                         fix="a group is one source (one name, one person): all its samples are members or none")
    out["image"] = list(check_images(list(out.image)))
    return out


def _answer_batches(model: Any, data: "pd.DataFrame", batch_size: int, chat: bool | None):
    """Per batch of ``data``: ``(rows, images, inputs, lengths, r_idx, pos)``, the samples teacher-forced with
    their answers; ``(r_idx, pos)`` index every answer token (``pos - 1`` is the position predicting it)."""
    import torch

    from .data.images import decode

    for b0 in range(0, len(data), batch_size):
        rows = data.iloc[b0:b0 + batch_size]
        images = [decode(im, b0 + i) for i, im in enumerate(rows.image)]
        answers = rows.answer.tolist()
        inputs = model.prepare(images, rows.prompt.tolist(), chat=chat, padding_side="right", answers=answers)
        lengths = model.answer_lengths(inputs, answers).tolist()
        ends = (inputs["attention_mask"].long() * torch.arange(1, inputs["input_ids"].shape[1] + 1)).argmax(1) + 1
        r_idx = torch.cat([torch.full((n,), r) for r, n in enumerate(lengths)])
        pos = torch.cat([torch.arange(int(e) - n, int(e)) for e, n in zip(ends, lengths)])
        yield rows, images, inputs, lengths, r_idx, pos


def _model_scores(model: Any, data: "pd.DataFrame", points: list[str], lenses: "dict[str, Lens]", k: float,
                  batch_size: int, chat: bool | None, progress: bool) -> dict:
    """``{(source, point): {score: [n]}}`` for every lens x point, and ``("output", "logits")``; any
    :class:`~probekit.readout.lens.Lens` reads a point (through its ``decode``)."""
    import numpy as np
    import torch

    from ._progress import progress_bar
    from .hooks.recorder import Recorder
    from .readout.token_scores import token_scores

    parts: dict[tuple[str, str], list[dict]] = {}
    bar = progress_bar(total=len(data), desc=f"membership {model.name.split('/')[-1]}", unit="sample",
                       disable=not progress, leave=False)
    try:
        for rows, _, inputs, lengths, r_idx, pos in _answer_batches(model, data, batch_size, chat):
            targets = inputs["input_ids"][r_idx, pos].to(model.device)
            with Recorder(model, points) as rec, torch.no_grad():
                logits = model.hf(**inputs, use_cache=False).logits
            out = logits[r_idx, pos - 1].float()
            parts.setdefault(("output", "logits"), []).append(
                token_scores(torch.log_softmax(out, -1), targets, lengths, k, raw_logits=out))
            for p in points:
                h = model.lm_activation(p, rec.cache[p], len(rows))[r_idx, pos - 1]
                for src, lens in lenses.items():
                    raw = lens.decode(h, p)  # under no_grad
                    parts.setdefault((src, p), []).append(
                        token_scores(torch.log_softmax(raw, -1), targets.to(raw.device), lengths, k, hidden=h, raw_logits=raw))
            bar.update(len(rows))
    finally:
        bar.close()
    return {key: {s: np.concatenate([b[s] for b in batches]) for s in batches[0]} for key, batches in parts.items()}


def patched_losses(model: Any, base: Any, data: "pd.DataFrame", points: list[str], batch_size: int,
                   chat: bool | None, progress: bool = False) -> dict:
    """Per-sample loss scores (mean true-token log-probability over the answer) of the tuned model and the base,
    each as it is and with the other model's residual patched in at each point: ``{(receiver, point | None): [n]}``
    with receiver ``"tuned"`` or ``"base"``. Two forwards per batch plus two per point."""
    import numpy as np
    import torch

    from ._progress import progress_bar
    from .hooks.recorder import Recorder
    from .readout.token_scores import token_scores
    from .steering.interventions import Intervention

    runs: dict[tuple[str, str | None], list[np.ndarray]] = {}
    bar = progress_bar(total=len(data), desc="membership patching", unit="sample", disable=not progress, leave=False)
    try:
        for rows, images, inputs, lengths, r_idx, pos in _answer_batches(model, data, batch_size, chat):
            base_inputs = base.prepare(images, rows.prompt.tolist(), chat=chat, padding_side="right",
                                       answers=rows.answer.tolist())
            if not torch.equal(inputs["input_ids"].cpu(), base_inputs["input_ids"].cpu()):
                raise InputError("the base model's processor tokenises the samples differently",
                                 fix="pass the model this one was fine-tuned from, with its processor")
            targets = inputs["input_ids"][r_idx, pos]

            def loss(m: Any, x: dict) -> np.ndarray:
                out = m.hf(**x, use_cache=False).logits[r_idx, pos - 1].float()
                return token_scores(torch.log_softmax(out, -1), targets.to(out.device), lengths)["loss"]

            with torch.no_grad():
                with Recorder(model, points) as rec_t:
                    runs.setdefault(("tuned", None), []).append(loss(model, inputs))
                with Recorder(base, points) as rec_b:
                    runs.setdefault(("base", None), []).append(loss(base, base_inputs))
                for p in points:
                    for name, recv, x, donor in (("tuned", model, inputs, rec_b.cache[p]),
                                                 ("base", base, base_inputs, rec_t.cache[p])):
                        with Intervention(recv, [p], lambda _, h, d=donor: d.to(h.device, h.dtype).view_as(h), None,
                                          False):
                            runs.setdefault((name, p), []).append(loss(recv, x))
            bar.update(len(rows))
    finally:
        bar.close()
    return {key: np.concatenate(v) for key, v in runs.items()}


# the two per-sample patching scores, named for the table; both are a difference of loss scores, so an
# untouched model scores 0 on every sample and the member / non-member AUC is 0.5 in expectation
PATCH_SOURCES = {"tuned": "patched base-into-tuned", "base": "patched tuned-into-base"}


def patched_scores(s: dict, points: list[str]) -> dict:
    """Layer-wise membership scores from :func:`patched_losses`, ``{(source, point): {"loss": [n]}}``.

    - ``patched base-into-tuned`` at layer L: the tuned model's loss score minus its score when the base's
      residual replaces its own at L. What the fine-tune wrote into the residual up to L is what this
      takes away: a member scores high when the tuned model's extra confidence in its answer is already
      carried by the residual at L.
    - ``patched tuned-into-base`` at L: the base's score with the tuned model's residual at L minus its own
      score: the tuned residual at L read by the base's own later blocks (the untouched rest of the network
      as the decoder, where a lens is one affine map), against the base's reading of its own residual.

    Both read one layer each and both name it; at the last layer both are close to "output minus base".
    Unlike a lens score they need no fitted decoder, and unlike the attribution's gap they score each
    sample, so they take the same permutation test and verdict as every other row.
    """
    out = {}
    for p in points:
        out[(PATCH_SOURCES["tuned"], p)] = {"loss": s[("tuned", None)] - s[("tuned", p)]}
        out[(PATCH_SOURCES["base"], p)] = {"loss": s[("base", p)] - s[("base", None)]}
    return out


def attribution_table(s: dict, data: "pd.DataFrame", points: list[str], n_boot: int, seed: int) -> "pd.DataFrame":
    """Each layer's causal share of the member / non-member gap in the loss score, by patching.

    ``s``: :func:`patched_losses`. ``gap = mean(score | member) - mean(score | non-member)`` with the loss
    score (mean true-token log-probability) at the output. ``share_tuned``: how much of ``gap_tuned - gap_base``
    disappears when the base's residual replaces the tuned model's at that layer; ``share_base``: how much of
    it appears when the tuned model's residual replaces the base's there (the reverse patch). CIs: bootstrap of
    whole groups within each set.
    """
    import numpy as np
    import pandas as pd

    from ._stats import percentile_interval, unit_resample

    member = (data.label == "member").to_numpy()
    units = [[np.flatnonzero((data.group == g).to_numpy() & (member == c)) for g in data.group[member == c].unique()]
             for c in (True, False)]
    rng = np.random.default_rng([seed, 17])
    draws = [np.arange(len(data))] + [unit_resample(units, rng) for _ in range(n_boot)]

    def gap(v: np.ndarray, idx: np.ndarray) -> float:
        return float(v[idx][member[idx]].mean() - v[idx][~member[idx]].mean())

    rows_out = []
    for p in points:
        shares = []
        for idx in draws:  # no gap between the models (the same weights): no share to give, NaN
            total = np.float64(gap(s[("tuned", None)], idx) - gap(s[("base", None)], idx)) or np.nan
            shares.append(((gap(s[("tuned", None)], idx) - gap(s[("tuned", p)], idx)) / total,
                           (gap(s[("base", p)], idx) - gap(s[("base", None)], idx)) / total))
        est, boot = np.asarray(shares[0]), np.asarray(shares[1:])
        lo, hi = percentile_interval(boot, axis=0, nan=True) if len(boot) else (np.full(2, np.nan),) * 2
        rows_out.append({"point": p, "share_tuned": est[0], "share_tuned_lo": lo[0], "share_tuned_hi": hi[0],
                         "share_base": est[1], "share_base_lo": lo[1], "share_base_hi": hi[1]})
    out = pd.DataFrame(rows_out)
    out.attrs["gap_tuned"], out.attrs["gap_base"] = gap(s[("tuned", None)], draws[0]), gap(s[("base", None)], draws[0])
    return out
