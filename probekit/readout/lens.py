"""Logit lens and tuned lens: read a residual stream through the model's own unembedding.

The logit lens (nostalgebraist 2020; on VLMs, Neo et al. 2024) applies the final norm and the
unembedding to the residual stream of any layer at any position, image positions included.
The tuned lens (Belrose et al. 2023) first maps each layer with a learned affine translator
``h + A h + b`` (A, b start at zero), trained to minimise KL(final distribution || lens).

:class:`Lens` is what every lens shares: one ``decode`` (a point's activations to logits over the
vocabulary) and the tables built on it (top-k tokens, target ranks, KL to the final layer).
:class:`LogitLens` is one; a new lens subclasses :class:`Lens` and writes ``decode`` only.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from typing import Any, Iterable, Sequence

import pandas as pd
import torch
from torch import nn

from .._progress import progress_bar
from .._stats import Z95
from ..errors import InputError, UnknownPointError, check_bool
from ..hooks.coerce import as_store
from ..hooks.points import Point
from ..hooks.store import ActivationStore
from . import lens_file as _file

__all__ = ["Lens", "LogitLens", "TunedLens", "lens_points"]

def _layer_of(point: str) -> float:
    return int(p.depth) if (p := Point.parse(point)).in_stream else math.nan


def lens_points(points: Iterable[str]) -> list[str]:
    """The points a lens can read: ``lm.embed`` and ``lm.{i}.resid``, in layer order."""
    return sorted((p for p in points if Point.parse(p).in_stream), key=_layer_of)


def _positions(store: ActivationStore, point: str) -> list[str]:
    """The names of a point's positions; ``"0"`` for an ``[n, d]`` point that names none."""
    return store.positions(point) or ["0"]


def _known(store: ActivationStore, points: Sequence[str]) -> None:
    missing = [p for p in points if p not in store]
    if missing:
        raise UnknownPointError(f"no activations for {missing[0]!r}", fix="collect lm.embed / lm.*.resid first")


class TunedLens(nn.Module):
    """One affine translator per layer, ``h -> h + A h + b`` with A, b initialised at zero.

    Fit with :meth:`fit`; save and load with safetensors (:meth:`save`, :meth:`load`).
    """

    def __init__(self, d_model: int, points: Sequence[str], meta: dict | None = None):
        super().__init__()
        self.d_model = d_model
        self.points = list(points)
        self.meta = dict(meta or {})
        self.translators = nn.ModuleDict({p.replace(".", "_"): nn.Linear(d_model, d_model) for p in self.points})
        for lin in self.translators.values():
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, h: torch.Tensor, point: str) -> torch.Tensor:
        key = point.replace(".", "_")
        if key not in self.translators:
            return h  # the last layer needs no translator: the lens is exact there
        lin = self.translators[key]
        return h + lin(h.to(lin.weight.dtype)).to(h.dtype)

    @classmethod
    def fit(
        cls,
        model: Any,
        store: Any,
        points: Sequence[str] | None = None,
        *,
        steps: int = 300,
        lr: float = 1e-3,
        warmup: int = 30,
        batch_size: int = 256,
        weight_decay: float = 1e-3,
        seed: int = 0,
        progress: bool = True,
    ) -> "TunedLens":
        """Train translators so each layer's lens matches the final distribution (KL).

        ``store`` holds ``lm.*.resid`` (and optionally ``lm.embed``) at any positions; the
        target is the model's own final distribution at the same positions, computed from the
        last layer's residual. Adam with linear warm-up (Belrose et al. use Adam or SGD-Nesterov).
        """
        check_bool(progress, "progress")
        lens = LogitLens(model)
        store = as_store(store)
        all_points = lens_points(store.points)
        last = f"lm.{model.n_layers - 1}.resid"
        if last not in all_points:
            raise InputError(f"the tuned lens needs the last layer's residual {last!r} in the store",
                             fix='collect points="lm.*.resid"')
        points = [p for p in (points or all_points) if p != last]
        _known(store, points)
        # every position of every point at once: each step samples rows across all of them
        final = store[last].float().reshape(-1, model.d_model)
        with torch.no_grad():
            target_logp = torch.cat([torch.log_softmax(lens.decode(c), -1) for c in final.split(1024)])
        tl = cls(model.d_model, points, meta={"model": model.name, "model_fingerprint": model.fingerprint()})
        gen = torch.Generator().manual_seed(seed)
        params = list(tl.parameters())
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup)))
        xs = {p: store[p].float().reshape(-1, model.d_model) for p in points}
        n = final.shape[0]
        norm, unembed = lens.frozen()
        for _ in progress_bar(range(steps), desc="tuned lens", disable=not progress, leave=False):
            idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
            loss = 0.0
            for p in points:
                logits = unembed(norm(tl(xs[p][idx], p).to(lens.dtype))).float()
                logp = torch.log_softmax(logits, -1)
                tp = target_logp[idx]
                loss = loss + (tp.exp() * (tp - logp)).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        tl.eval()
        return tl

    def save(self, path: str | os.PathLike) -> None:
        """Write ``path`` (safetensors) with the points, metadata and a checksum in its header.

        Written to a temporary name and renamed: a full disk raises StoreError naming the bytes
        needed and leaves nothing (:mod:`probekit.readout.lens_file`).
        """
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        d = self.translators[next(iter(self.translators))].weight.shape[0] if self.translators else self.d_model
        _file.write(path, state, self.points, self.meta, d)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TunedLens":
        """Read a file written by :meth:`save`; a damaged or crafted file raises StoreError."""
        state, points, meta, d = _file.read(path)
        tl = cls(d, points, meta=meta)
        dtype = next(iter(state.values())).dtype if state else None
        if dtype is not None:
            tl = tl.to(dtype)
        tl.load_state_dict(state)
        return tl.eval()


class Lens(ABC):
    """Maps a point's activations to logits over the model's vocabulary; the tables every lens gives.

    A subclass writes :meth:`decode` only; :meth:`log_probs`, :meth:`top_k`, :meth:`target_ranks` and
    :meth:`kl_to_final` are built on it, and the ladder (:func:`probekit.readout.ladder.leakage_ladder`),
    the membership lens scores and a scan's lens tables read any lens through ``decode``.

    Args:
        model: the :class:`probekit.Model` whose tokenizer names the tokens (and whose last layer
            :meth:`kl_to_final` compares with).

    Example:
        >>> import probekit, tempfile, torch
        >>> m = probekit.load(probekit.tiny.build("llava", tempfile.mkdtemp() + "/m"))
        >>> class RandomLens(Lens):  # decodes through one fixed random matrix
        ...     def __init__(self, model):
        ...         super().__init__(model)
        ...         g = torch.Generator().manual_seed(0)
        ...         self.w = torch.randn(model.d_model, model.unembed.weight.shape[0], generator=g)
        ...     def decode(self, h, point=None):
        ...         return h.float().cpu() @ self.w
        >>> s = probekit.collect(m, probekit.tiny.fixture_images(4, 32), "What shape?",
        ...                      points=["lm.*.resid"], positions="last", progress=False)
        >>> top = RandomLens(m).top_k(s, k=2)
        >>> len(top) == m.n_layers * 2, list(top["rank"][:2])
        (True, [1, 2])
    """

    def __init__(self, model: Any):
        self.model = model

    @abstractmethod
    def decode(self, h: torch.Tensor, point: str | None = None) -> torch.Tensor:
        """Logits ``[..., vocab]`` (float32) for the activations ``h[..., d]`` of ``point``."""

    def log_probs(self, h: torch.Tensor, point: str | None = None) -> torch.Tensor:
        """Log-probabilities ``[..., vocab]``: log-softmax of :meth:`decode`."""
        return torch.log_softmax(self.decode(h, point), -1)

    def _iter(self, store: Any, points: Sequence[str] | None):
        """``(point, position, [n, d])`` for every position of every lens point, read one position at a time."""
        store = as_store(store)
        names = list(points) if points is not None else lens_points(store.points)
        if not names:
            raise InputError("the store holds no lm.embed / lm.*.resid points", fix='collect points="lm.*.resid"')
        _known(store, names)
        for p in names:
            for j, pos in enumerate(_positions(store, p)):
                yield p, pos, store.read(p, j)

    def _probs(self, x: torch.Tensor, point: str, chunk: int = 512) -> torch.Tensor:
        with torch.no_grad():  # a subclass's decode need not turn autograd off itself (a lens with parameters)
            return torch.cat([torch.softmax(self.decode(c, point), -1).cpu() for c in x.split(chunk)])

    def top_k(self, store: Any, k: int = 5, points: Sequence[str] | None = None, per_sample: bool = False) -> pd.DataFrame:
        """Top-k tokens per layer and position.

        With ``per_sample=False`` the probabilities are averaged over samples first (what the
        layer says about the data set); with True one block of rows per sample.
        Columns: point, layer, position, [sample], rank, token_id, token, prob.
        """
        tok = getattr(self.model.processor, "tokenizer", self.model.processor)
        rows = []
        for p, pos, x in self._iter(store, points):
            probs = self._probs(x, p)
            groups = [(None, probs.mean(0))] if not per_sample else list(enumerate(probs))
            for s, pr in groups:
                val, idx = pr.topk(k)
                for r, (v, i) in enumerate(zip(val.tolist(), idx.tolist())):
                    row = {"point": p, "layer": _layer_of(p), "position": pos, "rank": r + 1, "token_id": i,
                           "token": tok.decode([i]), "prob": v}
                    if s is not None:
                        row["sample"] = s
                    rows.append(row)
        return pd.DataFrame(rows)

    def target_ranks(self, store: Any, targets: Sequence[str], points: Sequence[str] | None = None) -> pd.DataFrame:
        """Rank and probability of every token of each target string, per layer and position.

        Ranks are 1-based (1 = the lens's top token); ``prob_lo``/``prob_hi`` are a 95% CI of the
        mean probability over samples (normal approximation). ``token_index`` counts the target's
        tokens (a string such as a username is several tokens; each gets its row).
        """
        if isinstance(targets, str):
            targets = [targets]
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise InputError(f"targets must be non-empty strings, got {targets!r}", fix='e.g. targets=["alice_1987"]')
        tok = getattr(self.model.processor, "tokenizer", self.model.processor)
        encoded = {t: tok(t, add_special_tokens=False)["input_ids"] for t in targets}
        rows = []
        for p, pos, x in self._iter(store, points):
            probs = self._probs(x, p)
            for t, ids in encoded.items():
                for ti, tid in enumerate(ids):
                    pt = probs[:, tid]
                    rank = (probs > pt[:, None]).sum(1) + 1
                    n = pt.shape[0]
                    mean = pt.mean().item()
                    half = Z95 * pt.std(unbiased=True).item() / math.sqrt(n) if n > 1 else math.nan
                    rows.append({"point": p, "layer": _layer_of(p), "position": pos, "target": t, "token_index": ti,
                                 "token_id": tid, "token": tok.decode([tid]), "n": n,
                                 "rank_median": float(rank.float().median()), "rank_mean": float(rank.float().mean()),
                                 "prob": mean, "prob_lo": max(0.0, mean - half), "prob_hi": min(1.0, mean + half)})
        return pd.DataFrame(rows)

    def kl_to_final(self, store: Any, points: Sequence[str] | None = None) -> pd.DataFrame:
        """Mean KL(final || lens) in nats per layer and position, with a 95% CI over samples."""
        last = f"lm.{self.model.n_layers - 1}.resid"
        store = as_store(store)
        _known(store, [last])
        pos_names = _positions(store, last)
        final = store[last]  # read once, not once per layer
        final3 = final if final.dim() == 3 else final.unsqueeze(1)
        rows = []
        for p, pos, x in self._iter(store, points):
            fin = final3[:, pos_names.index(pos)]
            kls = []
            for xc, fc in zip(x.split(512), fin.split(512)):
                lp = torch.log_softmax(self.decode(xc, p), -1)
                tp = torch.log_softmax(self.decode(fc, last), -1)
                kls.append((tp.exp() * (tp - lp)).sum(-1).cpu())
            kl = torch.cat(kls).double()
            half = Z95 * kl.std().item() / math.sqrt(len(kl)) if len(kl) > 1 else math.nan
            rows.append({"point": p, "layer": _layer_of(p), "position": pos, "kl": kl.mean().item(),
                         "kl_lo": kl.mean().item() - half, "kl_hi": kl.mean().item() + half})
        return pd.DataFrame(rows)


class LogitLens(Lens):
    """Decode residual-stream vectors with the model's final norm and unembedding.

    Args:
        model: a :class:`probekit.Model` (only its final norm and unembedding are used).
        tuned: an optional :class:`TunedLens`; its translators are applied first.

    Example:
        >>> import probekit, tempfile
        >>> m = probekit.load(probekit.tiny.build("llava", tempfile.mkdtemp() + "/m"))
        >>> s = probekit.collect(m, probekit.tiny.fixture_images(4, 32), "What shape?",
        ...                      points=["lm.*.resid"], positions=("last", "image_mean"), progress=False)
        >>> table = LogitLens(m).top_k(s, k=3)
        >>> sorted(table.columns)[:3]
        ['layer', 'point', 'position']
    """

    def __init__(self, model: Any, tuned: TunedLens | None = None):
        super().__init__(model)
        self.tuned = tuned
        self.dtype = model.dtype

    def frozen(self) -> tuple[nn.Module, nn.Module]:
        norm = self.model.final_norm if self.model.final_norm is not None else nn.Identity()
        return norm, self.model.head

    def decode(self, h: torch.Tensor, point: str | None = None) -> torch.Tensor:
        """Logits ``[..., vocab]`` (float32) for residual vectors ``h[..., d]``."""
        if h.shape[-1] != self.model.d_model:
            raise InputError(f"vectors of width {h.shape[-1]} cannot be decoded by a model of width {self.model.d_model}",
                             fix="pass lm.*.resid activations of this model")
        norm, unembed = self.frozen()
        dev = self.model.device
        with torch.no_grad():
            x = h.to(dev)
            if self.tuned is not None and point is not None:
                x = self.tuned(x.float(), point)
            return unembed(norm(x.to(self.dtype))).float()
