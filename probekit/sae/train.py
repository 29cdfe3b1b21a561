"""Train an SAE on one hook point of an :class:`~probekit.hooks.store.ActivationStore`, shard by shard.

Memory stays flat in the number of samples: one pass (:func:`moments`) reads the store shard by
shard for the mean and the scale, then every epoch visits the shards in a seeded order and each
shard's rows in a seeded order, in batches. Same store, same settings, same seed: the same
weights, bit for bit (on the same machine and thread count).

The activations are centred and scaled so that ``E||x - mean||^2 = d_in`` while training (one
learning rate and one L1 coefficient fit every model); the scale and the mean are folded back into
the weights at the end, so the saved SAE reads raw activations (sae-lens's
``normalize_activations="none"``).

- ``"topk"`` (Gao et al. 2024, as eai-sparsify trains it): loss = reconstruction error over the
  variance (FVU) + ``auxk_alpha`` times the AuxK loss (the top ``d_in / 2`` pre-activations of the
  latents dead for ``dead_after`` rows reconstruct the residual); decoder rows kept at unit norm
  (the gradient along each row removed before the step, renormalised after).
- ``"standard"`` (ReLU with an L1 penalty, Anthropic's April 2024 update as sae-lens trains it):
  loss = squared error / d_in + ``l1`` * sum_i z_i ||W_dec,i|| (the L1 coefficient warmed up over
  the first 5% of steps), decoder norms free.

Adam, learning rate ``2e-4 / sqrt(d_sae / 2**14)`` by default (eai-sparsify's rule), linear decay
over the last 20% of steps. :func:`train_sae` returns the :class:`~probekit.sae.SAE` with its
training record in ``sae.meta`` (settings, rows, steps, seconds, the loss curve in 20 points).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import torch
from torch import Tensor

from ..errors import InputError, check_int, check_number, plain
from .model import SAE, TRAINABLE

__all__ = ["TrainSettings", "train_sae", "rows", "moments"]


@dataclass
class TrainSettings:
    architecture: str = "topk"
    d_sae: int | None = None  # default: expansion * d_in
    expansion: int = 8
    k: int = 16
    l1: float = 3.0
    epochs: float = 4.0
    batch_size: int = 256
    lr: float | None = None
    auxk_alpha: float = 1 / 32
    dead_after: int | None = None  # rows without firing before a latent counts as dead (default: one epoch)
    seed: int = 0

    def check(self) -> None:
        if self.architecture not in TRAINABLE:
            raise InputError(f"cannot train a {plain(self.architecture)!r} SAE", fix=f"use architecture in {TRAINABLE}")
        for name in ("expansion", "k", "batch_size"):
            setattr(self, name, check_int(getattr(self, name), name, low=1, example=getattr(TrainSettings, name)))
        self.d_sae = check_int(self.d_sae, "d_sae", low=1, example=512, none=True)
        for name in ("epochs", "l1", "auxk_alpha") + (("lr",) if self.lr is not None else ()):
            # epochs may be fractional (a part of the last pass); a zero epochs or lr trains nothing
            check_number(getattr(self, name), name, low=0, low_open=name in ("epochs", "lr"),
                         example=getattr(TrainSettings, name))


def rows(store: Any, point: str, position: str | int | None = None) -> Iterator[Tensor]:
    """The point's activations shard by shard as ``[m, d]`` float32 rows: one position of a ``[n, p, d]``
    point, or every position as its own row (``position=None``)."""
    info = store.info(point)
    names = list(info["positions"])
    j = None
    if position is not None and len(info["shape"]) == 2:
        j = names.index(position) if position in names else position
        if isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < info["shape"][0]:
            raise InputError(f"{point} has no position {plain(position)!r}", fix=f"use one of {names} or None (all)")
    for x in store.iter_shards(point):
        if x.dim() == 3:
            x = x[:, j] if j is not None else x.reshape(-1, x.shape[-1])
        yield x.float()


def moments(store: Any, point: str, position: str | int | None = None) -> tuple[Tensor, float, int]:
    """Mean ``[d]``, mean squared distance from it, and the row count: one streaming pass (float64 sums)."""
    n, s, ss = 0, None, 0.0
    for x in rows(store, point, position):
        xd = x.double()
        s = xd.sum(0) if s is None else s + xd.sum(0)
        ss += float((xd * xd).sum())
        n += x.shape[0]
    if not n:
        raise InputError(f"the store holds no rows of {point}", fix="collect activations first")
    mean = s / n
    var = ss / n - float(mean @ mean)
    return mean.float(), max(var, 1e-12), n


def _batches(store: Any, point: str, position: Any, bs: int, gen: torch.Generator) -> Iterator[Tensor]:
    """One epoch: the shards in a seeded order, each shard's rows shuffled, in batches of ``bs``."""
    n_shards = len(store._index["shards"]) if getattr(store, "_index", None) is not None else 1
    order = torch.randperm(n_shards, generator=gen).tolist()
    if n_shards == 1:
        shards = [next(rows(store, point, position))] if order else []
        it = iter(shards)
    else:
        it = (_one_shard(store, point, position, i) for i in order)
    for x in it:
        perm = torch.randperm(x.shape[0], generator=gen)
        for b in range(0, x.shape[0], bs):
            yield x[perm[b:b + bs]]


def _one_shard(store: Any, point: str, position: Any, i: int) -> Tensor:
    from ..hooks.store_index import read_shard

    shard = store._index["shards"][i]
    x = read_shard(store.directory, store._index, shard, [point], store.check_reads)[point]
    info = store.info(point)
    if x.dim() == 3:
        names = list(info["positions"])
        j = (names.index(position) if position in names else position) if position is not None else None
        x = x[:, j] if j is not None else x.reshape(-1, x.shape[-1])
    return x.float()


def _auxk(sae: SAE, pre: Tensor, err: Tensor, dead: Tensor) -> Tensor:
    """Gao et al.'s auxiliary loss: the top dead latents reconstruct the residual ``err`` (normalised by its variance)."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    k_aux = min(max(sae.d_in // 2, 1), n_dead)
    masked = torch.where(dead[None], pre, torch.full_like(pre, -torch.inf))
    vals, idx = masked.topk(k_aux, dim=-1, sorted=False)
    z = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
    e_hat = z @ sae.W_dec
    scale = min(n_dead / k_aux, 1.0)
    return scale * (e_hat - err).pow(2).sum() / (err - err.mean(0)).pow(2).sum().clamp_min(1e-12)


def _lr_at(step: int, total: int, lr: float) -> float:
    tail = max(int(0.2 * total), 1)
    return lr * min(1.0, (total - step) / tail)


def train_sae(store: Any, point: str, position: str | int | None = None, settings: TrainSettings | None = None,
              progress: bool = False, device: str | torch.device = "cpu", **kwargs: Any) -> SAE:
    """An SAE trained on ``store[point]`` (one ``position`` of a multi-position point, or every position as a row).

    ``settings`` (a :class:`TrainSettings`) or its fields as keywords: ``architecture`` (``"topk"`` or
    ``"standard"``), ``d_sae`` (default ``expansion * d_in``), ``k``, ``l1``, ``epochs``, ``batch_size``,
    ``lr``, ``auxk_alpha``, ``dead_after``, ``seed``. The record of the run is in ``sae.meta``.
    ``device``: where to train (``"cuda"`` for a real model's SAE; shards are read on the CPU and each batch
    is moved); the SAE comes back on the CPU.

    Example:
        >>> import torch
        >>> from probekit.hooks.store import ActivationStore
        >>> x = torch.randn(512, 3) @ torch.randn(3, 16)
        >>> sae = train_sae(ActivationStore({"lm.0.resid": x}), "lm.0.resid", d_sae=32, k=3, epochs=20)
        >>> bool(sae.meta["train"]["fvu_last"] < 0.2), sae.k
        (True, 3)
    """
    s = settings or TrainSettings()
    s = TrainSettings(**{**asdict(s), **kwargs})
    s.check()
    if not hasattr(store, "iter_shards"):
        raise InputError(f"store is a {type(store).__name__}", fix="pass an ActivationStore (probekit.collect)")
    if point not in store.points:
        raise InputError(f"the store has no point {point!r}", fix=f"stored points: {store.points}")
    t0 = time.perf_counter()
    mean, var, n = moments(store, point, position)
    d_in = int(mean.shape[0])
    scale = math.sqrt(d_in / var)
    d_sae = s.d_sae or s.expansion * d_in
    if s.architecture == "topk" and s.k > d_sae:
        raise InputError(f"k={s.k} is larger than d_sae={d_sae}", fix="use a smaller k or a larger d_sae")
    sae = SAE.random(d_in, d_sae, s.architecture, k=s.k if s.architecture == "topk" else None, seed=s.seed)
    if s.architecture == "standard":
        with torch.no_grad():
            sae.W_dec.mul_(0.1)
            sae.W_enc.copy_(sae.W_dec.T)
    dev = torch.device(device)
    sae.to(dev).requires_grad_(True)
    mean = mean.to(dev)
    lr = s.lr or 2e-4 / math.sqrt(d_sae / 2 ** 14)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    per_epoch = max(1, _count_batches(store, point, position, s.batch_size))
    total = max(1, int(round(s.epochs * per_epoch)))
    dead_after = s.dead_after or n
    since = torch.zeros(d_sae, dtype=torch.long, device=dev)
    gen = torch.Generator().manual_seed(s.seed + 1)
    curve: list[float] = []
    step, fvu_sum, fvu_n = 0, 0.0, 0
    from .._progress import progress_bar

    bar = progress_bar(total=total, desc=f"SAE {point}", disable=not progress, unit="step", leave=False)
    try:
        while step < total:
            for xb in _batches(store, point, position, s.batch_size, gen):
                if step >= total:
                    break
                x = (xb.to(dev, non_blocking=True) - mean) * scale
                pre = sae.pre_activations(x)
                z = sae.activate(pre)
                x_hat = z @ sae.W_dec + sae.b_dec
                err = x - x_hat
                fvu = err.pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
                if s.architecture == "topk":
                    dead = since > dead_after
                    loss = fvu + (s.auxk_alpha * _auxk(sae, pre, err.detach(), dead) if s.auxk_alpha else 0.0)
                else:
                    warm = min(1.0, (step + 1) / max(1, int(0.05 * total)))
                    sparsity = (z * sae.W_dec.norm(dim=-1)).sum(-1).mean()
                    loss = err.pow(2).sum(-1).mean() / d_in + warm * s.l1 * sparsity / d_in
                fired = (z > 0).any(0)
                since = torch.where(fired, torch.zeros_like(since), since + x.shape[0])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if s.architecture == "topk":
                    _remove_parallel_grad(sae)
                for g in opt.param_groups:
                    g["lr"] = _lr_at(step, total, lr)
                opt.step()
                if s.architecture == "topk":
                    with torch.no_grad():
                        sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                fvu_sum, fvu_n = fvu_sum + float(fvu.detach()), fvu_n + 1
                if fvu_n and (step + 1) % max(1, total // 20) == 0:
                    curve.append(round(fvu_sum / fvu_n, 5))
                    fvu_sum, fvu_n = 0.0, 0
                step += 1
                bar.update(1)
    finally:
        bar.close()
    _fold(sae, mean, scale)
    sae.cpu()
    sae.point, sae.position = point, (None if position is None else str(position))
    sae.meta = {"train": {**asdict(s), "d_sae": d_sae, "lr": lr, "rows": n, "steps": total, "backend": "probekit",
                          "seconds": round(time.perf_counter() - t0, 3), "fvu_curve": curve, "device": str(dev),
                          "fvu_last": curve[-1] if curve else (fvu_sum / max(fvu_n, 1)),
                          "dead_at_end": int((since > dead_after).sum())}}
    return sae.eval().requires_grad_(False)


def _count_batches(store: Any, point: str, position: Any, bs: int) -> int:
    """Batches per epoch, from the index (no read) when the store is on disk."""
    info = store.info(point)
    per_row = info["shape"][0] if (len(info["shape"]) == 2 and position is None) else 1
    idx = getattr(store, "_index", None)
    sizes = [sh["stop"] - sh["start"] for sh in idx["shards"]] if idx is not None else [len(store)]
    return sum(math.ceil(m * per_row / bs) for m in sizes)


def _remove_parallel_grad(sae: SAE) -> None:
    g = sae.W_dec.grad
    if g is None:
        return
    W = sae.W_dec.data
    g -= (g * W).sum(-1, keepdim=True) * W


@torch.no_grad()
def _fold(sae: SAE, mean: Tensor, scale: float) -> None:
    """Trained on ``x' = scale (x - mean)``: rewrite the weights to read raw ``x`` (latents unchanged)."""
    sae.W_enc.mul_(scale)
    sae.b_dec.div_(scale).add_(mean)
    sae.W_dec.div_(scale)
