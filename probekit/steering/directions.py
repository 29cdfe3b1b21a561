"""`Direction`: what to remove or add at each hook point.

Per point a Direction holds an orthonormal basis ``[k, d]`` (``k = 1`` is a unit vector) and,
for LEACE, an affine eraser ``x -> x - left @ right @ (x - mean)`` (an oblique projection;
Belrose et al. 2023, "LEACE: Perfect linear concept erasure in closed form"). A basis stored
under the key ``"*"`` applies to every point (a single vector for the whole residual stream).

Files are one ``.safetensors`` file (tensors ``{point}/basis``, ``{point}/mean``,
``{point}/left``, ``{point}/right``) whose header holds the JSON metadata: model name and
width, method, points, positions it was fitted on, n, and what it was fitted on: ``fit_images``
(one content hash per image, :func:`probekit.data.images.image_hashes`; from ``leace_sequential``
or a store made by ``collect``) and ``fit_labels`` (a hash of the labels), so that
:func:`probekit.steering.evaluate` can refuse to grade a direction on its own fitting images.
Nothing is pickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError, LabelError, StoreError, UnknownPointError

if TYPE_CHECKING:  # the model layer is only needed for type hints and the sequential fitter
    from ..models.adapter import Model

__all__ = ["Direction", "Eraser", "ANY"]

ANY = "*"
FORMAT = "probekit.direction"
VERSION = 1


@dataclass
class Eraser:
    """LEACE's affine eraser at one point: ``x - (x - mean) @ right.T @ left.T``.

    ``left`` is ``[d, r]``, ``right`` ``[r, d]``, ``mean`` ``[d]``; ``left @ right`` is an
    oblique projection of rank r (r <= number of classes - 1, times groups when fitted per
    position). All float64 on the CPU; interventions cast them where they are used.
    """

    mean: Tensor
    left: Tensor
    right: Tensor

    def __call__(self, x: Tensor) -> Tensor:
        """Erase from ``x [..., d]`` (computed in float32 at least, returned in x's dtype)."""
        dt = torch.promote_types(x.dtype, torch.float32)
        m, left, right = (t.to(x.device, dt) for t in (self.mean, self.left, self.right))
        xx = x.to(dt)
        return (xx - ((xx - m) @ right.T) @ left.T).to(x.dtype)


# ---------------------------------------------------------------------------- inputs


def _as_dict(acts: Any, points: str | Sequence[str] | None) -> tuple[dict[str, Tensor], dict]:
    """{point: Tensor} from an ActivationStore, a mapping, or a bare tensor (key ``"*"``)."""
    meta: dict = {}
    if isinstance(acts, (Tensor, np.ndarray)):
        data = {ANY: torch.as_tensor(acts)}
    elif isinstance(acts, Mapping):
        data = dict(acts)
    elif hasattr(acts, "points") and hasattr(acts, "__getitem__"):  # ActivationStore, without importing hooks
        meta = dict(getattr(acts, "meta", {}) or {})
        data = {p: acts[p] for p in acts.points}
        hashes = meta.get("image_hashes")
        if "positions" in meta:
            meta = {"model": meta.get("model"), "positions": meta.get("positions")}
        if hashes is not None:  # the store's rows are these images: the direction is fitted on them
            meta["fit_images"] = list(hashes)
    else:
        raise InputError(
            f"activations are a {type(acts).__name__}",
            fix="pass an ActivationStore from probekit.collect, a {point: Tensor[n, d]} dict, or a Tensor[n, d]",
        )
    if not data:
        raise InputError("no activations given", fix="collect at least one point")
    if points is not None:
        wanted = [points] if isinstance(points, str) else list(points)
        missing = [p for p in wanted if p not in data]
        if missing:
            raise UnknownPointError(f"activations have no point(s) {missing}", fix=f"available: {list(data)}")
        data = {p: data[p] for p in wanted}
    out = {}
    for p, x in data.items():
        x = torch.as_tensor(x)
        if x.ndim not in (2, 3) or not x.is_floating_point():
            raise InputError(f"activations at {p!r} have shape {tuple(x.shape)} / dtype {x.dtype}",
                             fix="pass floating tensors [n, d] or [n, positions, d]")
        if not bool(torch.isfinite(x).all()):
            raise InputError(f"activations at {p!r} contain NaN or inf", fix="drop those samples")
        out[p] = x.detach().to("cpu", torch.float64)
    return out, meta


def labels_digest(labels: Any) -> str:
    """A short hash of a label sequence (recorded with a direction; equal labels, equal hash)."""
    if isinstance(labels, Tensor):
        labels = labels.detach().cpu().numpy()
    return hashlib.sha256(json.dumps([str(v) for v in np.asarray(labels).ravel()]).encode()).hexdigest()[:16]


def _codes(labels: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes 0..K-1 in sorted class order (the last class is the 'positive' one)."""
    if isinstance(labels, Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1 or len(arr) != n:
        raise LabelError(f"got labels of shape {arr.shape} for {n} samples", fix="pass one label per sample")
    if arr.dtype == object and any(v is None for v in arr):
        raise LabelError("labels contain None", fix="drop those samples or give them a label")
    classes, codes = np.unique(arr, return_inverse=True)
    if len(classes) < 2:
        raise LabelError(f"labels have a single class ({classes[0]!r})", fix="include samples of at least two classes")
    return codes.astype(np.int64), classes


def _rows(x: Tensor, codes: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
    """Flatten ``[n, p, d]`` to rows; returns (X [m, d], codes [m], position index [m])."""
    n = x.shape[0]
    c = torch.as_tensor(codes)
    if x.ndim == 2:
        return x, c, torch.zeros(n, dtype=torch.long)
    p = x.shape[1]
    return x.reshape(n * p, x.shape[2]), c.repeat_interleave(p), torch.arange(p).repeat(n)


def _orthonormal(vectors: Tensor, tol: float = 1e-6) -> Tensor:
    """Orthonormal basis ``[k, d]`` of the span of the rows, in the rows' order (Gram-Schmidt by QR)."""
    if vectors.shape[0] == 1:
        norm = float(vectors.norm())
        if norm == 0.0 or not math.isfinite(norm):
            raise InputError("the direction is zero (the classes have identical means)",
                             fix="check the labels and that the activations differ between classes")
        return vectors / norm
    q, r = torch.linalg.qr(vectors.T)
    keep = r.diagonal().abs() > tol * r.diagonal().abs().max()
    # QR keeps the first vector's sign only up to r's diagonal sign; fix it so rows point the same way
    q = q * torch.sign(r.diagonal())
    return q.T[keep].contiguous()


def leace_fit(X: Tensor, Z: Tensor, tol: float = 1e-6) -> Eraser:
    """LEACE closed form for data ``X [n, d]`` and concept ``Z [n, k]`` (float64 on the CPU).

    ``W = Sigma^{-1/2}`` (pseudo-inverse on the numerical rank), ``U`` an orthonormal basis of
    the column space of ``W Sigma_XZ``; the eraser is ``x - W^+ U U^T W (x - mean)``: after it
    ``Cov(x', Z) = 0`` on the fitted data, so no linear predictor of Z beats a constant one
    under any convex loss, and it is the smallest such edit in mean squared distance.
    """
    n = X.shape[0]
    mean = X.mean(0)
    Xc, Zc = X - mean, Z - Z.mean(0)
    sigma = Xc.T @ Xc / max(n - 1, 1)
    sxz = Xc.T @ Zc / max(n - 1, 1)
    L, V = torch.linalg.eigh(sigma)
    keep = L > L[-1].clamp_min(0) * sigma.shape[0] * torch.finfo(L.dtype).eps
    L = L.clamp_min(0)
    W = (V * torch.where(keep, L.rsqrt(), torch.zeros_like(L))) @ V.T
    W_inv = (V * torch.where(keep, L.sqrt(), torch.zeros_like(L))) @ V.T
    u, s, _ = torch.linalg.svd(W @ sxz, full_matrices=False)
    u = u[:, s > tol * max(float(s.max()), 1e-300)] if s.numel() else u[:, :0]
    return Eraser(mean=mean, left=W_inv @ u, right=u.T @ W)


def _concept(codes: Tensor, K: int, groups: Tensor | None) -> Tensor:
    """Concept matrix for LEACE: one-hot labels, centred within each group when groups are given.

    Centring within groups makes ``Cov(x', Z) = 0`` mean "equal class means inside every
    group" (e.g. every token position), not "equal to the pooled mean", so position
    information the model needs is left alone.
    """
    onehot = torch.nn.functional.one_hot(codes, K).to(torch.float64)
    if K == 2:
        onehot = onehot[:, 1:]
    if groups is None or int(groups.max()) == 0:
        return onehot
    cols = []
    for g in range(int(groups.max()) + 1):
        m = groups == g
        z = torch.zeros_like(onehot)
        z[m] = onehot[m] - onehot[m].mean(0)
        cols.append(z)
    return torch.cat(cols, 1)


# ---------------------------------------------------------------------------- Direction


class Direction:
    """Per hook point, a unit vector or an orthonormal basis ``[k, d]``; for LEACE also an eraser.

    Build one with a constructor (:meth:`from_means`, :meth:`from_probe`, :meth:`from_pca`,
    :meth:`leace`, :meth:`leace_sequential`, :meth:`from_vectors`), use it with
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
            b = torch.as_tensor(b).detach().to("cpu", torch.float64)
            if b.ndim == 1:
                b = b[None]
            if b.ndim != 2 or b.shape[0] < 1 or not bool(torch.isfinite(b).all()):
                raise InputError(f"direction at {p!r} has shape {tuple(b.shape)} or non-finite values",
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
    def from_vectors(cls, vectors: Mapping[str, Tensor] | Tensor, method: str = "custom",
                     meta: Mapping[str, Any] | None = None) -> "Direction":
        """Wrap given vectors: ``{point: Tensor[d] | Tensor[k, d]}`` or one ``Tensor[d]`` for every point.

        Each basis is orthonormalised (a single vector is normalised).
        """
        if isinstance(vectors, (Tensor, np.ndarray)):
            vectors = {ANY: torch.as_tensor(vectors)}
        bases = {}
        for p, v in vectors.items():
            v = torch.as_tensor(v).detach().to("cpu", torch.float64)
            bases[p] = _orthonormal(v[None] if v.ndim == 1 else v)
        return cls(bases, method=method, meta=meta)

    @classmethod
    def from_means(cls, acts: Any, labels: Any, points: str | Sequence[str] | None = None) -> "Direction":
        """Difference of class means per point, normalised (Arditi et al. 2024's refusal direction).

        Two classes: ``mean(last class) - mean(first class)`` in sorted label order, so the
        positive class (``True``, ``1``, the later name) projects higher. K classes: an
        orthonormal basis of ``mean_k - mean_0`` (k = 1..K-1). ``[n, p, d]`` activations pool
        the positions (each row one sample).
        """
        data, meta = _as_dict(acts, points)
        bases, n = {}, None
        for p, x in data.items():
            codes, classes = _codes(labels, x.shape[0])
            X, c, _ = _rows(x, codes)
            mus = torch.stack([X[c == k].mean(0) for k in range(len(classes))])
            bases[p] = _orthonormal(mus[1:] - mus[0])
            n = x.shape[0]
        return cls(bases, method="means", meta={**meta, "n": n, "classes": [str(k) for k in classes],
                                                "fit_labels": labels_digest(labels)})

    @classmethod
    def from_probe(cls, acts: Any, labels: Any = None, points: str | Sequence[str] | None = None,
                   C: float = 1.0) -> "Direction":
        """Weights of a logistic-regression probe per point, normalised.

        ``acts`` is either activations (then a :class:`~probekit.readout.probes.LinearProbe` is
        fitted per point on ``labels``) or ``{point: fitted probe}`` with a ``coef_`` in raw
        feature space (scikit-learn's ``LogisticRegression`` or probekit's ``LinearProbe``).
        Several classes give the orthonormal basis of the centred class weight rows.
        """
        probes: dict[str, Any] = {}
        meta: dict = {}
        if isinstance(acts, Mapping) and acts and all(hasattr(v, "coef_") for v in acts.values()):
            probes = dict(acts) if points is None else {p: acts[p] for p in ([points] if isinstance(points, str) else points)}
            n = None
        else:
            if labels is None:
                raise LabelError("from_probe needs labels to fit probes", fix="pass labels=..., or fitted probes")
            from ..readout.probes import LinearProbe  # readout is optional for the other constructors

            data, meta = _as_dict(acts, points)
            for p, x in data.items():
                codes, _ = _codes(labels, x.shape[0])
                X, c, _ = _rows(x, codes)
                probes[p] = LinearProbe(C=C, dtype="float64").fit(X.numpy(), c.numpy())
            n = next(iter(data.values())).shape[0]
            meta["fit_labels"] = labels_digest(labels)
        bases = {}
        for p, probe in probes.items():
            w = torch.as_tensor(np.asarray(probe.coef_), dtype=torch.float64)
            if w.ndim == 1:
                w = w[None]
            if w.shape[0] > 1:  # softmax weights are defined up to a shared row; centre them
                w = w - w.mean(0)
            bases[p] = _orthonormal(w)
        return cls(bases, method="probe", meta={**meta, "n": n, "C": C})

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
        data, meta = _as_dict(paired_differences, points)
        if negatives is not None:
            neg, neg_meta = _as_dict(negatives, list(data))
            if "fit_images" in meta or "fit_images" in neg_meta:  # both halves of the pairs were fitted on
                meta["fit_images"] = list(meta.get("fit_images", [])) + list(neg_meta.get("fit_images", []))
            for p in data:
                if neg[p].shape != data[p].shape:
                    raise InputError(f"positives {tuple(data[p].shape)} and negatives {tuple(neg[p].shape)} at {p!r} differ",
                                     fix="pass paired activations of equal shape")
                data[p] = data[p] - neg[p]
        bases = {}
        for p, x in data.items():
            X = x.reshape(-1, x.shape[-1])
            _, _, vh = torch.linalg.svd(X, full_matrices=False)
            v = vh[0]
            if float((X @ v).mean()) < 0:
                v = -v
            bases[p] = v[None]
        n = next(iter(data.values())).shape[0]
        return cls(bases, method="pca", meta={**meta, "n": n})

    @classmethod
    def leace(cls, acts: Any, labels: Any, points: str | Sequence[str] | None = None,
              by_position: bool = True, tol: float = 1e-6) -> "Direction":
        """LEACE eraser per point: the least-squares affine edit after which no linear classifier
        of ``labels`` beats a constant one (Belrose et al. 2023), fitted on the given data.

        ``[n, p, d]`` activations (several positions per sample) with ``by_position=True`` get
        one eraser per point that equalises the class means at *each* position (the concept is
        centred within positions), so it guards every probed position at once; with
        ``by_position=False`` the positions are pooled. Each point is fitted on its own data;
        to account for later layers re-deriving the concept from earlier, unedited ones use
        :meth:`leace_sequential`.

        Example:
            >>> import torch
            >>> y = torch.arange(200) % 2
            >>> x = torch.randn(200, 5) + 2 * y[:, None].float()
            >>> e = Direction.leace({"lm.0.resid": x}, y).eraser("lm.0.resid")
            >>> xe = e(x.double())
            >>> bool((xe[y == 1].mean(0) - xe[y == 0].mean(0)).abs().max() < 1e-9)
            True
        """
        data, meta = _as_dict(acts, points)
        bases, erasers, n = {}, {}, None
        for p, x in data.items():
            codes, classes = _codes(labels, x.shape[0])
            X, c, g = _rows(x, codes)
            e = leace_fit(X, _concept(c, len(classes), g if by_position else None), tol)
            erasers[p] = e
            bases[p] = _orthonormal(e.left.T) if e.left.shape[1] else torch.zeros(1, X.shape[1], dtype=torch.float64)
            n = x.shape[0]
        return cls(bases, erasers=erasers, method="leace",
                   meta={**meta, "n": n, "classes": [str(k) for k in classes], "by_position": by_position,
                         "fit_labels": labels_digest(labels)})

    @classmethod
    def leace_sequential(cls, model: "Model", images: Any, labels: Any, prompts: Any = None, *,
                         points: str | Sequence[str] = "lm.*.resid", positions: Any = "last",
                         apply_positions: Any = None, by_position: bool = True, batch_size: int = 16,
                         progress: bool = False) -> "Direction":
        """LEACE fitted layer by layer, each on activations recorded with the earlier erasers active.

        A later layer can re-derive an erased attribute from positions or components the
        earlier erasers did not touch; fitting point i on activations collected while the
        erasers of points < i are applied (at ``apply_positions``, None = every position)
        removes what it re-derives. Costs one pass over ``images`` per point.

        ``positions`` are the selectors the erasers are fitted on (a tuple fits one eraser per
        point that guards every one of them, see :meth:`leace`).
        """
        from ..data.images import check_images, image_hashes
        from ..hooks.collect import collect  # lazily: directions are usable without a model
        from .interventions import ablate

        names = model.resolve(points)
        images = check_images(images)
        fit_images = image_hashes(images)
        erasers: dict[str, Eraser] = {}
        bases: dict[str, Tensor] = {}
        n, pos_names = None, None
        for p in names:
            with contextlib.ExitStack() as stack:
                if erasers:  # the erasers fitted so far, active while point p is recorded
                    done = cls(dict(bases), erasers=dict(erasers), method="leace")
                    stack.enter_context(ablate(model, done, points=list(erasers), positions=apply_positions))
                store = collect(model, images, prompts, points=[p], positions=positions,
                                batch_size=batch_size, progress=progress)
            one = cls.leace(store, labels, points=[p], by_position=by_position)
            erasers[p], bases[p] = one.erasers[p], one.bases[p]
            n, pos_names = one.meta.get("n"), store.meta.get("positions")
        return cls(bases, erasers=erasers, method="leace_sequential",
                   meta={"model": model.name, "positions": pos_names, "n": n, "by_position": by_position,
                         "apply_positions": None if apply_positions is None else str(apply_positions),
                         "fit_images": fit_images, "fit_labels": labels_digest(labels)})

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> None:
        """Write one ``.safetensors`` file; metadata goes to its JSON header (never pickled).

        Example:
            >>> import tempfile, torch
            >>> d = Direction.from_vectors({"lm.0.resid": torch.ones(4)}, meta={"model": "m"})
            >>> f = tempfile.mkdtemp() + "/d.safetensors"
            >>> d.save(f); Direction.load(f).vector("lm.0.resid").tolist()
            [0.5, 0.5, 0.5, 0.5]
        """
        from safetensors.torch import save_file

        tensors = {f"{p}/basis": b.contiguous() for p, b in self.bases.items()}
        for p, e in self.erasers.items():
            tensors.update({f"{p}/mean": e.mean.contiguous(), f"{p}/left": e.left.contiguous(),
                            f"{p}/right": e.right.contiguous()})
        header = {"format": FORMAT, "version": VERSION, "method": self.method, "d_model": self.d_model,
                  "points": self.points, "erasers": list(self.erasers), "meta": self.meta}
        try:
            text = json.dumps(header, default=str)
        except (TypeError, ValueError) as exc:
            raise InputError(f"direction metadata is not JSON-serialisable: {exc}", fix="keep meta to plain values") from exc
        path = os.fspath(path)
        tmp = path + ".tmp"
        try:
            save_file(tensors, tmp, metadata={"probekit": text})
            os.replace(tmp, path)
        except OSError as exc:
            raise StoreError(f"cannot write direction to {path}: {exc}", fix="check the directory exists and is writable") from exc

    @classmethod
    def load(cls, path: str | os.PathLike, model: "Model | None" = None) -> "Direction":
        """Read a file written by :meth:`save`; with ``model``, check it has the same width."""
        from safetensors import safe_open
        from safetensors import SafetensorError

        try:
            with safe_open(os.fspath(path), framework="pt") as f:
                header = json.loads((f.metadata() or {}).get("probekit", "null"))
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except FileNotFoundError:
            raise StoreError(f"no direction file at {path}", fix="pass the path given to Direction.save") from None
        except (SafetensorError, OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StoreError(f"{path} is not a readable direction file: {exc}", fix="save it again with Direction.save") from exc
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise StoreError(f"{path} is not a probekit direction file", fix="save it with Direction.save")
        if int(header.get("version", 0)) > VERSION:
            raise StoreError(f"{path} has direction format version {header.get('version')}, this probekit reads up to {VERSION}",
                             fix="upgrade probekit")
        try:
            bases = {p: tensors[f"{p}/basis"] for p in header["points"]}
            erasers = {p: Eraser(tensors[f"{p}/mean"], tensors[f"{p}/left"], tensors[f"{p}/right"]) for p in header["erasers"]}
        except KeyError as exc:
            raise StoreError(f"{path} is missing tensor {exc}", fix="save it again with Direction.save") from None
        d = cls(bases, erasers=erasers, method=header.get("method", "custom"), meta=header.get("meta"))
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
