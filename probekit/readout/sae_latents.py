"""The SAE-latent readout: which latents of an SAE carry a label, per layer, with the one verdict.

:func:`sae_readout` encodes the stored activations of each SAE's point with the SAE and returns an
:class:`SAEReadout`:

- ``table``: one row per SAE (point) with the columns of every readout table
  (:data:`probekit.readout.table.COLUMNS`): a *sparse probe* on the latents, the ``"sparse"``
  scorer registered here (inside each training fold, the ``k`` latents with the largest ANOVA F on
  that fold's training rows, then the L2 logistic probe on them; the held-out fold never chooses),
  accuracy and MI with their CIs, control task, and the verdict of
  :mod:`probekit.readout.significance` (its permutation test runs on all the latents, so the
  verdict does not depend on the scorer), family-wise over the rows;
- ``latents``: one row per live latent (``fire_rate >= min_fire_rate``) of every SAE, its own
  one-feature probe with the same columns, CIs and verdict, corrected family-wise over *every*
  latent tested (so ranking them afterwards selects nothing the correction has not paid for);
  ranked by held-out accuracy, with ``fire_rate``, ``mean_act`` and each class's mean activation;
- ``top``: for the ``n_top`` best latents of each SAE, the rows (samples) where it fires most:
  the images the HTML report (:class:`probekit.report.sae_report.SAEReport`) shows as thumbnails.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import pandas as pd
import torch

from ..errors import InputError, check_int
from ._data import encode_labels
from ._solver import solve
from .scorers import HeldoutScores, Scorer, register_scorer
from .table import readout_table

__all__ = ["SparseProbeScorer", "SAEReadout", "sae_readout", "fold_f_scores"]


def fold_f_scores(X: torch.Tensor, codes: torch.Tensor, train: torch.Tensor, K: int) -> torch.Tensor:
    """ANOVA F of every feature on the training rows: ``X [P, n, d]``, ``codes [n]``, ``train [n]`` -> ``[P, d]``."""
    w = train.to(X.dtype)
    Y = torch.nn.functional.one_hot(codes, K).to(X.dtype) * w[:, None]  # [n, K]
    cnt = Y.sum(0).clamp_min(1)
    sums = torch.einsum("pnd,nk->pdk", X, Y)
    means = sums / cnt
    n_tr = w.sum()
    grand = sums.sum(-1) / n_tr
    between = (cnt * (means - grand[..., None]) ** 2).sum(-1) / max(K - 1, 1)
    total = torch.einsum("pnd,n->pd", X * X, w) - n_tr * grand ** 2
    within = (total - (cnt * (means - grand[..., None]) ** 2).sum(-1)) / (n_tr - K).clamp_min(1)
    return torch.where(between > 0, between / within.clamp_min(1e-12), torch.zeros_like(between))


@register_scorer("sparse")
class SparseProbeScorer(Scorer):
    """A k-sparse probe: per point, task and fold, the ``k`` features with the largest ANOVA F on that
    fold's training rows, then the L2 logistic probe (``options.C``) on those ``k`` only."""

    def __init__(self, k: int = 8):
        self.k = check_int(k, "k", low=1, fix="e.g. SparseProbeScorer(k=8)")

    def __repr__(self) -> str:
        return f"SparseProbeScorer(k={self.k})"

    def label(self, options):
        return f"sparse-{self.k}"

    def heldout(self, X, tasks, folds, n_classes, options, callback=None):
        P, n, d = X.shape
        T, cv = len(tasks), int(folds.max()) + 1
        k = min(self.k, d)
        f = torch.as_tensor(folds, device=X.device)
        sel, lab, wts = [], [], []
        for t in range(T):
            codes = torch.as_tensor(tasks[t], device=X.device)
            for g in range(cv):
                train = f != g
                idx = fold_f_scores(X, codes, train, n_classes).topk(k, dim=-1).indices  # [P, k]
                sel.append(torch.gather(X, 2, idx[:, None, :].expand(P, n, k)))
                lab.append(codes)
                wts.append(train.to(X.dtype))
        Xs = torch.stack(sel, 1).reshape(P * T * cv, n, k)
        labels = torch.stack(lab)[None].expand(P, T * cv, n).reshape(P * T * cv, 1, n)
        weights = torch.stack(wts)[None].expand(P, T * cv, n).reshape(P * T * cv, 1, n)
        res = solve(Xs, labels, weights, n_classes, options.C, max_iter=options.max_iter, tol=options.tol,
                    callback=callback)
        Kp = res.logits.shape[-1]
        Z = res.logits.view(P, T, cv, n, Kp)
        pick = f.view(1, 1, 1, n, 1).expand(P, T, 1, n, Kp)
        out = Z.gather(2, pick)[:, :, 0]
        return HeldoutScores(out.double().cpu().numpy(), res.n_iter.view(P, T, cv).cpu().numpy(),
                             res.converged.view(P, T, cv).cpu().numpy())


@dataclass
class SAEReadout:
    """What :func:`sae_readout` returns (see the module docstring)."""

    table: pd.DataFrame
    latents: pd.DataFrame
    top: dict = field(default_factory=dict)  # (point, latent) -> row indices, strongest first
    stats: dict = field(default_factory=dict)  # point -> sae_stats (without per-latent arrays)
    settings: dict = field(default_factory=dict)

    def detected(self) -> pd.DataFrame:
        """The latents whose read-out the verdict detects, best first."""
        return self.latents[self.latents.leaks].reset_index(drop=True)

    def summary(self) -> str:
        from .significance import null_phrase

        lines = []
        for r in self.table.itertuples():
            lat = self.latents[self.latents.point == r.point]
            hit = lat[lat.leaks]
            head = (f"{r.point} @ {r.position}: sparse probe on {self.settings.get('k')} of {r.d_sae} latents "
                    f"{r.accuracy:.2f} [{r.accuracy_lo:.2f}, {r.accuracy_hi:.2f}] (chance {r.chance:.2f}), "
                    + ("detected" if r.leaks else null_phrase(self.table.iloc[[r.Index]])))
            best = ", ".join(f"#{int(x.latent)} {x.accuracy:.2f}" for x in hit.head(5).itertuples())
            lines.append(head + (f"; {len(hit)} of {len(lat)} live latents detected (best {best})" if len(hit)
                                 else f"; no single latent detected among {len(lat)} live ones"))
        return "\n".join(lines)


def _as_list(saes: Any) -> list:
    from ..sae.model import SAE

    items = list(saes.values()) if isinstance(saes, dict) else (list(saes) if isinstance(saes, (list, tuple)) else [saes])
    bad = [type(s).__name__ for s in items if not isinstance(s, SAE)]
    if not items or bad:
        raise InputError(f"saes must be probekit SAEs, got {bad or 'nothing'}",
                         fix="pass an SAE, a list of them, or {point: SAE} (probekit.sae.load_sae / train_sae)")
    return items


def sae_readout(store: Any, saes: Any, labels: Any, groups: Any = None, *, k: int = 8, cv: int = 5, seed: int = 0,
                C: float = 1.0, n_boot: int = 1000, n_top: int = 8, n_images: int = 8, min_fire_rate: float = 0.01,
                positions: Sequence[str] | None = None, progress: bool = False, **kwargs: Any) -> SAEReadout:
    """Encode ``store`` with each SAE and read ``labels`` off the latents (module docstring).

    ``saes``: one :class:`~probekit.sae.SAE`, a list, or ``{point: SAE}``; each reads its own
    ``point`` at its ``position`` (``positions=[...]``, one per SAE, overrides). ``groups``, ``cv``,
    ``seed``, ``C``, ``n_boot`` and other keywords are those of :func:`probekit.readout.probe_layers`.
    """
    from ..sae.stats import encode_store, sae_stats

    items = _as_list(saes)
    if positions is not None and len(positions) != len(items):
        raise InputError(f"{len(positions)} positions for {len(items)} SAEs", fix="pass one position per SAE")
    codes, classes = encode_labels(labels)
    opts = dict(groups=groups, cv=cv, seed=seed, C=C, n_boot=n_boot, progress=progress, **kwargs)
    layer_acts, latent_acts, meta, stats = {}, {}, {}, {}
    for i, sae in enumerate(items):
        pos = positions[i] if positions is not None else sae.position
        z = encode_store(sae, store, position=pos)
        if z.shape[0] != len(codes):
            raise InputError(f"{len(codes)} labels for {z.shape[0]} stored samples", fix="pass one label per sample")
        if sae.point is None:
            raise InputError(f"SAE {i} does not record the point it reads", fix="set sae.point (or load_sae(..., point=))")
        key = sae.point if [s.point for s in items].count(sae.point) == 1 else f"{sae.point}@{pos}"
        layer_acts[key] = z
        st = sae_stats(sae, store, position=pos)
        stats[key] = {a: b for a, b in st.items() if a not in ("fire_rate", "mean_act")}
        rate = (z > 0).float().mean(0)
        live = torch.nonzero(rate >= min_fire_rate).squeeze(1).tolist()
        for j in live:
            latent_acts[f"{key}#{j}"] = z[:, j:j + 1]
        meta[key] = (sae.point, str(pos), sae.d_sae, z, rate)
    table = readout_table(layer_acts, labels, estimator=SparseProbeScorer(k), **opts)
    table["position"] = [meta[p][1] for p in table.point]
    table["d_sae"] = [meta[p][2] for p in table.point]
    table["point"] = [meta[p][0] for p in table.point]
    table["features"] = f"SAE latents, sparse probe (k={k})"
    if latent_acts:
        lat = readout_table(latent_acts, labels, **opts)
    else:
        lat = table.iloc[:0].copy()
    keys = [p.rsplit("#", 1) for p in lat.point]
    lat["latent"] = [int(j) for _, j in keys]
    lat["position"] = [meta[key][1] for key, _ in keys]
    lat["fire_rate"] = [float(meta[key][4][int(j)]) for key, j in keys]
    z_of = {key: meta[key][3] for key, _ in keys}
    for c_i, c in enumerate(classes):
        rows = torch.as_tensor(codes == c_i)
        lat[f"mean_act[{c}]"] = [float(z_of[key][rows, int(j)].mean()) for key, j in keys]
    lat["mean_act"] = [float(z_of[key][:, int(j)][z_of[key][:, int(j)] > 0].mean()) for key, j in keys]
    lat["point"] = [meta[key][0] for key, _ in keys]
    lat = lat.sort_values(["point", "accuracy"], ascending=[True, False], kind="stable").reset_index(drop=True)
    lat["rank"] = lat.groupby("point").cumcount() + 1
    top = {}
    for key, (point, _, _, z, _) in meta.items():
        for r in lat[(lat.point == point)].head(n_top).itertuples():
            col = z[:, int(r.latent)]
            order = torch.argsort(col, descending=True, stable=True)[:n_images]
            top[(point, int(r.latent))] = [int(i) for i in order if col[i] > 0]
    settings = {"k": k, "cv": cv, "seed": seed, "C": C, "n_boot": n_boot, "min_fire_rate": min_fire_rate,
                "n_top": n_top, "classes": [str(c) for c in classes]}
    return SAEReadout(table, lat, top, stats, settings)
