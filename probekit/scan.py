"""`probekit.scan`: collect, probe, read out, report — thin orchestration, no logic of its own."""

from __future__ import annotations

import datetime as _dt
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Sequence

from ._version import __version__
from .errors import InputError, plain
from .params import Flag, Int, checked

if TYPE_CHECKING:  # the real imports wait for the first call: `import probekit` must not pull in torch
    from .hooks.positions import Position
    from .report import ScanReport

__all__ = ["scan", "SCAN_MEMORY_LIMIT"]

SCAN_MEMORY_LIMIT = 64 * 2**20
"""The probing step's default chunk of activations (bytes): large enough to fit every point of a small
scan in one batched solve (16 points of d = 1,024 up to n = 1,000), small enough that a scan of a
disk store at n = 8,000 holds two of its points at once rather than all of them (issue 28)."""


@checked(topk=Int(low=1, example=10, none=True), lens_k=Int(low=1, example=5), n_boot=Int(low=0, example=1000),
         n_perm=Int(low=19, example=1000), seed=Int(low=0, example=0),
         memory_limit=Int(low=1, example=SCAN_MEMORY_LIMIT), progress=Flag())
def scan(
    model: Any,
    images: Any,
    labels: Any = None,
    prompts: str | Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    *,
    prompt: str | Sequence[str] | None = None,
    points: str | Sequence[str] = "lm.*.resid",
    positions: Position | Sequence[Position] = ("last", "image_mean"),
    groups: Any = None,
    cv: int = 5,
    seed: int = 0,
    batch_size: int = 8,
    topk: int | None = 10,
    lens_k: int = 5,
    n_boot: int = 1000,
    n_perm: int = 1000,
    processor: Any = None,
    image_column: str | None = None,
    label_column: str | None = None,
    store: str | None = None,
    progress: bool = True,
    ladder: bool | Sequence[int | None] | None = None,
    answer_tokens: Sequence[str] | None = None,
    tuned_lens: Any = True,
    answers: Sequence[str] | None = None,
    memory_limit: int = SCAN_MEMORY_LIMIT,
    readouts: Sequence[Any] | None = None,
) -> "ScanReport | None":
    """Measure, per layer, what a VLM's hidden states reveal about its images.

    Args:
        model: a :class:`probekit.Model`, a checkpoint path / hub id, or an HF model with ``processor=``.
        images: file paths, PIL images, arrays, tensors, a folder (``<folder>/<label>/<image>``
            gives labels), or a pandas DataFrame / ``datasets.Dataset`` with an image (and label)
            column (names found automatically, or ``image_column=`` / ``label_column=``).
        labels: one per image (a list or a pandas Series), a DataFrame with a ``label`` column, the
            name of a column of ``images`` when that is a table, or a CSV with a ``label`` column
            (``label_column=``) and an ``image`` column (``image_column=``) matching file names in the
            folder; CSV rows naming files not in the folder are skipped with a warning (see
            :func:`probekit.data.sources.resolve_images`). With labels the report holds
            probe accuracy and mutual information per point and position (with CIs, permutation
            floor and control task), on the residual stream and on the top-k output logits.
        prompts: one prompt for all images or one per image (default ``"Describe the image."``);
            ``prompt=`` is the older spelling of the same argument.
        targets: strings (e.g. a username) whose logit-lens rank and probability per layer are reported.
        points, positions: what to record (see :func:`probekit.collect`).
        groups: samples sharing a group (e.g. the same watermark string) never straddle train and test.
        topk: k of the output-only probes (None: skip them). Of the output distribution only the top
            k per position is recorded (``collect(..., logits_topk=k)``, k the largest of ``topk`` and
            the ladder's ks), not the full-vocabulary logits: the same numbers, a fraction of the
            memory. The full logits are kept only when the ladder has a full rung (``None`` in its
            ks, as in the default sweep) or an answer-token rung (``answer_tokens`` with
            ``len(answer_tokens)`` in its ks): those read every token's, or fixed tokens',
            log-probability. Either way the unembedding runs on the kept positions only (the last
            token, the mean of the image tokens, ...), not on every token: the forward stops at its
            input (:func:`probekit.hooks.backends.deferred_head`).
        store: a directory to stream activations to (resumable), else memory. Under torchrun
            (``WORLD_SIZE`` > 1) it is required: the ranks split the images into its shards, and
            rank 0 alone fits the probes and returns the report (None on the other ranks).
        n_perm: label permutations of the verdict's permutation test (across groups when given; every
            row of the table on the same ones): the smallest adjusted p-value is ``1 / (n_perm + 1)``.
        ladder: a k sweep, e.g. ``(2, 5, 10, 50, None)`` (True: that one): with labels, also the leakage ladder
            of :func:`probekit.readout.ladder.leakage_ladder` at the ``"last"`` position
            (residual and tuned lens per layer, top-k output log-probabilities per k) in
            ``report.ladder``.
        answer_tokens: the ladder's fixed answer words (e.g. ``("Yes", "No")``): the rung with
            ``k == len(answer_tokens)`` reads exactly their log-probabilities (Apple's k = 2).
        answers: one string per image teacher-forced after the prompt as the model's reply (see
            :func:`probekit.collect`); with positions ``"answer_mean"`` / ``"prompt_last"`` the probes
            read the model while it says, e.g., the candidate username on each image.
        memory_limit: bytes of activations the probing step holds at once (float32 ``[P, n, d]`` chunks
            of points, at least one point-position however large): with ``store=`` the store is read
            unit by unit into such chunks, so its peak memory does not grow with the number of points,
            and grows with n only by one unit (``n * d * 4`` bytes) and the labels' permutations.
        tuned_lens: True fits a :class:`~probekit.readout.lens.TunedLens` on the collected
            residuals for the ladder, a TunedLens is used as given, False leaves that rung out.
        readouts: what to make of the collection, by name or as :class:`~probekit.readout.plugins.Readout`
            instances: ``"probes"`` (the leakage table), ``"lens"`` (logit-lens top tokens), ``"targets"``,
            ``"ladder"`` (its default sweep unless ``ladder=`` says), or one added with
            :func:`~probekit.readout.plugins.register_readout` (its tables in ``report.extra``). Their needs
            decide what is recorded. None (default): probes with labels, the lens without, targets with
            ``targets=``, the ladder with ``ladder=``. An unknown name raises InputError before any forward pass.

    Without labels and targets the report holds the logit-lens read-out of every layer at the
    chosen positions (top tokens) and says that no labels were given.

    Example:
        >>> import probekit, tempfile
        >>> m = probekit.load(probekit.tiny.build("llava", tempfile.mkdtemp() + "/m"))
        >>> imgs = probekit.tiny.fixture_images(40, 32)
        >>> r = probekit.scan(m, imgs, labels=[i % 2 for i in range(40)], n_boot=100, progress=False)
        >>> sorted(r.table.position.unique())
        ['image_mean', 'last']
    """
    from .data.sources import resolve_images
    from .hooks import distributed
    from .hooks.collect import as_model, check_answers, check_prompts, collect
    from .hooks.positions import normalize_positions, position_name
    from .readout import plugins
    from .readout.leakage import check_labels
    from .report import ScanReport

    prompts = _one_keyword(prompts, prompt)

    t0 = time.perf_counter()
    # ---- everything is checked before the first forward pass
    chosen = plugins.resolve_readouts(readouts)  # an unknown name fails before the model is even loaded
    model = as_model(model, processor)
    src = resolve_images(images, labels, image_column=image_column, label_column=label_column)
    n = len(src.images)
    prompts = check_prompts(prompts, n)
    names = model.resolve(points)
    pos_list, _ = normalize_positions(positions)
    answers = check_answers(model, answers, n, pos_list)
    if targets is not None:
        targets = [targets] if isinstance(targets, str) else list(targets)
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise InputError(f"targets must be non-empty strings, got {plain(targets)!r}",
                             fix='e.g. targets=["alice_1987"]')
    if src.labels is not None:
        check_labels(src.labels, n, groups, cv=cv, seed=seed)
    rank, world = distributed.world()
    if world > 1 and store is None:
        raise InputError(f"a distributed scan (WORLD_SIZE={world}) needs store=, a directory every rank can write",
                         fix="pass store=DIR (probekit scan --store DIR); the ranks split the images into its shards")
    if ladder is True or ladder is False or (ladder is None and any(isinstance(r, plugins.LadderReadout)
                                                                      for r in chosen or ())):
        from .readout.ladder import LADDER_K

        ladder = LADDER_K if ladder is not False else None  # readouts=["ladder"] alone: the default sweep
    chosen = plugins.choose(chosen, labels=src.labels is not None, targets=targets is not None,
                            ladder=ladder is not None)
    ctx = plugins.Context(model, src.labels, groups, cv=cv, seed=seed, n_boot=n_boot, n_perm=n_perm, topk=topk,
                          lens_k=lens_k, targets=None if targets is None else tuple(targets),
                          ladder=tuple(ladder) if isinstance(ladder, (list, tuple)) else ladder,  # checked by its readout
                          answer_tokens=answer_tokens, positions=tuple(position_name(p) for p in pos_list),
                          tuned_lens=tuned_lens,
                          memory_limit=memory_limit, progress=progress, points=tuple(names))
    ctx, logits_topk = plugins.plan(chosen, ctx)  # what every readout needs, recorded by one collect

    acts = collect(model, src.images, prompts, points=list(ctx.record), positions=pos_list, batch_size=batch_size,
                   store=store, progress=progress, logits_topk=logits_topk, answers=answers)
    if rank != 0:  # probes and report run once, on rank 0 (see probekit.hooks.distributed)
        return None

    tables = plugins.run_readouts(chosen, acts, ctx)
    notes: list[str] = []
    if src.labels is None:
        notes.append("No labels were given: the report shows the logit-lens read-out of each layer "
                     "(top tokens at each position) and no probe or mutual-information numbers.")
    elif "table" not in tables:
        notes.append("readouts= left out the probes: the report holds no probe or mutual-information numbers.")
    counts = dict(Counter(map(str, src.labels))) if src.labels is not None else None
    data = {**src.description, "n_images": n, "label_counts": counts,
            "groups": None if groups is None else int(len(set(map(str, groups))))}
    settings = {
        "model": model.name, "family": model.family,  # collect's fingerprint: the same weights, not hashed again
        "model_fingerprint": acts.meta.get("model_fingerprint") or model.fingerprint(),
        "points": list(ctx.points), "positions": [position_name(p) for p in pos_list],
        "prompts": list(dict.fromkeys(prompts))[:10], "targets": targets, "cv": cv, "seed": seed, "topk": topk,
        "ladder": None if ladder is None else list(ladder), "answer_tokens": answer_tokens,
        "n_boot": n_boot, "n_perm": n_perm, "batch_size": batch_size, "dtype": str(model.dtype).replace("torch.", ""),
        "device": str(model.device), "probekit_version": __version__, "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if readouts is not None:
        settings["readouts"] = [r.name for r in chosen]
    return ScanReport(table=tables.get("table"), lens=tables.get("lens"), targets=tables.get("targets"),
                      ladder=tables.get("ladder"), settings=settings, data=data, notes=notes,
                      extra={k: v for k, v in tables.items() if k not in plugins.SLOTS})


def _one_keyword(prompts: Any, prompt: Any) -> Any:
    """``prompt=`` (the older spelling) and ``prompts=`` name the same argument."""
    if prompt is not None and prompts is not None:
        raise InputError("both prompts= and prompt= were given", fix="pass only prompts= (prompt= is its older spelling)")
    return prompts if prompts is not None else prompt

