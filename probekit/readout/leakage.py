"""The leakage table: probes and MI on the residual stream and on the top-k output logits, in one tidy frame.

One row per (point, position, source). ``source`` is ``"residual"`` for hidden states and
``"logits-topk"`` for the same probes fed only what the model outputs: its top-k next-token
log-probabilities and which tokens they are (cf. Apple, "What do your logits know?"). A user
compares the two to see how much of what leaks inside also leaks from the output.
"""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd
import torch

from ..errors import InputError
from ._data import encode_groups, encode_labels, make_folds
from .layers import probe_layers
from .significance import add_verdicts

__all__ = ["leakage", "topk_features", "check_labels"]


def check_labels(labels: Any, n: int, groups: Any = None, cv: int = 5, seed: int = 0) -> None:
    """Raise the probes' LabelError/InputError now, before any activation is computed."""
    codes, _ = encode_labels(labels, n)
    make_folds(codes, encode_groups(groups, n) if groups is not None else None, cv=cv, seed=seed)


def topk_features(logits: torch.Tensor, k: int = 10) -> torch.Tensor:
    """Features from the top-k of each next-token distribution: the k sorted log-probabilities,
    plus, over the union of tokens that ever appear in a top-k, each token's log-probability
    where it is in the sample's top-k and the sample's k-th log-probability elsewhere (a floor:
    the output reveals only that the token ranked lower).

    ``logits``: ``[n, vocab]`` -> ``[n, k + u]`` with u the size of the union.
    """
    logp = torch.log_softmax(logits.float(), -1)
    vals, ids = logp.topk(k, dim=-1)
    union = torch.unique(ids)
    floor = vals[:, -1:].expand(-1, union.numel()).clone()
    # position of each top-k id inside the union
    col = torch.searchsorted(union, ids)
    floor.scatter_(1, col, vals)
    return torch.cat([vals, floor], dim=1)


def leakage(
    acts: Any,
    labels: Any,
    groups: Any = None,
    *,
    cv: int = 5,
    seed: int = 0,
    topk: int | None = 10,
    logits_point: str = "logits",
    lens_targets: pd.DataFrame | None = None,
    points: Sequence[str] | None = None,
    n_boot: int = 1000,
    progress: bool = True,
    **probe_kwargs: Any,
) -> pd.DataFrame:
    """Probe accuracy and MI (with CIs, permutation floor and control task) per point and position.

    Args:
        acts: an ActivationStore or ``{point: Tensor[n, d] | [n, p, d]}``; a ``logits`` point
            (full logits at the same positions) is probed through :func:`topk_features` only.
        labels, groups, cv, seed, n_boot: as in :func:`probekit.readout.probes.probe_layers`.
        topk: k for the output-only probes (None: leave them out).
        points: probe only these points of ``acts`` (default: all).
        lens_targets: optional :meth:`LogitLens.target_ranks` frame; its per-(point, position)
            mean probability and median rank of the targets' tokens are joined as
            ``target_prob``, ``target_prob_lo``, ``target_prob_hi``, ``target_rank``.

    Returns:
        A DataFrame with the columns of ``probe_layers`` plus ``source`` (``"residual"`` or
        ``"logits-topk"``), sorted by source, layer and position.

    Example:
        >>> import torch
        >>> y = torch.arange(120) % 2
        >>> acts = {"lm.0.resid": torch.randn(120, 8) + 2 * y[:, None], "logits": torch.randn(120, 50)}
        >>> t = leakage(acts, y, n_boot=100, progress=False, topk=5)
        >>> sorted(t.source.unique())
        ['logits-topk', 'residual']
    """
    stored = list(acts.points) if hasattr(acts, "points") else list(acts)
    points = [p for p in stored if points is None or p in points]
    if not points:
        raise InputError("no activations to probe", fix="collect some points first")
    resid = {p: acts[p] for p in points if p != logits_point}
    pos_of = (lambda p: acts.positions(p)) if hasattr(acts, "positions") else (lambda p: None)
    frames = []
    if resid:
        by_pos: dict[tuple, dict] = {}
        for p, x in resid.items():
            by_pos.setdefault(tuple(pos_of(p) or ()), {})[p] = x
        for pos, group in by_pos.items():
            frames.append(probe_layers(group, labels, groups, cv=cv, seed=seed, n_boot=n_boot,
                                       positions=list(pos) or None, progress=progress, **probe_kwargs)
                          .assign(source="residual"))
    if topk and logits_point in points:
        lg = acts[logits_point]
        names = pos_of(logits_point) or ([str(j) for j in range(lg.shape[1])] if lg.dim() == 3 else ["0"])
        lg3 = lg if lg.dim() == 3 else lg.unsqueeze(1)
        feats = {f"{logits_point}@{nm}": topk_features(lg3[:, j], topk) for j, nm in enumerate(names)}
        out = probe_layers(feats, labels, groups, cv=cv, seed=seed, n_boot=n_boot, progress=progress, **probe_kwargs)
        out["point"] = logits_point
        out["position"] = list(names)
        out["kind"] = "logits"
        frames.append(out.assign(source="logits-topk"))
    table = pd.concat(frames, ignore_index=True)
    # 2-D points carry their one position name in the store; lm.embed sits before layer 0
    single = {p: pos_of(p)[0] for p in points if pos_of(p) and len(pos_of(p)) == 1}
    table["position"] = [single.get(pt, pos) if pos is None else pos for pt, pos in zip(table.point, table.position)]
    table.loc[table.point == "lm.embed", "layer"] = -1.0
    if lens_targets is not None and len(lens_targets):
        agg = lens_targets.groupby(["point", "position"]).agg(
            target_prob=("prob", "mean"), target_prob_lo=("prob_lo", "mean"), target_prob_hi=("prob_hi", "mean"),
            target_rank=("rank_median", "median")).reset_index()
        table = table.merge(agg, on=["point", "position"], how="left")
    # forward order of the points (vision tower, projector, lm.embed, layers, ...), outputs last
    rank = {p: i for i, p in enumerate(points)}
    table["_src"] = table.source.map({"residual": 0, "logits-topk": 1})
    table["_pt"] = table.point.map(rank)
    table = table.sort_values(["_src", "_pt", "position"], kind="stable").drop(columns=["_src", "_pt"])
    # one correction over every row (residual and output, all positions), not per probe_layers call
    return add_verdicts(table.reset_index(drop=True))
