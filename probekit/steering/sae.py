"""SAE interventions, each an edit handed to the one :class:`~probekit.steering.interventions.Intervention`.

- :func:`sae_steer` (Suri et al., arXiv 2503.06040): ``a <- a + alpha * beta * v`` with ``v`` the
  latent's decoder row (what one unit of the latent writes; unit-norm in Gemma Scope's and sae-lens's
  TopK SAEs) and, for several latents, the sum over them, each with its own ``alpha``; ``alpha`` is
  the latent's mean activation where it fires on the fitting data (probekit's reading of the paper's
  scale, so ``alpha * v`` is one typical firing; :class:`probekit.sae.select.Selection`), ``beta``
  the steering coefficient they sweep (best at 50 < |beta| < 100 on Gemma; an organism's scale
  differs, so sweep it).
- :func:`sae_clamp` (SAUCE-style, arXiv 2503.14530): encode, set the chosen latents to ``value``
  (0 ablates; SAUCE clamps to a negative value), decode, and add the SAE's error term back, so the
  activation changes by exactly ``decode(z') - decode(z)`` and nothing the SAE does not model is lost.
  ``only_active``: edit a latent only where it fires.
- :func:`sae_splice`: the activation replaced by the SAE's reconstruction (no error term), and
  :func:`zero_ablate`: replaced by zeros -- the two ends of :func:`splice_quality`.

Hooks are always removed, positions are chosen on the prompt and carried through the KV cache by the
:class:`~probekit.steering.tracker.PromptTracker`, as for :func:`~probekit.steering.ablate`.
:func:`splice_quality` reports the loss recovered ``(L_zero - L_sae) / (L_zero - L_clean)`` (answer
loss, teacher-forced) and the KL of the next-token distribution with the SAE spliced in, the field's
numbers for an SAE in the forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError, check_number, plain
from ..models.adapter import Model
from ..sae.model import SAE
from .interventions import Intervention, _check_positions, _check_positions_side, _check_widths

__all__ = ["sae_steer", "sae_clamp", "sae_splice", "zero_ablate", "splice_quality"]


def _check_sae(sae: Any) -> None:
    if not isinstance(sae, SAE):
        raise InputError(f"sae is a {type(sae).__name__}", fix="pass a probekit.sae.SAE (load_sae / train_sae)")


def _setup(model: Model, sae: SAE, points: str | Sequence[str] | None, positions: Any) -> tuple[list[str], Any]:
    _check_sae(sae)
    if points is None:
        if sae.point is None:
            raise InputError("this SAE does not record the point it reads", fix='pass points="lm.3.resid"')
        points = sae.point
    names = model.resolve(points)
    pos = _check_positions(positions)
    _check_positions_side(model, names, pos)
    _check_widths(model, names, sae.d_in, "SAE")
    return names, pos


def _latents(sae: SAE, latents: Any) -> list[int]:
    _check_sae(sae)
    lat = getattr(latents, "latents", latents)  # a Selection, or indices
    lat = [lat] if isinstance(lat, (int, np.integer)) else list(lat)
    bad = [x for x in lat if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or not 0 <= int(x) < sae.d_sae]
    if not lat or bad:
        raise InputError(f"latents must be indices 0..{sae.d_sae - 1}, got {plain(bad or lat)}", fix="e.g. latents=[3, 17]")
    return [int(x) for x in lat]


def _per_latent(value: Any, n: int, what: str, default: Any = None) -> Tensor:
    if value is None:
        value = default
    v = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
    if v.numel() == 1:
        v = v.expand(n)
    if v.numel() != n or not bool(torch.isfinite(v).all()):
        raise InputError(f"{what} must be one finite number or one per latent ({n}), got {plain(value)!r}",
                         fix=f"e.g. {what}=1.0")
    return v.float()


def sae_steer(model: Model, sae: SAE, latents: Any, beta: float, alpha: Any = None,
              points: str | Sequence[str] | None = None, positions: Any = None, generated: bool = True) -> Intervention:
    """Suri et al.'s steering: add ``beta * sum_i alpha_i v_i`` (``v_i`` decoder rows) at ``points``.

    ``latents``: indices or a :class:`~probekit.sae.select.Selection` (whose ``alpha`` is used when
    ``alpha`` is None; else 1). ``points``: default the SAE's own. ``positions`` / ``generated`` as in
    :func:`~probekit.steering.ablate`.
    """
    check_number(beta, "beta", example=-50.0)
    lat = _latents(sae, latents)
    a = _per_latent(alpha, len(lat), "alpha", getattr(latents, "alpha", 1.0))
    names, pos = _setup(model, sae, points, positions)
    vec = float(beta) * (a[:, None] * sae.W_dec[torch.tensor(lat)].detach().float()).sum(0)
    cache: dict[tuple, Tensor] = {}

    def edit(point: str, h: Tensor) -> Tensor:
        key = (h.device, h.dtype)
        if key not in cache:
            cache[key] = vec.to(h.device, h.dtype)
        return h + cache[key]

    iv = Intervention(model, names, edit, pos, bool(generated))
    iv.sae, iv.latents = sae, lat
    return iv


def sae_clamp(model: Model, sae: SAE, latents: Any, value: Any = 0.0, only_active: bool = True,
              points: str | Sequence[str] | None = None, positions: Any = None, generated: bool = True) -> Intervention:
    """SAUCE-style clamping: the chosen latents set to ``value`` (one number or one per latent), the SAE's
    error term kept: ``h <- h + decode(z') - decode(z)``. ``only_active``: only where the latent fires."""
    lat = _latents(sae, latents)
    v = _per_latent(value, len(lat), "value")
    names, pos = _setup(model, sae, points, positions)
    idx = torch.tensor(lat)
    on = _OnDevice(sae)

    def edit(point: str, h: Tensor) -> Tensor:
        x = h.float()
        sae_f = on(x.device)
        z = sae_f.encode(x)
        sel = z[..., idx.to(x.device)]
        new = v.to(x.device).expand_as(sel)
        if only_active:
            new = torch.where(sel > 0, new, sel)
        z2 = z.clone()
        z2[..., idx.to(x.device)] = new
        return (x + sae_f.decode(z2) - sae_f.decode(z)).to(h.dtype)

    iv = Intervention(model, names, edit, pos, bool(generated))
    iv.sae, iv.latents = sae, lat
    return iv


class _OnDevice:
    """A float32 copy of the SAE on each device an edit runs on (made once; the SAE itself is not moved)."""

    def __init__(self, sae: SAE):
        self.sae, self.copies = sae, {}

    def __call__(self, device: torch.device) -> SAE:
        if device not in self.copies:
            import copy

            s = self.sae
            if s.W_enc.dtype != torch.float32 or s.W_enc.device != device:
                s = copy.deepcopy(s).to(device=device, dtype=torch.float32)
            self.copies[device] = s
        return self.copies[device]


def sae_splice(model: Model, sae: SAE, points: str | Sequence[str] | None = None, positions: Any = None,
               generated: bool = True) -> Intervention:
    """The activation replaced by the SAE's reconstruction ``decode(encode(h))`` (no error term)."""
    names, pos = _setup(model, sae, points, positions)
    on = _OnDevice(sae)

    def edit(point: str, h: Tensor) -> Tensor:
        return on(h.device)(h.float()).to(h.dtype)

    iv = Intervention(model, names, edit, pos, bool(generated))
    iv.sae = sae
    return iv


def zero_ablate(model: Model, points: str | Sequence[str], positions: Any = None, generated: bool = True) -> Intervention:
    """The activation at ``points`` replaced by zeros (the reference of the loss recovered)."""
    names = model.resolve(points)
    pos = _check_positions(positions)
    _check_positions_side(model, names, pos)
    return Intervention(model, names, lambda point, h: torch.zeros_like(h), pos, bool(generated))


def splice_quality(model: Model, sae: SAE, images: Any, prompts: Any, task_samples: Sequence[Any] | None = None,
                   positions: Any = "last", batch_size: int = 16, seed: int = 0, n_boot: int = 1000) -> dict:
    """The SAE spliced into the forward pass at its point (and ``positions``), against the clean model and
    against zero ablation of the same positions.

    Returns ``kl_sae`` / ``kl_zero`` (mean KL(clean || edited) of the next token after each prompt, nats,
    with 95% bootstrap CIs ``_lo`` / ``_hi``), ``kl_recovered = 1 - kl_sae / kl_zero``, and with
    ``task_samples`` (objects with ``image``, ``question``, ``answer``) the mean answer loss per token
    clean / spliced / zero-ablated and ``loss_recovered = (L_zero - L_sae) / (L_zero - L_clean)``
    (1: the SAE loses nothing the model uses; 0: as bad as deleting the activation).
    """
    from .._stats import bootstrap_mean
    from .outputs import answer_scores, next_token_kl, next_token_logprobs

    clean = next_token_logprobs(model, images, prompts, batch_size)
    with sae_splice(model, sae, positions=positions):
        spliced = next_token_logprobs(model, images, prompts, batch_size)
    with zero_ablate(model, sae.point, positions=positions):
        zeroed = next_token_logprobs(model, images, prompts, batch_size)
    out: dict = {"point": sae.point, "positions": str(positions), "n": int(clean.shape[0])}
    for name, lp in (("sae", spliced), ("zero", zeroed)):
        m, lo, hi = bootstrap_mean(next_token_kl(clean, lp), seed, n_boot)
        out.update({f"kl_{name}": m, f"kl_{name}_lo": lo, f"kl_{name}_hi": hi})
    out["kl_recovered"] = 1 - out["kl_sae"] / out["kl_zero"] if out["kl_zero"] > 0 else math.nan
    if task_samples:
        _, l0 = answer_scores(model, task_samples, batch_size)
        with sae_splice(model, sae, positions=positions):
            _, l1 = answer_scores(model, task_samples, batch_size)
        with zero_ablate(model, sae.point, positions=positions):
            _, l2 = answer_scores(model, task_samples, batch_size)
        out.update({"loss_clean": float(l0.mean()), "loss_sae": float(l1.mean()), "loss_zero": float(l2.mean()),
                    "task_n": len(l0)})
        gap = out["loss_zero"] - out["loss_clean"]
        out["loss_recovered"] = (out["loss_zero"] - out["loss_sae"]) / gap if abs(gap) > 1e-12 else math.nan
    return out
