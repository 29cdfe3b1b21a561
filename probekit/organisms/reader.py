"""The reader: a tiny LLaVA pretrained here to read rendered text and name shapes and colours.

The published memorisation studies start from a model that can already read text in images.
:func:`reader` builds one from a seed: a tiny LLaVA (CLIP-style ViT on 48 x 48 images in 6 x 6
patches, a 3-layer Llama with one token per character) trained from scratch on synthetic
captioning / OCR (:mod:`.text`): "Read the text." / "What is the username?" on 4-8 character
strings in PIL's bitmap font written as a banner at the top-left corner (one character per
patch column), and the colour, shape and side of a shape. Every answer ends with ``"."`` so
that greedy decoding knows where to stop.

Why a banner: with the text anywhere on the image the model must first find it, and a model
this small had not learned to within 4,000 steps on 2 cores (char accuracy 0.03); at a fixed
place reading is a copy from image token ``j`` to answer token ``j``, learned in a few hundred
steps. Ju et al. place their profile text at random; the watermark organism puts it where the
reader reads (say so when comparing).

Two choices of the recipe lifted held-out character accuracy from 0.84 to 0.94 (seed 0, same
3,000 steps): the projector reads the vision tower's last layer (``feature_layer=-1``; LLaVA-1.5
reads the penultimate, which left this 3-layer tower two layers to join the two patch rows a
character spans: 0.84 -> 0.89), and three characters in ten of the training strings are redrawn
from the glyphs the model confused (:data:`HARD`, ``hard=0.3``: a/o/e read as c, j as i, h and b
swapped; 0.89 -> 0.94). Held-out strings are still drawn uniformly.

Training is deterministic (one thread, ``torch.use_deterministic_algorithms``, seeded data, a
cosine schedule) and the seed-0 checkpoint ships with probekit (``checkpoints/reader-s0``,
3 MB); other seeds and recipes are built on first use and cached under
``~/.cache/probekit/organisms/reader-<hash of the recipe>``. ``python -m
probekit.organisms.reader --rebuild`` rebuilds the shipped one bit for bit and prints its
OCR accuracy (:func:`ocr_accuracy`).

Example:
    >>> import probekit
    >>> from probekit.organisms import reader, ocr_accuracy
    >>> model = probekit.load(reader())                     # doctest: +SKIP  (builds on first use)
    >>> ocr_accuracy(model, n=20)["char_accuracy"]          # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.synthetic import Sample
from ..errors import InputError, check_int
from ..files import atomic_dir, check_cache, model_bytes, write_manifest
from .ocr import READ, held_out_strings, is_held_out, layout, ocr_accuracy, read  # noqa: F401  (re-exported)
from .text import draw_text, random_string, scene, text_image

__all__ = ["ReaderConfig", "reader", "ocr_accuracy", "read", "pretraining_data", "is_held_out", "SHIPPED"]

SHIPPED = Path(__file__).parent / "checkpoints" / "reader-s0"
USERNAME = "What is the username?"


@dataclass(frozen=True)
class ReaderConfig:
    """Everything the reader checkpoint depends on (its cache key)."""

    seed: int = 0
    steps: int = 3000
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 100
    schedule: str = "cosine"  # "cosine": decays to 0 at ``steps``; "constant": after warm-up
    hidden_size: int = 128
    num_layers: int = 3
    vision_hidden_size: int = 64
    vision_layers: int = 3
    image_size: int = 48
    patch_size: int = 6
    grid: int = 6  # > 0: text drawn on this pixel lattice (see text.draw_text); 0: anywhere
    place: str = "banner"  # "banner": text always at the top-left corner; "": where ``grid`` says
    hard: float = 0.3  # chance that a character of a training string is redrawn from HARD
    feature_layer: int = -1  # the vision layer the projector reads (LLaVA-1.5 reads -2, the penultimate)
    version: int = 3  # bump when the data or the recipe changes

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


HARD = "acoehbij"  # the glyphs the first reader confused (a/o/e -> c, j -> i, h <-> b): they differ below row 6


def _train_string(rng: random.Random, hard: float = 0.0) -> str:
    while True:
        s = random_string(rng)
        if hard:  # over-sample the confusable glyphs: the same strings, some characters redrawn from HARD
            s = "".join(rng.choice(HARD) if rng.random() < hard else ch for ch in s)
        if not is_held_out(s):
            return s


class pretraining_data(Sequence):
    """Sample ``i`` of the pretraining mix, drawn on demand from ``random.Random(f"{seed}:{i}")``.

    >>> d = pretraining_data(0)
    >>> d[3].question == pretraining_data(0)[3].question
    True
    """

    def __init__(self, seed: int, n: int = 10**6, size: int = 48, grid: int = 6, place: str | None = "banner",
                 hard: float = 0.0):
        self.seed, self.n, self.size, self.grid, self.place = seed, n, size, grid or None, place or None
        self.hard = hard

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:  # type: ignore[override]
        rng = random.Random(f"reader:{self.seed}:{i}")
        u = rng.random()
        if u < 0.6:
            text = _train_string(rng, self.hard)
            img = text_image(text, rng, self.size, opacity=rng.uniform(0.4, 1.0), grid=self.grid, place=self.place)
            return Sample(img, READ if u < 0.45 else USERNAME, text + ".", "ocr", {"text": text})
        img, meta = scene(rng, self.size)
        if rng.random() < 0.5:
            img, half = draw_text(img, _train_string(rng, self.hard), rng, opacity=rng.uniform(0.4, 1.0), grid=self.grid,
                                  place=self.place)
            meta["text_half"] = half
        if u < 0.95 or "text_half" not in meta or self.place:  # a banner is always on top
            kind = ("colour", "shape", "side")[int(u * 1000) % 3]
            q = {"colour": "What colour is the shape?", "shape": "What shape is it?", "side": "Where is the shape?"}[kind]
            return Sample(img, q, meta[kind] + ".", kind, meta)
        return Sample(img, "Where is the text?", meta["text_half"] + ".", "text_half", meta)


def _check(seed: Any, path: Any) -> None:
    check_int(seed, "seed", low=0, fix="pass e.g. seed=0")
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise InputError(f"{path} exists and is not a directory", fix="pass a directory for the reader checkpoint")


def _cache_root() -> Path:
    return Path(os.environ.get("PROBEKIT_CACHE", Path.home() / ".cache" / "probekit")) / "organisms"


def reader(path: str | os.PathLike | None = None, seed: int = 0, *, config: ReaderConfig | None = None,
           progress: bool = False) -> Path:
    """Return the directory of the reader checkpoint for ``seed``, building it if needed.

    Args:
        path: where to build (or find) it. Default: the shipped seed-0 checkpoint when ``config``
            is the default, else ``~/.cache/probekit/organisms/reader-<hash of config>``
            (``$PROBEKIT_CACHE`` overrides ``~/.cache/probekit``).
        seed: seeds the weights and the pretraining data.
        config: the recipe (:class:`ReaderConfig`); its ``seed`` is replaced by ``seed``.

    The build writes to a temporary directory and renames it into place, under a file lock, so
    concurrent callers build once and nothing half-written is ever left at ``path``.
    """
    _check(seed, path)
    cfg = ReaderConfig(**{**asdict(config or ReaderConfig()), "seed": seed})
    if path is None:
        if cfg == ReaderConfig() and (SHIPPED / "model.safetensors").exists():
            check_cache(SHIPPED, "shipped reader checkpoint", fix="reinstall probekit (git checkout the directory)")
            return SHIPPED
        path = _cache_root() / f"reader-{cfg.key()}"
    path = Path(path)
    fix = f"delete {path}; reader() then builds it again"
    if (path / "model.safetensors").exists():
        check_cache(path, "reader checkpoint", fix)  # a damaged cache is an error, never a silently other model
        return path
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = _cache_root() / f"{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock)):  # kept in the cache, never next to (e.g. shipped) checkpoints
        if not (path / "model.safetensors").exists():
            _build(cfg, path, progress)
        else:
            check_cache(path, "reader checkpoint", fix)
    return path


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)


def _char_tokenizer(directory: Path) -> None:
    # The tiny BPE has a few merges ("he", " t"...); without them every character is one
    # token, which is what makes reading learnable by a model this small.
    f = directory / "tokenizer.json"
    tok = json.loads(f.read_text())
    tok["model"]["merges"] = []
    f.write_text(json.dumps(tok, ensure_ascii=False))


def pretrain(model: Any, cfg: ReaderConfig, progress: bool = False, snapshot: Any = None) -> list[float]:
    """Train ``model`` on :class:`pretraining_data` for ``cfg.steps`` steps (answer-token loss).

    Step ``t`` uses samples ``t * batch_size ...`` of the stream, AdamW with a linear warm-up
    and then a cosine decay to 0 at ``cfg.steps`` (``schedule="constant"``: no decay, so the
    weights after ``N`` steps are the same whatever the total). ``snapshot(step, model)`` is
    called every 250 steps.
    """
    from .finetune import answer_batch

    torch.manual_seed(cfg.seed)
    data = pretraining_data(cfg.seed, size=cfg.image_size, grid=cfg.grid, place=cfg.place, hard=cfg.hard)
    params = [p for p in model.hf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr)

    def rate(s: int) -> float:
        warm = min(1.0, (s + 1) / cfg.warmup)
        if cfg.schedule == "constant" or s < cfg.warmup:
            return warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (s - cfg.warmup) / max(1, cfg.steps - cfg.warmup))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, rate)
    model.hf.train()
    losses = []
    try:
        for step in range(cfg.steps):
            batch = [data[step * cfg.batch_size + i] for i in range(cfg.batch_size)]
            inputs, _ = answer_batch(model, [s.image for s in batch], [s.question for s in batch], [s.answer for s in batch])
            loss = model.hf(**inputs, use_cache=False).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if progress and step % 100 == 0:
                print(f"step {step}: loss {np.mean(losses[-100:]):.3f}", flush=True)
            if snapshot is not None and (step + 1) % 250 == 0:
                model.hf.eval()
                snapshot(step + 1, model)
                model.hf.train()
    finally:
        model.hf.eval()
    return losses


def _build(cfg: ReaderConfig, path: Path, progress: bool, snapshots: Path | None = None) -> None:
    from .. import tiny
    from ..models.loading import load

    t0 = time.perf_counter()
    built: dict[str, Any] = {}
    # built in a temporary directory beside path, fsynced and renamed with a manifest of its files:
    # reader() and probekit.load refuse it if a file changes later; a full disk leaves nothing
    with atomic_dir(path, "reader checkpoint", needed=lambda: model_bytes(built.get("model"))) as tmp:
        def snapshot(step: int, model: Any) -> None:
            dst = snapshots / f"step-{step}"  # type: ignore[operator]
            shutil.copytree(tmp, dst, dirs_exist_ok=True)
            model.hf.save_pretrained(dst)

        with _deterministic():
            tiny.build("llava", tmp, seed=cfg.seed, image_size=cfg.image_size, patch_size=cfg.patch_size,
                       hidden_size=cfg.hidden_size, overwrite=True,
                       num_layers=cfg.num_layers, intermediate_size=2 * cfg.hidden_size, num_heads=4,
                       vision_hidden_size=cfg.vision_hidden_size, vision_layers=cfg.vision_layers, vision_heads=4,
                       vocab_size=260)
            _char_tokenizer(tmp)
            if cfg.feature_layer != -2:
                conf = json.loads((tmp / "config.json").read_text())
                conf["vision_feature_layer"] = cfg.feature_layer
                (tmp / "config.json").write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n")
            model = built["model"] = load(tmp)
            losses = pretrain(model, cfg, progress, snapshot if snapshots else None)
            model.hf.save_pretrained(tmp)
        info = {"generator": "probekit.organisms.reader", "config": asdict(cfg), "seconds": round(time.perf_counter() - t0, 1),
                "final_loss": float(np.mean(losses[-50:]))}
        (tmp / "probekit_organism.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        write_manifest(tmp, {"generator": "probekit.organisms.reader"})


def _main(argv: Sequence[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="(Re)build the reader checkpoint and report its OCR accuracy")
    ap.add_argument("--rebuild", action="store_true", help=f"rebuild the shipped checkpoint in {SHIPPED}")
    ap.add_argument("--out", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=ReaderConfig.steps)
    ap.add_argument("--snapshots", default=None, help="also save the weights every 250 steps here")
    ap.add_argument("--free", action="store_true", help="64 px images, 8 px patches, text anywhere (harder to learn)")
    args = ap.parse_args(argv)
    if args.snapshots:
        cfg = ReaderConfig(seed=args.seed, steps=args.steps, **(dict(image_size=64, patch_size=8, grid=0, place="") if args.free else {}))
        out = Path(args.out or "reader-build")
        _build(cfg, out, True, Path(args.snapshots))
        return 0
    from ..models.loading import load

    cfg = ReaderConfig(seed=args.seed, steps=args.steps)
    out = Path(args.out) if args.out else (SHIPPED if args.rebuild else None)
    path = reader(out, args.seed, config=cfg, progress=True) if out is None or not (out / "model.safetensors").exists() \
        else out
    if args.rebuild and out is not None and (out / "model.safetensors").exists() and args.out is None:
        shutil.rmtree(out)
        path = reader(out, args.seed, config=cfg, progress=True)
    print(path, json.dumps(ocr_accuracy(load(path)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
