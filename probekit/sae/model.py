"""The SAE value: encode / decode with sae-lens's weight layout, a few architectures, no model.

Weights as sae-lens stores them: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``,
``b_dec [d_in]`` (and ``threshold [d_sae]`` for JumpReLU). With ``apply_b_dec_to_input`` the
encoder sees ``x - b_dec``:

- ``"standard"`` (ReLU; trained with an L1 penalty): ``z = relu((x - b_dec) W_enc + b_enc)``
- ``"topk"`` (Gao et al. 2024): the ``k`` largest pre-activations, through a ReLU, the rest 0
  (``rescale_acts_by_decoder_norm``: pre-activations times each decoder row's norm before the
  choice, divided back out before decoding, as sae-lens does)
- ``"jumprelu"`` (loaded, not trained here): ``relu(pre) * (pre > threshold)``

and ``x_hat = z W_dec + b_dec``. ``point`` / ``position`` say where in a probekit model the SAE
reads (``"lm.3.resid"``, ``"last"``); they travel in ``cfg.json``'s ``metadata``.

Example:
    >>> import torch
    >>> sae = SAE.random(d_in=8, d_sae=32, architecture="topk", k=4, seed=0)
    >>> z = sae.encode(torch.randn(5, 8))
    >>> z.shape, int((z != 0).sum(-1).max()) <= 4
    (torch.Size([5, 32]), True)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._version import __version__
from ..errors import InputError, check_int, plain
from .files import ARCHITECTURES, read_sae, write_sae

__all__ = ["SAE", "ARCHITECTURES", "TRAINABLE", "load_sae", "save_sae"]
TRAINABLE = ("standard", "topk")


class SAE(nn.Module):
    """A sparse autoencoder on one hook point (sae-lens layout; see the module docstring).

    Attributes:
        architecture: ``"standard"``, ``"topk"`` or ``"jumprelu"``.
        k: active latents per row (TopK), else None.
        point, position: the probekit hook point and position it reads (None when unknown).
        meta: free-form metadata kept in ``cfg.json`` (how it was trained, on what).
    """

    def __init__(self, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, *, architecture: str = "topk",
                 k: int | None = None, threshold: Tensor | None = None, apply_b_dec_to_input: bool = True,
                 rescale_acts_by_decoder_norm: bool = False, point: str | None = None,
                 position: str | None = None, meta: dict | None = None):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise InputError(f"unknown SAE architecture {plain(architecture)!r}", fix=f"use one of {ARCHITECTURES}")
        d_in, d_sae = W_enc.shape
        if architecture == "topk" and (isinstance(k, bool) or not isinstance(k, int) or not 0 < k <= d_sae):
            raise InputError(f"a TopK SAE needs 0 < k <= d_sae={d_sae}, got k={plain(k)!r}", fix="e.g. k=16")
        if architecture == "jumprelu" and threshold is None:
            raise InputError("a JumpReLU SAE needs its threshold [d_sae]", fix="pass threshold=")
        # a value: no gradients unless a trainer asks for them (train_sae)
        self.W_enc = nn.Parameter(W_enc.detach().clone(), requires_grad=False)
        self.b_enc = nn.Parameter(b_enc.detach().clone(), requires_grad=False)
        self.W_dec = nn.Parameter(W_dec.detach().clone(), requires_grad=False)
        self.b_dec = nn.Parameter(b_dec.detach().clone(), requires_grad=False)
        self.threshold = nn.Parameter(threshold.detach().clone(), requires_grad=False) if threshold is not None else None
        self.architecture = architecture
        self.k = int(k) if architecture == "topk" else None
        self.apply_b_dec_to_input = bool(apply_b_dec_to_input)
        self.rescale_acts_by_decoder_norm = bool(rescale_acts_by_decoder_norm) and architecture == "topk"
        self.point, self.position = point, position
        self.meta: dict = dict(meta or {})

    # ------------------------------------------------------------------ shape
    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    def extra_repr(self) -> str:
        k = f", k={self.k}" if self.k is not None else ""
        where = f", point={self.point!r}" if self.point else ""
        return f"{self.architecture}, d_in={self.d_in}, d_sae={self.d_sae}{k}{where}"

    # ------------------------------------------------------------------ maths
    def pre_activations(self, x: Tensor) -> Tensor:
        """``(x - b_dec) W_enc + b_enc`` (``[..., d_sae]``), before the activation function."""
        x = x.to(self.W_enc.dtype)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        pre = x @ self.W_enc + self.b_enc
        if self.rescale_acts_by_decoder_norm:
            pre = pre * self.W_dec.norm(dim=-1)
        return pre

    def activate(self, pre: Tensor) -> Tensor:
        """The architecture's activation function on pre-activations."""
        if self.architecture == "topk":
            vals, idx = pre.topk(self.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter(-1, idx, vals.relu())
        if self.architecture == "jumprelu":
            return pre.relu() * (pre > self.threshold).to(pre.dtype)
        return pre.relu()

    def encode(self, x: Tensor) -> Tensor:
        """Latent activations ``[..., d_sae]`` of activations ``x [..., d_in]``."""
        self._check_width(x)
        return self.activate(self.pre_activations(x))

    def decode(self, z: Tensor) -> Tensor:
        """Reconstruction ``[..., d_in]`` from latents ``z [..., d_sae]``."""
        z = z.to(self.W_dec.dtype)
        if self.rescale_acts_by_decoder_norm:
            z = z / self.W_dec.norm(dim=-1)
        return z @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction ``decode(encode(x))`` in ``x``'s dtype."""
        return self.decode(self.encode(x)).to(x.dtype)

    def directions(self, latents: Any = None) -> Tensor:
        """Unit decoder directions ``[m, d_in]`` of ``latents`` (all when None): what a latent writes."""
        W = self.W_dec if latents is None else self.W_dec[torch.as_tensor(latents, dtype=torch.long)]
        return W / W.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def _check_width(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.shape[-1:] != (self.d_in,):
            shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise InputError(f"this SAE reads activations of width {self.d_in}, got {shape}",
                             fix=f"pass activations of the point it was trained on ({self.point or 'd_in wide'})")

    # ------------------------------------------------------------------ building
    @classmethod
    def random(cls, d_in: int, d_sae: int, architecture: str = "topk", k: int | None = None, seed: int = 0,
               **kwargs: Any) -> "SAE":
        """A freshly initialised SAE: unit-norm random decoder rows, ``W_enc = W_dec^T``, zero biases."""
        d_in, d_sae = (check_int(v, name, low=1, example=64) for name, v in (("d_in", d_in), ("d_sae", d_sae)))
        if architecture not in TRAINABLE:
            raise InputError(f"cannot initialise a {plain(architecture)!r} SAE here", fix=f"use one of {TRAINABLE}")
        g = torch.Generator().manual_seed(int(seed))
        W_dec = torch.randn(d_sae, d_in, generator=g)
        W_dec /= W_dec.norm(dim=-1, keepdim=True)
        return cls(W_dec.T.contiguous(), torch.zeros(d_sae), W_dec, torch.zeros(d_in), architecture=architecture,
                   k=k, **kwargs)

    def config(self) -> dict:
        """The sae-lens (6.x) ``cfg.json`` of this SAE (probekit's fields under ``metadata``)."""
        cfg: dict = {"architecture": self.architecture, "d_in": self.d_in, "d_sae": self.d_sae,
                     "dtype": str(self.W_enc.dtype).replace("torch.", ""), "device": "cpu",
                     "apply_b_dec_to_input": self.apply_b_dec_to_input, "normalize_activations": "none",
                     "reshape_activations": "none"}
        if self.architecture == "topk":
            cfg.update(k=self.k, rescale_acts_by_decoder_norm=self.rescale_acts_by_decoder_norm)
        cfg["metadata"] = {"sae_lens_version": "6.0.0", "sae_lens_training_version": None,
                           "hook_name": self.point, "probekit_version": __version__,
                           "probekit_point": self.point, "probekit_position": self.position,
                           "probekit_meta": self.meta}
        return cfg

    def tensors(self) -> dict[str, Tensor]:
        """The weights by their sae-lens names, detached and contiguous."""
        out = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
        if self.threshold is not None:
            out["threshold"] = self.threshold
        return {k: v.detach().contiguous() for k, v in out.items()}

    def save(self, directory: Any) -> Any:
        """Write the SAE in the sae-lens on-disk format (``cfg.json`` + ``sae_weights.safetensors``), atomically."""
        return save_sae(self, directory)

    @classmethod
    def load(cls, directory: Any, point: str | None = None, position: str | None = None) -> "SAE":
        """Read an SAE from a sae-lens directory, every field and tensor checked (:func:`probekit.sae.load_sae`)."""
        return load_sae(directory, point=point, position=position)


def load_sae(directory: str | os.PathLike, point: str | None = None, position: str | None = None,
             dtype: torch.dtype | None = None) -> SAE:
    """Read an SAE directory in sae-lens's format (or eai-sparsify's TopK), every field and tensor checked
    (:mod:`probekit.sae.files`).

    ``point`` / ``position`` say where it reads in a probekit model (default: what the file records,
    or the point its TransformerLens ``hook_name`` translates to). ``dtype``: cast the weights
    (default: as stored).
    """
    return SAE(**read_sae(directory, point=point, position=position, dtype=dtype))


def save_sae(sae: SAE, directory: str | os.PathLike) -> Path:
    """Write ``sae`` as ``directory/cfg.json`` + ``directory/sae_weights.safetensors`` (sae-lens 6.x's
    format, loadable by ``sae_lens.SAE.load_from_disk``), atomically, with probekit's checksum; returns the directory."""
    if not isinstance(sae, SAE):
        raise InputError(f"sae is a {type(sae).__name__}", fix="pass a probekit.sae.SAE")
    return write_sae(sae.config(), sae.tensors(), directory)
