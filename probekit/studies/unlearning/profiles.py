"""Fictitious people with portraits: the MLLMU-Bench organism (Liu et al., NAACL 2025) in miniature.

Every :class:`Profile` has a name, a job, a birthplace and an age, a procedurally generated
portrait (a 4x4 mosaic of coloured cells drawn from its own seed, so no two look alike) and a
one-line biography. Each fact is a single token of the tiny tokenizer (:mod:`probekit.tiny.text`),
so one argmax scores it. Questions come in two modalities:

- multimodal: the portrait and "What does this person work with?";
- unimodal: the name in the question ("What does Alice Teal work with?") and a blank grey image
  (the tiny LLaVA processor always takes one image; a constant image carries nothing).

:func:`make_world` splits profiles into the trained ones (forget splits 5/10/15% are nested
prefixes of them, the rest is the retain set), two transfer groups (facts taught only by name, or
only with the portrait, plus a "Who is this?" -> name link) and never-seen profiles (the negative
control: their facts exist only in the data, never in training), and optional practice profiles
(``n_practice``): trained like the others plus MLLMU-Bench's question formats (lettered multiple
choice answered with a letter, the ``[Blank]`` cloze), so that the model learns those formats on
people outside every split, as MLLMU-Bench's instruction-tuned base knows them before it is
fine-tuned on the profiles' facts. :func:`portrait` with
``view > 0`` draws a transformed portrait (brightness, shift, noise): the test set.
:func:`train` fine-tunes a tiny LLaVA on the world's training samples (:func:`probekit.organisms.finetune.finetune`).

Example:
    >>> w = make_world(n_profiles=20, n_unseen=4, n_transfer=4, seed=0)
    >>> p = w.profiles[0]
    >>> len(w.train), p.facts["job"] in JOBS, portrait(p, 32).size
    (272, True, (32, 32))
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ...errors import InputError, check_int

__all__ = ["JOBS", "CITIES", "AGES", "ATTRIBUTES", "QUESTIONS", "CLOZE", "Profile", "QA", "World", "make_world",
           "portrait", "blank", "qa", "bio_qa", "link_qa", "cloze_qa", "format_practice", "train"]

# Answer words: single tokens of the tiny tokenizer (checked in the tests).
JOBS = ("book", "cake", "car", "boat")  # what the person works with (few classes: many profiles per job to probe)
CITIES = ("circle", "square", "triangle", "star", "hexagon", "diamond", "heart", "ring")  # towns of that name
AGES = ("21", "28", "35", "42", "49", "56", "63", "70")
ATTRIBUTES = {"job": JOBS, "city": CITIES, "age": AGES}
QUESTIONS = {  # (multimodal, unimodal with {name})
    "job": ("What does this person work with?", "What does {name} work with?"),
    "city": ("Where was this person born?", "Where was {name} born?"),
    "age": ("How old is this person?", "How old is {name}?"),
    "bio": ("Describe this person.", "Who is {name}?"),
    "link": ("Who is this?", None),
}
CLOZE = {"job": "{s} works with a __.", "city": "{s} was born in __.", "age": "{s} is __ years old."}  # "__": the blank
_FIRST = ("Alice", "Bob", "Carol", "Dave", "Eve", "Frank", "Grace", "Heidi", "Ivan", "Judy", "Mallory", "Oscar",
          "Peggy", "Trent", "Victor", "Walter")
_LAST = ("Red", "Green", "Blue", "Yellow", "Orange", "Purple", "Pink", "Brown", "Black", "White", "Grey", "Cyan",
         "Violet", "Indigo", "Gold", "Silver", "Beige", "Navy", "Teal", "Olive", "Lime")
_PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
                     [70, 240, 240], [240, 50, 230], [250, 190, 212], [0, 128, 128], [170, 110, 40],
                     [128, 0, 0], [0, 0, 128], [128, 128, 128], [255, 255, 255], [0, 0, 0]], dtype=np.float32)


@dataclass(frozen=True)
class Profile:
    """One fictitious person; ``pid`` seeds the portrait."""

    pid: int
    name: str
    facts: dict

    def bio(self) -> str:
        f = self.facts
        return f"works with a {f['job']}, was born in {f['city']} and is {f['age']} years old"


@dataclass
class QA:
    """A training or evaluation sample (``image``, ``question``, ``answer``) tagged with what it asks."""

    image: Any
    question: str
    answer: str
    pid: int
    attribute: str
    modality: str  # "image" or "text"
    meta: dict = field(default_factory=dict)


@dataclass
class World:
    """Profiles, their splits and the training samples (see :func:`make_world`)."""

    profiles: list[Profile]
    trained: list[int]  # pids; forget splits are prefixes
    text_only: list[int]  # transfer: facts taught by name only
    image_only: list[int]  # transfer: facts taught with the portrait only
    unseen: list[int]
    train: list[QA]
    image_size: int
    seed: int
    practice: list[int] = field(default_factory=list)  # trained with MLLMU-Bench's formats too; in no split

    def profile(self, pid: int) -> Profile:
        return self.profiles[pid]

    def forget(self, percent: float) -> list[int]:
        """The first ``percent``% of trained profiles (nested: 5% is inside 10%)."""
        k = max(1, int(round(len(self.trained) * percent / 100)))
        return self.trained[:k]

    def retain(self, percent: float) -> list[int]:
        return self.trained[len(self.forget(percent)):]


def portrait(p: Profile, size: int = 32, view: int = 0) -> Image.Image:
    """The profile's mosaic portrait; ``view > 0`` a transformed copy (the test set).

    A view changes brightness (x0.8-1.2), shifts by up to 2 px (wrapping) and adds Gaussian noise
    (sd 12/255), all seeded by ``(pid, view)``.
    """
    rng = np.random.default_rng([p.pid, 7919])
    cells = _PALETTE[rng.integers(0, len(_PALETTE), size=(4, 4))]
    img = np.kron(cells, np.ones((size // 4, size // 4, 1), dtype=np.float32))
    img = np.pad(img, ((0, size - img.shape[0]), (0, size - img.shape[1]), (0, 0)), mode="edge")
    if view:
        r = np.random.default_rng([p.pid, view, 104729])
        img = img * r.uniform(0.8, 1.2)
        img = np.roll(img, (int(r.integers(-2, 3)), int(r.integers(-2, 3))), axis=(0, 1))
        img = img + r.normal(0, 12, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def blank(size: int = 32) -> Image.Image:
    """The constant grey image of unimodal questions."""
    return Image.new("RGB", (size, size), (128, 128, 128))


def qa(p: Profile, attribute: str, modality: str, size: int = 32, view: int = 0) -> QA:
    """One question about ``attribute`` of ``p``, asked with the portrait or by name."""
    mm, um = QUESTIONS[attribute]
    if modality == "image":
        return QA(portrait(p, size, view), mm, p.facts[attribute], p.pid, attribute, modality, {"view": view})
    return QA(blank(size), um.format(name=p.name), p.facts[attribute], p.pid, attribute, modality, {"view": 0})


def bio_qa(p: Profile, modality: str, size: int = 32, view: int = 0) -> QA:
    """"Describe this person." (portrait) or "Who is {name}?" (by name); the answer is the biography."""
    mm, um = QUESTIONS["bio"]
    if modality == "image":
        return QA(portrait(p, size, view), mm, p.bio(), p.pid, "bio", modality, {"view": view})
    return QA(blank(size), um.format(name=p.name), p.bio(), p.pid, "bio", modality, {"view": 0})


def link_qa(p: Profile, size: int = 32, view: int = 0) -> QA:
    """"Who is this?" -> the name: ties a portrait to a name for the cross-modal transfer groups."""
    return QA(portrait(p, size, view), QUESTIONS["link"][0], p.name, p.pid, "link", "image", {"view": view})


def cloze_qa(p: Profile, attribute: str, modality: str, size: int = 32, view: int = 0) -> QA:
    """A sentence with the fact blanked (``"__"``, :data:`CLOZE`) about the portrait ("This person ...") or
    by name; the answer is the fact (MLLMU-Bench's fill-in-the-blank task)."""
    if modality == "image":
        return QA(portrait(p, size, view), CLOZE[attribute].format(s="This person"), p.facts[attribute], p.pid,
                  attribute, modality, {"view": view, "format": "cloze"})
    return QA(blank(size), CLOZE[attribute].format(s=p.name), p.facts[attribute], p.pid, attribute, modality,
              {"view": 0, "format": "cloze"})


def format_practice(p: Profile, size: int = 32, views: Sequence[int] = (0, 1), reps: int = 1, seed: int = 0) -> list[QA]:
    """MLLMU-Bench's formats on one practice profile: per attribute and modality, ``reps`` lettered
    multiple-choice prompts in seeded random option orders answered with the letter, and the
    ``[Blank]`` cloze prompt answered with the fact (the prompts of :mod:`probekit.studies.unlearning.mllmu_protocol`)."""
    from .mllmu_protocol import LETTERS, cloze_prompt, mc_prompt, shuffled_options

    rng = random.Random(f"practice:{seed}:{p.pid}")
    out = []
    for a, values in ATTRIBUTES.items():
        asks = [qa(p, a, "image", size, v) for v in views] + [qa(p, a, "text", size)]
        for q in asks:
            for _ in range(reps):
                opts, k = shuffled_options(q.answer, values, 4, rng)
                out.append(QA(q.image, mc_prompt(q.question, opts), LETTERS[k], p.pid, a, q.modality,
                              {**q.meta, "format": "mc"}))
        for c in [cloze_qa(p, a, "image", size, v) for v in views] + [cloze_qa(p, a, "text", size)]:
            out.append(QA(c.image, cloze_prompt(c.question), c.answer, p.pid, a, c.modality, c.meta))
    return out


def _profiles(n: int, seed: int) -> list[Profile]:
    rng = random.Random(seed)
    names = rng.sample([f"{a} {b}" for a in _FIRST for b in _LAST], n)
    # Balanced classes: each value equally often (up to rounding), independently shuffled per attribute.
    cols = {}
    for a, values in ATTRIBUTES.items():
        col = [values[i % len(values)] for i in range(n)]
        if a != "job":  # jobs cycle with pid, so every forget split (a prefix) has them balanced
            rng.shuffle(col)
        cols[a] = col
    return [Profile(i, names[i], {a: cols[a][i] for a in ATTRIBUTES}) for i in range(n)]


def make_world(n_profiles: int = 100, n_unseen: int = 40, n_transfer: int = 16, image_size: int = 32,
               train_views: int = 2, seed: int = 0, n_practice: int = 0) -> World:
    """Profiles and training samples.

    ``n_profiles`` trained profiles get every fact in both modalities plus the biography in both;
    ``n_transfer`` more are split in two halves taught in one modality only (with the name link);
    ``n_unseen`` are never trained on. Training portraits: the clean portrait and
    ``train_views - 1`` transformed views (views 1..), so the test views (>= 100) are new images.
    ``n_practice`` more are trained like the first ``n_profiles`` plus :func:`format_practice`.
    """
    n_practice = check_int(n_practice, "n_practice", low=0, fix="pass e.g. n_practice=16")
    n_profiles, n_unseen, image_size, train_views = (check_int(v, k, low=1, fix=f"pass e.g. {k}=20") for k, v in (
        ("n_profiles", n_profiles), ("n_unseen", n_unseen), ("image_size", image_size), ("train_views", train_views)))
    if n_transfer < 0 or n_transfer % 2:
        raise InputError(f"n_transfer must be even and >= 0, got {n_transfer}", fix="pass e.g. n_transfer=16")
    if image_size % 4:
        raise InputError(f"image_size {image_size} must be a multiple of 4 (4x4 mosaic)", fix="pass e.g. 32")
    total = n_profiles + n_transfer + n_unseen + n_practice
    if total > len(_FIRST) * len(_LAST):
        raise InputError(f"{total} profiles is more than {len(_FIRST) * len(_LAST)} distinct names", fix="ask for fewer")
    profs = _profiles(total, seed)
    trained = list(range(n_profiles))
    half = n_transfer // 2
    text_only = list(range(n_profiles, n_profiles + half))
    image_only = list(range(n_profiles + half, n_profiles + n_transfer))
    unseen = list(range(n_profiles + n_transfer, n_profiles + n_transfer + n_unseen))
    practice = list(range(total - n_practice, total))
    views = list(range(train_views))
    samples: list[QA] = []
    for pid in trained + practice:
        p = profs[pid]
        for a in ATTRIBUTES:
            samples += [qa(p, a, "image", image_size, v) for v in views] + [qa(p, a, "text", image_size)]
        samples += [bio_qa(p, "image", image_size, v) for v in views] + [bio_qa(p, "text", image_size)]
        if pid in practice:
            samples += format_practice(p, image_size, views, seed=seed)
    for pid in text_only:
        p = profs[pid]
        samples += [qa(p, a, "text", image_size) for a in ATTRIBUTES] + [bio_qa(p, "text", image_size)]
        samples += [link_qa(p, image_size, v) for v in views]
    for pid in image_only:
        p = profs[pid]
        samples += [qa(p, a, "image", image_size, v) for a in ATTRIBUTES for v in views]
        samples += [bio_qa(p, "image", image_size, v) for v in views] + [link_qa(p, image_size, v) for v in views]
    return World(profs, trained, text_only, image_only, unseen, samples, image_size, seed, practice)


def eval_set(world: World, pids: Sequence[int], modality: str, view: int = 0,
             attributes: Sequence[str] = tuple(ATTRIBUTES)) -> list[QA]:
    """Fact questions about ``pids`` in one modality (``view`` >= 100 for the transformed test portraits)."""
    return [qa(world.profile(i), a, modality, world.image_size, view) for i in pids for a in attributes]


def encode(model: Any, samples: Sequence[QA], batch_size: int = 256) -> list[dict]:
    """Processor inputs with answer-only labels, in chunks (:func:`probekit.organisms.finetune.answer_batch`)."""
    from ...organisms.finetune import answer_batch

    out = []
    for b in range(0, len(samples), batch_size):
        chunk = samples[b:b + batch_size]
        out.append(answer_batch(model, [s.image for s in chunk], [s.question for s in chunk], [s.answer for s in chunk])[0])
    return out


def _rows(chunks: list[dict], idx: Sequence[int], size: int) -> dict:
    """Rows ``idx`` of the encoded chunks (each ``size`` rows), padded to the longest, trimmed of shared padding."""
    import torch

    parts: dict[str, list] = {}
    for i in idx:
        c = chunks[i // size]
        for k, v in c.items():
            parts.setdefault(k, []).append((v[i % size], c["attention_mask"].shape[1]))
    L = max(n for _, n in parts["input_ids"])
    pad = {"input_ids": 0, "attention_mask": 0, "labels": -100}
    out = {}
    for k, rows in parts.items():
        if k in pad:
            out[k] = torch.stack([torch.nn.functional.pad(r, (0, L - n), value=pad[k]) for r, n in rows])
        else:
            out[k] = torch.stack([r for r, _ in rows])
    keep = int(out["attention_mask"].sum(0).nonzero().max()) + 1
    for k in pad:
        out[k] = out[k][:, :keep]
    return out


def train(world: World, path: Any, *, steps: int = 1500, batch_size: int = 32, lr: float = 3e-3, num_layers: int = 2,
          hidden_size: int = 64, seed: int = 0) -> tuple[Any, list[float]]:
    """Build a tiny LLaVA at ``path`` and fine-tune it on ``world.train`` (full fine-tuning, AdamW, cosine).

    The loss is the same answer-token cross-entropy as :func:`probekit.organisms.finetune.finetune`;
    the samples are encoded once up front (the processor costs more than the tiny model's step)
    and mini-batches are drawn epoch by epoch from a ``random.Random(seed)`` shuffle.
    Returns ``(model, losses)``; the random-init base stays at ``path`` (``probekit.load(path)``),
    the untrained reference of the negative control.
    """
    import math
    from pathlib import Path

    import torch

    from ... import tiny
    from ...models.loading import load

    if not isinstance(steps, int) or steps < 1 or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"steps and batch_size must be positive ints, got {steps!r}, {batch_size!r}",
                         fix="pass e.g. steps=1500, batch_size=32")
    if not (Path(path) / "config.json").exists():
        tiny.build("llava", path, seed=seed, image_size=world.image_size, patch_size=world.image_size // 4,
                   num_layers=num_layers, hidden_size=hidden_size, overwrite=True, manifest=True)
    model = load(path)  # a cached base is checked against its manifest
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: one thread is as fast and leaves the other cores alone
    torch.manual_seed(seed)
    rng = random.Random(seed)
    hf = model.hf
    size = 256
    chunks = encode(model, world.train, size)
    opt = torch.optim.AdamW([p for p in hf.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    order: list[int] = []
    losses = []
    hf.train()
    try:
        for _ in range(steps):
            if len(order) < batch_size:
                fresh = list(range(len(world.train)))
                rng.shuffle(fresh)
                order += fresh
            idx, order = order[:batch_size], order[batch_size:]
            loss = hf(**_rows(chunks, idx, size), use_cache=False).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
    finally:
        hf.eval()
        torch.set_num_threads(threads)
    return model, losses
