"""The leakage table: probes and MI on the residual stream and on the top-k output logits, in one tidy frame.

One row per (point, position, source). ``source`` is ``"residual"`` for hidden states and
``"logits-topk"`` for the same probes fed only what the model outputs: its top-k next-token
log-probabilities and which tokens they are (cf. Apple, "What do your logits know?"). A user
compares the two to see how much of what leaks inside also leaks from the output.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import InputError
from ..hooks.coerce import as_store
from ..hooks.points import topk_points
from ..hooks.store import ActivationStore
from ._data import encode_groups, encode_labels, make_folds
from .layers import probe_layers
from .significance import add_verdicts

__all__ = ["leakage", "topk_features", "output_features", "has_outputs", "check_labels"]


def check_labels(labels: Any, n: int, groups: Any = None, cv: int = 5, seed: int = 0) -> None:
    """Raise the probes' LabelError/InputError now, before any activation is computed."""
    codes, _ = encode_labels(labels, n)
    make_folds(codes, encode_groups(groups, n) if groups is not None else None, cv=cv, seed=seed)


def topk_features(logits: torch.Tensor, k: int = 10, ids: torch.Tensor | None = None) -> torch.Tensor:
    """Features from the top-k of each next-token distribution: the k sorted log-probabilities,
    plus, over the union of tokens that ever appear in a top-k, each token's log-probability
    where it is in the sample's top-k and the sample's k-th log-probability elsewhere (a floor:
    the output reveals only that the token ranked lower).

    ``logits``: ``[n, vocab]`` -> ``[n, k + u]`` with u the size of the union. With ``ids``, what
    ``collect(..., logits_topk=K)`` stored instead (K >= k): ``logits`` the ``[n, K]`` sorted top-K
    log-probabilities (``"logits.topk"``) and ``ids`` their token ids (``"logits.topk_ids"``); their
    first k are the top k, so the features are the same numbers.
    """
    if ids is None:
        vals, ids = torch.log_softmax(logits.float(), -1).topk(k, dim=-1)
    else:
        if ids.shape != logits.shape or logits.dim() != 2:
            raise InputError(f"top-k log-probabilities {tuple(logits.shape)} and token ids {tuple(ids.shape)} differ",
                             fix="pass the logits.topk and logits.topk_ids points of one store, [n, K] each")
        if k > logits.shape[1]:
            raise InputError(f"top-{k} features from a store that kept the top {logits.shape[1]} only",
                             fix=f"use k <= {logits.shape[1]}, or collect with logits_topk >= {k}")
        vals, ids = logits[:, :k].float(), ids[:, :k].contiguous()
    union = torch.unique(ids)
    floor = vals[:, -1:].expand(-1, union.numel()).clone()
    # position of each top-k id inside the union
    col = torch.searchsorted(union, ids)
    floor.scatter_(1, col, vals)
    return torch.cat([vals, floor], dim=1)


def output_features(store: ActivationStore, k: int, position: int, logits_point: str = "logits") -> torch.Tensor:
    """:func:`topk_features` at one position of a store: from the full logits when it holds them, else
    from the top-k points ``collect(..., logits_topk=K)`` stored; one position read at a time."""
    if logits_point in store:
        return topk_features(store.read(logits_point, position), k)
    vals, ids = topk_points(logits_point)
    return topk_features(store.read(vals, position), k, ids=store.read(ids, position))


def has_outputs(points: Sequence[str], logits_point: str = "logits") -> bool:
    """Whether ``points`` hold the output distribution: the full logits or their stored top-k."""
    return logits_point in points or all(p in points for p in topk_points(logits_point))


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
        acts: an ActivationStore (or its directory) or ``{point: Tensor[n, d] | [n, p, d]}``; a
            ``logits`` point (full logits at the same positions), or the ``logits.topk`` and
            ``logits.topk_ids`` points ``collect(..., logits_topk=K)`` keeps instead (K >= topk), is
            probed through :func:`topk_features` only.
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
    in_memory = isinstance(acts, (Mapping, torch.Tensor, np.ndarray))
    store = as_store(acts)
    outputs = (logits_point, *topk_points(logits_point))
    points = [p for p in store.points if points is None or p in points]
    if not points:
        raise InputError("no activations to probe", fix="collect some points first")
    frames = []
    by_pos: dict[tuple, list[str]] = {}
    for p in points:
        if p not in outputs:
            by_pos.setdefault(tuple(store.positions(p)), []).append(p)
    for pos, group in by_pos.items():
        # in memory: the tensors themselves (checked in full before fitting, as before); a store,
        # maybe on disk: a view of the group, read point by point as the probes get to each
        given = {p: store[p] for p in group} if in_memory else store.select(group)
        frames.append(probe_layers(given, labels, groups, cv=cv, seed=seed, n_boot=n_boot,
                                   positions=(list(pos) or None) if in_memory else None, progress=progress,
                                   **probe_kwargs).assign(source="residual"))
    if topk and has_outputs(points, logits_point):
        names = store.positions(logits_point if logits_point in points else outputs[1]) or ["0"]
        feats = {f"{logits_point}@{nm}": output_features(store, topk, j, logits_point) for j, nm in enumerate(names)}
        out = probe_layers(feats, labels, groups, cv=cv, seed=seed, n_boot=n_boot, progress=progress, **probe_kwargs)
        out["point"] = logits_point
        out["position"] = list(names)
        out["kind"] = "logits"
        frames.append(out.assign(source="logits-topk"))
    table = pd.concat(frames, ignore_index=True)
    # 2-D points carry their one position name in the store; lm.embed sits before layer 0
    single = {p: store.positions(p)[0] for p in points if len(store.positions(p)) == 1}
    table["position"] = [single.get(pt, pos) if pos is None else pos for pt, pos in zip(table.point, table.position)]
    table.loc[table.point == "lm.embed", "layer"] = -1.0
    if lens_targets is not None and len(lens_targets):
        agg = lens_targets.groupby(["point", "position"]).agg(
            target_prob=("prob", "mean"), target_prob_lo=("prob_lo", "mean"), target_prob_hi=("prob_hi", "mean"),
            target_rank=("rank_median", "median")).reset_index()
        table = table.merge(agg, on=["point", "position"], how="left")
    # forward order of the points (vision tower, projector, lm.embed, layers, ...), outputs last
    rank = {p: i for i, p in enumerate(points)}
    rank.setdefault(logits_point, len(points))  # stored as its top-k points
    table["_src"] = table.source.map({"residual": 0, "logits-topk": 1})
    table["_pt"] = table.point.map(rank)
    table = table.sort_values(["_src", "_pt", "position"], kind="stable").drop(columns=["_src", "_pt"])
    # one correction over every row (residual and output, all positions), not per probe_layers call
    return add_verdicts(table.reset_index(drop=True))
