"""`Direction`: what to remove or add at each hook point (a value: it never runs a model).

Per point a Direction holds an orthonormal basis ``[k, d]`` (``k = 1`` is a unit vector) and,
for LEACE, an affine eraser ``x -> x - left @ right @ (x - mean)`` (an oblique projection;
Belrose et al. 2023, "LEACE: Perfect linear concept erasure in closed form"). A basis stored
under the key ``"*"`` applies to every point (a single vector for the whole residual stream).
The constructors fit on activations given to them (:mod:`probekit.steering.fit`); fitting
layer by layer with the model running is :func:`probekit.steering.leace_sequential`.

Files are one ``.safetensors`` file (tensors ``{point}/basis``, ``{point}/mean``,
``{point}/left``, ``{point}/right``) whose header holds the JSON metadata: model name and
width, method, points, positions it was fitted on, n, and what it was fitted on: ``fit_images``
(one content hash per image, :func:`probekit.data.images.image_hashes`; from ``leace_sequential``
or a store made by ``collect``) and ``fit_labels`` (a hash of the labels), so that
:func:`probekit.steering.evaluate` can refuse to grade a direction on its own fitting images.
Nothing is pickled.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from ..errors import InputError, StoreError, UnknownPointError
from . import direction_file as _file, fit as _fit
from .basis import Eraser, orthonormal
from .inputs import ANY, _coerce

# names these helpers had here before steering/fit.py, basis.py and inputs.py held them
from .fit import concept as _concept, leace_fit  # noqa: E402,F401
from .inputs import as_activations as _as_dict, codes as _codes, labels_digest, rows as _rows  # noqa: F401

if TYPE_CHECKING:  # the model layer is only needed for type hints
    from ..models.adapter import Model

__all__ = ["Direction", "Eraser", "ANY"]

FORMAT, VERSION = _file.FORMAT, _file.VERSION


class Direction:
    """Per hook point, a unit vector or an orthonormal basis ``[k, d]``; for LEACE also an eraser.

    A value: build one with a constructor (:meth:`from_means`, :meth:`from_probe`, :meth:`from_pca`,
    :meth:`leace`, :meth:`from_vectors`; LEACE fitted layer by layer with the model running is
    :func:`probekit.steering.leace_sequential`), use it with
    :func:`probekit.steering.ablate`, :func:`~probekit.steering.steer` or
    :func:`~probekit.steering.orthogonalize`, keep it with :meth:`save` / :meth:`load`.

    Example:
        >>> import torch
        >>> y = torch.arange(100) % 2
        >>> acts = {"lm.0.resid": torch.randn(100, 8) + 3 * y[:, None] * torch.eye(8)[0]}
        >>> d = Direction.from_means(acts, y)
        >>> d.points, round(float(d.vector("lm.0.resid")[0]), 1)
        (['lm.0.resid'], 1.0)
    """

    def __init__(self, bases: Mapping[str, Tensor], *, erasers: Mapping[str, Eraser] | None = None,
                 method: str = "custom", meta: Mapping[str, Any] | None = None):
        if not bases:
            raise InputError("a Direction needs at least one point", fix="pass {point: Tensor[d] or Tensor[k, d]}")
        self.bases: dict[str, Tensor] = {}
        widths = set()
        for p, b in bases.items():
            b = _coerce(b, f"direction at {p!r}", ndim=(1, 2), floating=False,
                        fix="pass a finite Tensor[d] or Tensor[k, d]")
            if b.ndim == 1:
                b = b[None]
            if b.shape[0] < 1:
                raise InputError(f"direction at {p!r} has shape {tuple(b.shape)}",
                                 fix="pass a finite Tensor[d] or Tensor[k, d]")
            self.bases[p] = b
            widths.add(b.shape[1])
        self.erasers: dict[str, Eraser] = dict(erasers or {})
        widths |= {e.mean.shape[0] for e in self.erasers.values()}
        if len(widths) != 1:
            raise InputError(f"direction vectors have different widths {sorted(widths)}",
                             fix="build one Direction per model")
        self.d_model = widths.pop()
        self.method = method
        self.meta: dict[str, Any] = dict(meta or {})

    # ------------------------------------------------------------------ access
    @property
    def points(self) -> list[str]:
        """Points this direction has its own basis for (``["*"]`` for one shared basis)."""
        return list(self.bases)

    @property
    def shared(self) -> bool:
        return list(self.bases) == [ANY]

    def basis(self, point: str) -> Tensor:
        """Orthonormal ``[k, d]`` (float64) at ``point`` (the shared one for a ``"*"`` direction)."""
        if point in self.bases:
            return self.bases[point]
        if ANY in self.bases:
            return self.bases[ANY]
        raise UnknownPointError(f"direction ({self.method}) has no vector for point {point!r}",
                                fix=f"it has {self.points}; pass points= among those or refit")

    def vector(self, point: str) -> Tensor:
        """The unit vector ``[d]`` at ``point``; a subspace (k > 1) raises InputError."""
        b = self.basis(point)
        if b.shape[0] != 1:
            raise InputError(f"direction at {point!r} is a {b.shape[0]}-dimensional subspace, not a vector",
                             fix="steer along one basis row: Direction.from_vectors({p: d.basis(p)[0]})")
        return b[0]

    def eraser(self, point: str) -> Eraser | None:
        return self.erasers.get(point, self.erasers.get(ANY))

    @property
    def fit_images(self) -> frozenset[str] | None:
        """Content hashes of the images this direction was fitted on (None when unknown, e.g.
        fitted on bare tensors or built from given vectors)."""
        h = self.meta.get("fit_images")
        return None if h is None else frozenset(h)

    def __repr__(self) -> str:
        ks = sorted({b.shape[0] for b in self.bases.values()})
        return (f"Direction(method={self.method!r}, points={len(self.bases)}, d_model={self.d_model}, "
                f"k={ks[0] if len(ks) == 1 else ks}, leace={bool(self.erasers)})")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def _fitted(cls, parts: _fit.Fitted) -> "Direction":
        return cls(parts.bases, erasers=parts.erasers, method=parts.method, meta=parts.meta)

    @classmethod
    def from_vectors(cls, vectors: Mapping[str, Tensor] | Tensor, method: str = "custom",
                     meta: Mapping[str, Any] | None = None) -> "Direction":
        """Wrap given vectors: ``{point: Tensor[d] | Tensor[k, d]}`` or one ``Tensor[d]`` for every point.

        Each basis is orthonormalised (a single vector is normalised).
        """
        if isinstance(vectors, (Tensor, np.ndarray)):
            vectors = {ANY: vectors}
        bases = {}
        for p, v in vectors.items():
            v = _coerce(v, f"vector at {p!r}", ndim=(1, 2), floating=False, fix="pass a finite Tensor[d] or Tensor[k, d]")
            bases[p] = orthonormal(v[None] if v.ndim == 1 else v)
        return cls(bases, method=method, meta=meta)

    @classmethod
    def from_means(cls, acts: Any, labels: Any, points: str | Sequence[str] | None = None) -> "Direction":
        """Difference of class means per point, normalised (Arditi et al. 2024's refusal direction).

        Two classes: ``mean(last class) - mean(first class)`` in sorted label order, so the
        positive class (``True``, ``1``, the later name) projects higher. K classes: an
        orthonormal basis of ``mean_k - mean_0`` (k = 1..K-1). ``[n, p, d]`` activations pool
        the positions (each row one sample).
        """
        return cls._fitted(_fit.means(acts, labels, points))

    @classmethod
    def from_probe(cls, acts: Any, labels: Any = None, points: str | Sequence[str] | None = None,
                   C: float = 1.0) -> "Direction":
        """Weights of a logistic-regression probe per point, normalised.

        ``acts`` is either activations (then a :class:`~probekit.readout.probes.LinearProbe` is
        fitted per point on ``labels``) or ``{point: fitted probe}`` with a ``coef_`` in raw
        feature space (scikit-learn's ``LogisticRegression`` or probekit's ``LinearProbe``).
        Several classes give the orthonormal basis of the centred class weight rows.
        """
        return cls._fitted(_fit.probe(acts, labels, points, C))

    @classmethod
    def from_pca(cls, paired_differences: Any, negatives: Any = None,
                 points: str | Sequence[str] | None = None) -> "Direction":
        """First principal axis of paired differences (positive minus negative), per point.

        The axis is the top right singular vector of the *uncentred* difference matrix: it
        does not change when some pairs are given the other way round, and centring would
        remove the shared shift that is the signal (repeng's ``pca_diff`` shuffles pair order
        so its centring is harmless). Its sign is fixed so that positives project higher
        (mean difference along it > 0). With ``negatives`` the first argument holds the
        positives' activations and the differences are taken here.

        Example:
            >>> import torch
            >>> pos, neg = torch.randn(40, 6) + torch.eye(6)[2] * 4, torch.randn(40, 6)
            >>> d = Direction.from_pca({"lm.1.resid": pos}, {"lm.1.resid": neg})
            >>> int(d.vector("lm.1.resid").abs().argmax()), bool(d.vector("lm.1.resid")[2] > 0)
            (2, True)
        """
        return cls._fitted(_fit.pca(paired_differences, negatives, points))

    @classmethod
    def leace(cls, acts: Any, labels: Any, points: str | Sequence[str] | None = None,
              by_position: bool = True, tol: float = 1e-6, shrinkage: bool = False) -> "Direction":
        """LEACE eraser per point: the least-squares affine edit after which no linear classifier
        of ``labels`` beats a constant one (Belrose et al. 2023), fitted on the given data.

        ``[n, p, d]`` activations (several positions per sample) with ``by_position=True`` get
        one eraser per point that equalises the class means at *each* position (the concept is
        centred within positions), so it guards every probed position at once; with
        ``by_position=False`` the positions are pooled. Each point is fitted on its own data;
        to account for later layers re-deriving the concept from earlier, unedited ones use
        :func:`probekit.steering.leace_sequential`.

        The eraser comes from concept-erasure's ``LeaceFitter`` (streamed over row chunks in
        float64); ``tol`` drops whitened cross-covariance singular values below it, and
        ``shrinkage=True`` uses its shrunk covariance estimate (worth it when the number of
        rows is not much larger than the width).

        Example:
            >>> import torch
            >>> y = torch.arange(200) % 2
            >>> x = torch.randn(200, 5) + 2 * y[:, None].float()
            >>> e = Direction.leace({"lm.0.resid": x}, y).eraser("lm.0.resid")
            >>> xe = e(x.double())
            >>> bool((xe[y == 1].mean(0) - xe[y == 0].mean(0)).abs().max() < 1e-9)
            True
        """
        return cls._fitted(_fit.leace(acts, labels, points, by_position, tol, shrinkage))

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> None:
        """Write one ``.safetensors`` file; metadata goes to its JSON header (never pickled).

        The file is written to a temporary name and renamed; a full disk raises StoreError naming
        the bytes needed and leaves nothing. Its checksum lets :meth:`load` refuse a changed file.

        Example:
            >>> import tempfile, torch
            >>> d = Direction.from_vectors({"lm.0.resid": torch.ones(4)}, meta={"model": "m"})
            >>> f = tempfile.mkdtemp() + "/d.safetensors"
            >>> d.save(f); Direction.load(f).vector("lm.0.resid").tolist()
            [0.5, 0.5, 0.5, 0.5]
        """
        data = _file.to_bytes(self.bases, self.erasers, self.method, self.d_model, self.meta)
        _file.save(path, data)

    @classmethod
    def load(cls, path: str | os.PathLike, model: "Model | None" = None) -> "Direction":
        """Read a file written by :meth:`save`; with ``model``, check it has the same width.

        Every field, tensor shape, dtype and the checksum are checked first
        (:mod:`probekit.steering.direction_file`): a damaged or crafted file raises StoreError.
        """
        bases, erasers, method, meta = _file.read(path)
        d = cls(bases, erasers=erasers, method=method, meta=meta)
        if model is not None:
            d.check(model)
        return d

    def check(self, model: "Model", points: Sequence[str] | None = None) -> None:
        """Raise StoreError when the direction's width differs from the model's, UnknownPointError
        when it lacks one of ``points``."""
        if self.d_model != model.d_model:
            raise StoreError(
                f"direction has width {self.d_model} but {model.name} has d_model={model.d_model}",
                fix="use a direction fitted on this model (its metadata names the model it came from: "
                    f"{self.meta.get('model')!r})",
            )
        for p in points or []:
            self.basis(p)
