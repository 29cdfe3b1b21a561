"""`collect`: run a model over images and prompts and keep chosen points at chosen positions."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from typing import Any, Callable, Sequence

import torch

from ..data.images import check_images, decode, image_hashes, images_digest, pixel_hash
from .._progress import progress_bar
from ..errors import InputError, PositionError
from ..params import Flag, Int, checked
from ..models.adapter import Model
from ..models.context import check_prompt_lengths
from . import distributed
from .backends import check_backend, run_backend
from .checks import DEFAULT_PROMPT, check_answers, check_prompts
from .points import Point, topk_points
from .positions import Position, PositionContext, normalize_positions, position_name, select, select_vision
from .slots import check_sequence, slot_labels
from .store import ActivationStore
from .store_writer import StoreWriter

__all__ = ["collect", "as_model", "check_prompts", "check_answers", "DEFAULT_PROMPT"]


def as_model(model: Any, processor: Any = None) -> Model:
    """Accept a probekit Model, a checkpoint path / hub id, or an HF model plus its processor."""
    if isinstance(model, Model):
        return model
    from ..models.loading import load, wrap

    if isinstance(model, (str, os.PathLike)):
        return load(model)
    return wrap(model, processor)


def image_token(model: Model) -> str | None:
    """The text of the model's image placeholder token (``"<image>"``), if it has one."""
    tok = getattr(model.processor, "image_token", None)
    if isinstance(tok, str) and tok:
        return tok
    tokenizer = getattr(model.processor, "tokenizer", None)
    if model.image_token_id is not None and tokenizer is not None:
        tok = tokenizer.convert_ids_to_tokens(model.image_token_id)
        return tok if isinstance(tok, str) and tok else None
    return None


def reducer(model: Model, positions: list[Position], many: bool, ctxs: dict[str, PositionContext], inputs: dict,
             batch: int) -> Callable[[str, torch.Tensor], torch.Tensor]:
    """``reduce(point, activation)``: the activation brought to what is stored of it, one batch at a time
    (also run by :func:`~probekit.hooks.plan.store_layout` on stand-ins, so a plan has the store's shapes)."""
    vision_pos = "image" if "image" in positions else "image_mean"

    def reduce(point: str, h: torch.Tensor) -> torch.Tensor:
        side = model.target(point).side
        if side == "vision":
            h, counts = model.vision_activation(inputs, point, h, batch)
            return select_vision(h, vision_pos, counts, batch)
        ctx = ctxs[side]  # the token sequence the point lies on (an encoder-decoder has two)
        h = model.lm_activation(point, h, ctx.attention_mask.shape[0])
        if not many:
            return select(h, positions[0], ctx)
        parts = [select(h, p, ctx) for p in positions]
        return torch.cat([t if t.dim() == 3 else t.unsqueeze(1) for t in parts], dim=1)

    return reduce


def _labels(model: Model, point: str, positions: list[Position], t: torch.Tensor,
            slots: dict[str, list[str]]) -> list[str]:
    """Names along axis 1 of a stored point (one name for a [n, d] point)."""
    side = model.target(point).side
    if side == "vision":
        name = "image" if "image" in positions else "image_mean"
        return [name] if t.dim() == 2 else [f"{name}[{j}]" for j in range(t.shape[1])]
    return slots[side]


@checked(batch_size=Int(low=1, example=8), shard_size=Int(low=1, example=1024), chat=Flag(none=True),
         progress=Flag(), logits_topk=Int(low=1, example=10, none=True))
def collect(
    model: Any,
    images: Any,
    prompts: str | Sequence[str] | None = None,
    *,
    points: str | Sequence[str] = "lm.*.resid",
    positions: Position | Sequence[Position] = "last",
    store: str | os.PathLike | None = None,
    batch_size: int = 8,
    backend: str = "torch",
    padding_side: str | None = None,
    chat: bool | None = None,
    shard_size: int = 1024,
    progress: bool = True,
    processor: Any = None,
    store_dtype: torch.dtype | None = None,
    logits_topk: int | None = None,
    answers: Sequence[str] | None = None,
) -> ActivationStore:
    """Record hook points at token positions for every image (+ prompt).

    Args:
        model: a :class:`probekit.Model`, a checkpoint path / hub id, or an HF model with ``processor=``.
        images: PIL images, file paths, HxWxC arrays or CxHxW tensors.
        prompts: one string for all images, one per image, or None (``"Describe the image."``).
        points: point names or globs (``"lm.*.resid"``); see ``model.points()``.
        positions: a selector (``"last"``, ``"image_mean"``, ``"image"``, ``"text"``, int, slice,
            callable) or a tuple of them; a tuple stores ``[n, p, d]`` per point.
        store: None keeps everything in memory; a directory streams safetensors shards there and
            resumes an interrupted collection into the same directory (finished shards are
            checked, damaged ones recomputed). Under torchrun (``WORLD_SIZE`` > 1) the ranks
            split the shards between them and every rank returns the merged store (see
            :mod:`probekit.hooks.distributed`); without a store each rank collects everything.
        batch_size: images per forward pass.
        backend: ``"torch"`` (plain forward hooks), ``"nnsight"`` or ``"transformer_lens"``; all
            give the same numbers.
        padding_side: override the tokenizer's padding side (``"left"``/``"right"``).
        chat: use the processor's chat template (None: when it has one).
        shard_size: samples per shard on disk, rounded up to whole batches (memory use grows with
            it, not with n).
        store_dtype: cast stored activations (e.g. ``torch.float32``); default keeps the model's dtype.
        logits_topk: keep of the ``logits`` point only what output-only probes read: per position the
            top-k next-token log-probabilities (``"logits.topk"``, float32, sorted) and their token ids
            (``"logits.topk_ids"``, int64), ``[n, p, k]`` each, instead of ``[n, p, vocab]`` logits (a
            Qwen-sized vocabulary at n = 10,000 is 6 GB). They are computed as the readout computes
            them from stored logits (cast to the stored dtype, float32, log-softmax over the whole
            vocabulary, ``topk``), so they are the same numbers.
        answers: one string per image, teacher-forced after the prompt as the model's reply (a
            candidate username, a fact): positions ``"answer_mean"`` (the tokens that predict the
            answer) and ``"prompt_last"`` (the prompt's last token) then read the model while it
            says it. ``"last"`` is the answer's last token. Decoder-only families only.

    Returns:
        :class:`ActivationStore` with ``store[point]`` of shape ``[n, d]`` or ``[n, p, d]``.

    Example:
        >>> import probekit, tempfile
        >>> m = probekit.load(probekit.tiny.build("llava", tempfile.mkdtemp() + "/m"))
        >>> s = probekit.collect(m, probekit.tiny.fixture_images(4, 32), "What shape is it?",
        ...                      positions=("last", "image_mean"), progress=False)
        >>> s["lm.1.resid"].shape
        torch.Size([4, 2, 64])
    """
    # ---- validate everything before any forward pass or file write
    model = as_model(model, processor)
    items = check_images(images)
    n = len(items)
    prompt_list = check_prompts(prompts, n, image_token(model))
    names = model.resolve(points)
    pos_list, many = normalize_positions(positions)
    answer_list = check_answers(model, answers, n, pos_list)
    check_prompt_lengths(model, prompt_list, answer_list)  # a prompt past the model's context, before any forward
    check_backend(backend, model)
    if padding_side not in (None, "left", "right"):
        raise InputError(f"padding_side must be 'left', 'right' or None, got {padding_side!r}",
                         fix="pass padding_side='left', 'right', or None for the tokenizer's own")
    if store_dtype is not None and not (isinstance(store_dtype, torch.dtype) and store_dtype.is_floating_point):
        raise InputError(f"store_dtype must be a floating torch.dtype or None, got {store_dtype!r}",
                         fix="e.g. store_dtype=torch.float32")
    top = logits_topk if "logits" in names else None
    # the stored points, in the order of names (the forward's), the top-k pair in place of logits
    stored = [q for p in names for q in (TOP_POINTS if top is not None and p == "logits" else (p,))]

    # whole batches per shard: a disk store then holds exactly what an in-memory one would
    shard_size = -(-shard_size // batch_size) * batch_size
    meta = {
        "model": model.name,
        "family": model.family,
        "model_fingerprint": model.fingerprint(),
        "points": names,
        "positions": [position_name(p) for p in pos_list],
        "n": n,
        "prompts_digest": hashlib.sha256(json.dumps(prompt_list).encode()).hexdigest()[:16],
        "images_digest": images_digest(items),
        "backend": backend,
        "padding_side": padding_side,
        "dtype": str(store_dtype or model.dtype).replace("torch.", ""),
    }
    if top is not None:  # what is stored changes; without it the fingerprint of older stores stays
        meta["logits_topk"] = top
    if answer_list is not None:  # likewise
        meta["answers_digest"] = hashlib.sha256(json.dumps(answer_list).encode()).hexdigest()[:16]
    fingerprint = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    meta["prompts"] = list(dict.fromkeys(prompt_list))[:100]  # the distinct prompts, for the record
    rank, world = distributed.world() if store is not None else (0, 1)
    # per-image content hashes (outside the fingerprint, so older stores still resume): a Direction
    # fitted on this store keeps them and evaluate() refuses to grade it on the same images. One
    # process hashes each image as it decodes it for the forward; ranks of a distributed run decode
    # only their own shards, so there every rank hashes all images up front for index.json.
    hashes: list[str | None] = image_hashes(items) if world > 1 else [None] * n
    if world > 1:
        meta["image_hashes"] = hashes

    main = None  # rank 0's writer of index.json in a distributed run
    if world > 1:
        writer, main = distributed.open_writer(store, meta, n, shard_size, fingerprint)
    else:
        writer = StoreWriter(store, meta, n, shard_size, fingerprint) if store is not None else None
    step = shard_size if writer is not None else n
    done = writer.done_ranges() if writer is not None else set()
    todo = distributed.owned_shards(rank, world, n, step)
    point_info: dict[str, dict] = dict(writer.index["points"]) if writer is not None else {}
    # one buffer per point, written batch by batch: all n rows in memory, or one shard reused for
    # every shard on disk (save_file copies it out before the next shard overwrites it)
    buffers: dict[str, torch.Tensor] = {}
    scratch: dict[str, torch.Tensor] = {}  # the position reductions' working buffers, reused batch to batch

    bar = progress_bar(total=sum(b - a for a, b in todo), desc=f"collect {len(names)} points" + (f" (rank {rank})" if world > 1 else ""),
                       unit="img", disable=not progress, leave=False)
    sides = sorted({model.target(p).side for p in names} - {"vision"})  # token sequences positions apply to
    # on an accelerator, decoding and the processor of the next batch run in a worker thread while
    # this one goes through the model; not on CPU, where it cost ~10% (bench_scan: a small forward is
    # Python holding the GIL, a large one takes every core with its own threads). Never across
    # shards, so a shard is on disk before anything of the next one is touched
    ahead = torch.device(model.device).type != "cpu"

    def prepare(rows: tuple[int, int]) -> tuple[dict, list[str], torch.Tensor | None]:
        pil = [decode(items[i], i) for i in range(*rows)]  # the one decode of each image
        forced = answer_list[rows[0]:rows[1]] if answer_list is not None else None
        inputs = model.prepare(pil, prompt_list[rows[0]:rows[1]], chat=chat, padding_side=padding_side, answers=forced)
        lengths = model.answer_lengths(inputs, forced) if forced is not None else None
        return inputs, [pixel_hash(im) for im in pil] if world == 1 else [], lengths

    try:
        with model.input_cache():  # each prompt rendered and tokenised once per collect, not per image
            for start, stop in todo:
                if (start, stop) in done:
                    bar.update(stop - start)
                    continue
                rows = [(b0, min(b0 + batch_size, stop)) for b0 in range(start, stop, batch_size)]
                with closing(_prefetch(rows, prepare, ahead)) as ready:
                    for (b0, b1), (inputs, batch_hashes, lengths) in zip(rows, ready):
                        if world == 1:
                            hashes[b0:b1] = batch_hashes
                        out, ctxs = _forward(model, inputs, b1 - b0, names, pos_list, many, backend, sides, scratch,
                                             lengths)
                        if top is not None:
                            out, vocab = _top_logits(out, top, store_dtype)
                        if not point_info:
                            slots = {side: slot_labels(pos_list, ctxs[side]) for side in sides}
                            point_info = {p: {**(Point.parse(p) if p in TOP_POINTS else Point.of(model, p)).info(),
                                              "shape": list(out[p].shape[1:]),
                                              "dtype": str(_dtype(p, out[p], store_dtype)).replace("torch.", ""),
                                              "positions": _labels(model, p.split(".topk")[0], pos_list, out[p], slots)}
                                          for p in stored}
                            for p in TOP_POINTS if top is not None else ():
                                point_info[p]["vocab"] = vocab
                        if not buffers:
                            buffers = {p: torch.empty((step, *out[p].shape[1:]), dtype=_dtype(p, out[p], store_dtype))
                                       for p in stored}
                        for p in stored:
                            _put(buffers[p], b0 - start, out[p], p, b0)
                        bar.update(b1 - b0)
                if writer is not None:
                    writer.write_shard(start, stop, {p: b[:stop - start] for p, b in buffers.items()}, point_info)
    except BaseException:
        if writer is not None:
            writer.discard_if_empty()  # a failed first shard leaves no store behind
            writer.close()  # the lock goes with the process anyway; release it for the next call in this one
            if main is not None:
                main.close()
        raise
    finally:
        bar.close()
    if world > 1:
        return distributed.finish(writer, main)
    known = writer.index["meta"].get("image_hashes") if writer is not None else None
    for i in (i for i, h in enumerate(hashes) if h is None):  # rows of shards an earlier run finished
        hashes[i] = known[i] if isinstance(known, list) and len(known) == n else pixel_hash(decode(items[i], i))
    meta["image_hashes"] = hashes
    if writer is not None:
        try:
            return ActivationStore(directory=writer.finish(meta={"image_hashes": hashes}))
        finally:
            writer.close()
            del buffers, scratch
            release_freed_memory()
    return ActivationStore(buffers, meta=meta, point_info=point_info)


def release_freed_memory() -> None:
    """Hand the C allocator's freed pages back to the system (glibc ``malloc_trim``; elsewhere nothing).

    A disk collect frees everything of each batch, but glibc keeps the freed heap pages, pinned by the
    small objects that outlive their batch (an image hash per image): on the mid-size model of
    ``benchmarks/bench_scan_memory.py`` 385 MB of RSS at n = 8,000 was such freed memory (38 MB live),
    which the probing step that follows in ``scan`` could not reuse for its large tensors.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        pass


TOP_POINTS = topk_points("logits")
"""What ``collect(..., logits_topk=k)`` stores in place of ``logits``."""


def _top_logits(out: dict[str, torch.Tensor], k: int, store_dtype: torch.dtype | None
                ) -> tuple[dict[str, torch.Tensor], int]:
    """Replace the logits by their top-k log-probabilities and token ids, as the readout would compute
    them from the stored logits (same casts, same log-softmax over the whole vocabulary)."""
    out = dict(out)
    x = out.pop("logits")
    x = x.to(store_dtype) if store_dtype is not None else x
    vals, ids = torch.log_softmax(x.float(), -1).topk(min(k, x.shape[-1]), dim=-1)
    out[TOP_POINTS[0]], out[TOP_POINTS[1]] = vals, ids
    return out, int(x.shape[-1])


def _dtype(point: str, t: torch.Tensor, store_dtype: torch.dtype | None) -> torch.dtype:
    """The stored dtype: ``store_dtype`` casts activations, never top-k log-probabilities or token ids."""
    return t.dtype if point in TOP_POINTS else (store_dtype or t.dtype)


def _put(buffer: torch.Tensor, row: int, t: torch.Tensor, point: str, first: int) -> None:
    """Copy one batch into its rows of the buffer: the move to CPU and the cast to the stored dtype in one copy."""
    if t.shape[1:] != buffer.shape[1:]:
        raise PositionError(f"{point}: the batch from image {first} gives shape {list(t.shape[1:])}, the first batch "
                            f"{list(buffer.shape[1:])}; a point must have the same shape for every image",
                            fix='use positions that select the same number of tokens for every image (e.g. "last", '
                                '"image_mean"), or batch_size=1 and one image size')
    buffer[row:row + t.shape[0]].copy_(t)


def _prefetch(jobs: list, work: Callable[[Any], Any], ahead: bool = True) -> Iterator[Any]:
    """``work(job)`` for every job, in order; with ``ahead`` the next job's runs in one worker thread
    while the caller uses this one, and an exception reaches the caller at the job that raised it."""
    if not ahead:
        yield from map(work, jobs)
        return
    if not jobs:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="probekit-prepare") as pool:
        ahead = pool.submit(work, jobs[0])
        for k in range(len(jobs)):
            current = ahead.result()
            ahead = pool.submit(work, jobs[k + 1]) if k + 1 < len(jobs) else None
            yield current


def _forward(model: Model, inputs: dict, batch: int, names: list[str], pos_list: list[Position], many: bool,
             backend: str, sides: Sequence[str] = ("lm",), scratch: dict | None = None,
             answer_len: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], dict[str, PositionContext]]:
    ctxs = {side: PositionContext.from_inputs(ids, image) for side, (ids, image) in model.sequences(inputs).items()}
    for ctx in ctxs.values():
        ctx.scratch = scratch  # buffers kept across the batches of one collect
    if answer_len is not None and "lm" in ctxs:
        ctxs["lm"].answer_len = answer_len
    for side in sides:  # a selector that cannot apply to this batch (index past the end, ...) fails before the forward
        check_sequence(model, side, ctxs, [p for p in names if model.target(p).side == side],
                        [p for p in pos_list if not callable(p)])
    reduce = reducer(model, pos_list, many, ctxs, inputs, batch)
    with torch.inference_mode():
        out = run_backend(backend, model, inputs, names, reduce)
    return out, ctxs
