"""The leakage ladder (Apple, "What Do Your Logits Know?", arXiv 2604.09885).

The same cross-validated probes read one label from four kinds of input, from most to least
access: the residual stream per layer (``source="residual"``), the tuned-lens projection of
each layer (``"tuned-lens"``: the layer's translated hidden state decoded to next-token
log-probabilities over the whole vocabulary), and what the model outputs (``"logits"``), its
next-token log-probabilities cut to the top k for a sweep of k.

How the top-k are chosen (column ``k``):

- with ``answer_ids`` (e.g. the ``Yes``/``No`` tokens of a yes/no model), ``k == len(answer_ids)``
  is those fixed tokens' log-probabilities: Apple's k = 2 "Yes/No logits";
- any other k is the model's own top k per sample (:func:`probekit.readout.leakage.topk_features`:
  the k sorted log-probabilities plus which tokens they are);
- ``None`` ("full") is every token's log-probability.

The top-k rungs read the stored top K when ``collect(..., logits_topk=K)`` kept only that (K at
least the largest k; the first k of the top K are the top k, so the numbers are the same); the
full rung and the answer-token rung read every token's log-probability, so they need the full
``logits`` point (or a top K as large as the vocabulary). ``probekit.scan`` keeps the full logits
only when one of those two rungs is asked for.

Log-probabilities (log-softmax over the whole vocabulary) are what an API returns, so even the
fixed two carry the normaliser; that is part of what the output reveals.

Dimension-matched rungs (``matched=True``): the residual and tuned-lens rungs are the whole
``d``-dimensional state and a ``vocab``-dimensional projection of it, so "the tuned lens beats the
residual" can be a statement about how easy a probe's job is, not about what is there. For every
finite k of the sweep (below the vocabulary) two more rungs per layer sit beside the output's top
k: ``"residual-pca"``, the residual's first k principal components (fitted on all n samples
without their labels: an unsupervised rotation that sees no label, so no fold leaks one), and
``"tuned-lens-topk"``, the tuned lens's top k built exactly as the output's (the answer tokens'
log-probabilities at ``k == len(answer_ids)``).

:func:`ladder_verdict` turns the table into a decision with probekit's one verdict (a permutation
test over every row tested, family-wise corrected; :mod:`probekit.readout.significance`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import InputError, check_number, plain
from ..hooks.coerce import as_store
from ..hooks.points import Point, topk_points
from ..hooks.store import ActivationStore
from .layers import probe_layers
from .leakage import has_outputs, topk_features
from .lens import lens_points
from .significance import ALPHA, add_verdicts, null_phrase

__all__ = ["ladder_features", "leakage_ladder", "ladder_verdict", "check_ladder", "pca_features", "LADDER_K"]

LADDER_K: tuple = (2, 5, 10, 50, None)
"""The default k sweep (None: the full distribution)."""


def _at(store: ActivationStore, point: str, position: str | None) -> torch.Tensor:
    """``[n, d]`` activations of ``point`` at ``position`` (the only one if None), reading only that position."""
    if len(store.info(point)["shape"]) < 2:
        return store[point]
    names = store.positions(point)
    if position is None:
        if len(names) != 1:
            raise InputError(f"{point} holds positions {names}; say which one", fix=f"pass position={names[0]!r}")
        return store.read(point, 0)
    if position not in names:
        raise InputError(f"{point} has no position {position!r} (it has {names})", fix=f"use one of {names}")
    return store.read(point, names.index(position))


def _check_ks(ks: Sequence[int | None]) -> list[int | None]:
    ks = list(ks)
    bad = [k for k in ks if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1)]
    if not ks or bad:
        raise InputError(f"ks must be ints >= 1 or None (full), got {plain(ks)!r}", fix="e.g. ks=(2, 5, 10, 50, None)")
    return ks


def check_ladder(model: Any, ks: Sequence[int | None], answer_tokens: Sequence[str] | None,
                 positions: Sequence[str]) -> list[int] | None:
    """Check a scan's ladder settings before any forward pass; return the answer tokens' ids.

    Each answer word must be ONE token after a space (as it follows the prompt), e.g. ``"Yes"``.
    """
    _check_ks(ks)
    if "last" not in positions:
        raise InputError(f"the ladder reads the next-token output at 'last', but positions are {list(positions)}",
                         fix='add "last" to positions')
    if answer_tokens is None:
        return None
    if isinstance(answer_tokens, str) or not answer_tokens or not all(isinstance(a, str) and a for a in answer_tokens):
        raise InputError(f"answer_tokens must be a list of words, got {answer_tokens!r}", fix='e.g. ("Yes", "No")')
    tok = getattr(model.processor, "tokenizer", model.processor)
    ids = []
    for a in answer_tokens:
        got = tok(" " + a.strip(), add_special_tokens=False)["input_ids"]
        if len(got) != 1:
            raise InputError(f"answer word {a!r} is {len(got)} tokens for this tokenizer, not one",
                             fix="pass words that are single tokens after a space (e.g. 'Yes', 'No')")
        ids.append(int(got[0]))
    return ids


def ladder_features(
    acts: Any,
    *,
    lens: Any = None,
    ks: Sequence[int | None] = LADDER_K,
    answer_ids: Sequence[int] | None = None,
    position: str | None = None,
    logits_point: str = "logits",
    matched: bool = False,
) -> dict[tuple[str, str, float], torch.Tensor]:
    """Features per rung: ``{(source, point, k): Tensor[n, d]}`` (k NaN for the residual rungs).

    Args:
        acts: an ActivationStore or ``{point: Tensor}`` with ``lm.*.resid`` and ``logits`` (or the
            ``logits.topk`` / ``logits.topk_ids`` of ``collect(..., logits_topk=K)``: see the module docstring).
        lens: a :class:`~probekit.readout.lens.Lens` for the tuned-lens rung, read through its
            ``decode`` (a :class:`~probekit.readout.lens.LogitLens` with a ``tuned=`` TunedLens; any
            other lens decodes in its place); without ``lens`` that rung is left out.
        ks, answer_ids: see the module docstring.
        position: which stored position to read (None: the only one).
        matched: add the dimension-matched rungs (module docstring).
    """
    ks = _check_ks(ks)
    store = as_store(acts)
    resid = lens_points(store.points)
    if not resid:
        raise InputError("the store holds no lm.*.resid points", fix='collect points=["lm.*.resid", "logits"]')
    if not has_outputs(store.points, logits_point):
        raise InputError(f"the store holds no {logits_point!r} point", fix='collect points=["lm.*.resid", "logits"]')
    out: dict[tuple[str, str, float], torch.Tensor] = {}
    for p in resid:
        out[("residual", p, math.nan)] = _at(store, p, position).float()
    if lens is not None:
        for p in resid:
            h = _at(store, p, position)
            out[("tuned-lens", p, math.nan)] = torch.cat(
                [torch.log_softmax(lens.decode(c, p), -1).cpu() for c in h.split(512)])
    outputs = _Outputs(store, logits_point, position)
    out.update(_output_rungs(outputs, ks, answer_ids))
    if matched:
        out.update(_matched_rungs(out, resid, ks, answer_ids, outputs.vocab))
    return out


def pca_features(x: torch.Tensor, k: int) -> torch.Tensor:
    """``[n, k]``: ``x`` centred and projected on its first ``k`` principal directions (labels unused)."""
    xc = x.double() - x.double().mean(0)
    _, _, vh = torch.linalg.svd(xc, full_matrices=False)
    return (xc @ vh[:k].T).float()


def _matched_rungs(feats: dict, resid: Sequence[str], ks: Sequence[int | None], answer_ids: Sequence[int] | None,
                   vocab: int | None) -> dict[tuple[str, str, float], torch.Tensor]:
    ids = None if answer_ids is None else list(answer_ids)
    out = {}
    for k in ks:
        if k is None or (vocab is not None and int(k) >= vocab):
            continue
        k = int(k)
        for p in resid:
            x = feats[("residual", p, math.nan)]
            if k <= min(x.shape):
                out[("residual-pca", p, float(k))] = pca_features(x, k)
            lp = feats.get(("tuned-lens", p, math.nan))
            if lp is not None:
                out[("tuned-lens-topk", p, float(k))] = lp[:, ids] if ids is not None and k == len(ids) else topk_features(lp, k)
    return out


class _Outputs:
    """The output distribution at one position: the full logits, or the top K that ``collect(...,
    logits_topk=K)`` kept (then the rungs with k <= K, and with K = vocab every rung)."""

    def __init__(self, store: ActivationStore, logits_point: str, position: str | None):
        self.point = logits_point
        if logits_point in store:
            self.logits, self.top = _at(store, logits_point, position).float(), None
            self.vocab: int | None = int(self.logits.shape[-1])
        else:
            vals, ids = topk_points(logits_point)
            self.logits, self.top = None, (_at(store, vals, position), _at(store, ids, position))
            self.vocab = store.info(vals).get("vocab")  # None: a dict of top-k tensors does not say
        self._logp: torch.Tensor | None = None

    @property
    def kept(self) -> int | None:
        return None if self.top is None else int(self.top[0].shape[-1])

    def logp(self, rung: str) -> torch.Tensor:
        """Every token's log-probability ``[n, vocab]``."""
        if self._logp is None:
            if self.top is None:
                self._logp = torch.log_softmax(self.logits, -1)
            elif self.kept == self.vocab:  # every token kept, sorted: put them back in token order
                vals, ids = self.top
                self._logp = torch.empty_like(vals, dtype=torch.float32).scatter_(1, ids, vals.float())
            else:
                raise InputError(f"the {rung} rung needs every token's log-probability, but the store kept "
                                 f"the top {self.kept} of {self.point!r} only",
                                 fix=f"collect {self.point!r} without logits_topk, or leave that rung out of ks")
        return self._logp

    def topk(self, k: int) -> torch.Tensor:
        if self.top is None:
            return topk_features(self.logits, k)
        return topk_features(self.top[0], k, ids=self.top[1])


def _output_rungs(o: _Outputs, ks: Sequence[int | None], answer_ids: Sequence[int] | None
                  ) -> dict[tuple[str, str, float], torch.Tensor]:
    ids = None if answer_ids is None else list(answer_ids)
    if ids is not None and (not ids or (o.vocab is not None and not all(0 <= int(i) < o.vocab for i in ids))):
        raise InputError(f"answer_ids {ids} are not token ids of a vocabulary of {o.vocab}",
                         fix="pass tokenizer ids, e.g. of ' Yes' and ' No'")
    out = {}
    for k in ks:
        if k is None and o.vocab is None:
            raise InputError("the full rung needs the vocabulary size, which a dict of top-k tensors does not record",
                             fix=f"pass the full {o.point!r} logits, or leave None out of ks")
        kk = o.vocab if k is None else (int(k) if o.vocab is None else min(int(k), o.vocab))
        if ids is not None and kk == len(ids):
            feats = o.logp("answer-token")[:, ids]
        elif kk == o.vocab:
            feats = o.logp("full")
        else:
            feats = o.topk(kk)
        out[("logits", o.point, float(kk))] = feats
    return out


def _vocab(store: ActivationStore, logits_point: str) -> float:
    """The vocabulary size, from the store's record (nothing is read); inf when it is not recorded."""
    if logits_point in store:
        return float(store.info(logits_point)["shape"][-1])
    return float(store.info(topk_points(logits_point)[0]).get("vocab") or math.inf)


def _k_label(k: float, vocab: float) -> str:
    return "" if math.isnan(k) else ("full" if int(k) >= vocab else str(int(k)))


def leakage_ladder(
    acts: Any,
    labels: Any,
    groups: Any = None,
    *,
    lens: Any = None,
    ks: Sequence[int | None] = LADDER_K,
    answer_ids: Sequence[int] | None = None,
    position: str | None = None,
    logits_point: str = "logits",
    cv: int = 5,
    seed: int = 0,
    n_boot: int = 1000,
    progress: bool = True,
    matched: bool = False,
    **probe_kwargs: Any,
) -> pd.DataFrame:
    """Probe accuracy and MI (with CIs and controls) on every rung of the ladder for one label.

    Returns the columns of :func:`probekit.readout.probes.probe_layers` plus ``source``
    (``"residual"``, ``"tuned-lens"``, ``"logits"``), ``k`` (the logits rungs; NaN elsewhere;
    the vocabulary size for the full distribution), ``k_label`` (``"2"``, ..., ``"full"``) and
    ``n_features``; every rung shares the same folds. ``matched=True`` adds the
    ``"residual-pca"`` and ``"tuned-lens-topk"`` rungs (module docstring; ``k`` set, ``layer`` that of
    the residual they come from).

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(200) % 2
        >>> h = torch.randn(200, 8, generator=g); h[:, 0] += 3 * y
        >>> acts = {"lm.0.resid": h, "logits": torch.randn(200, 30, generator=g) + 2 * y[:, None] * (torch.arange(30) < 2)}
        >>> t = leakage_ladder(acts, y, ks=(2, None), answer_ids=[0, 1], n_boot=100, progress=False)
        >>> list(t.source), list(t.k.fillna(0)), bool(t.accuracy.min() > 0.8)
        (['residual', 'logits', 'logits'], [0.0, 2.0, 30.0], True)
    """
    feats = ladder_features(acts, lens=lens, ks=ks, answer_ids=answer_ids, position=position, logits_point=logits_point,
                            matched=matched)
    keys = list(feats)
    # probe_layers keys points by name; one synthetic name per rung, mapped back below
    named = {f"rung{i}": feats[key] for i, key in enumerate(keys)}
    table = probe_layers(named, labels, groups, cv=cv, seed=seed, n_boot=n_boot, progress=progress, **probe_kwargs)
    back = {f"rung{i}": key for i, key in enumerate(keys)}
    table["source"] = [back[p][0] for p in table.point]
    table["k"] = [back[p][2] for p in table.point]
    table["n_features"] = [int(named[p].shape[1]) for p in table.point]
    vocab = _vocab(as_store(acts), logits_point)
    table["k_label"] = [_k_label(back[p][2], vocab) for p in table.point]
    table["point"] = [back[p][1] for p in table.point]
    table["layer"] = [Point.parse(p).depth for p in table.point]
    table["kind"] = ["logits" if s == "logits" else ("lens" if s.startswith("tuned-lens") else "resid") for s in table.source]
    if position is not None:
        table["position"] = position
    return table.reset_index(drop=True)


def ladder_verdict(table: pd.DataFrame, alpha: float = ALPHA) -> tuple[pd.DataFrame, str]:
    """The one verdict (:func:`probekit.readout.significance.add_verdicts`) over every row of
    ``table``, with ``detected`` (= ``leaks``), and a line: where the label is detected, or
    "nothing detected" with the accuracy the test would have detected (80% power), or
    "inconclusive" when it could have detected nothing.

    Example:
        >>> import numpy as np
        >>> null = np.random.default_rng(0).normal(size=(2, 201)); null[0, 0] = 9.0
        >>> t = pd.DataFrame({"source": ["residual", "logits"], "point": ["lm.0.resid", "logits"], "k": [float("nan"), 2.0],
        ...                   "accuracy": [0.9, 0.52], "chance": 0.5, "n": 200, "n_units": 200, "perm_null": list(null)})
        >>> ladder_verdict(t)[1]
        'detected in 1 of 2 rows (permutation test, family-wise alpha 0.05): residual lm.0.resid'
    """
    check_number(alpha, "alpha", low=0, high=1, low_open=True, high_open=True, example=0.05)
    t = add_verdicts(table, alpha=alpha)
    t["detected"] = t["leaks"]
    how = f"{'permutation test' if (t.get('test') == 'permutation').all() else 'corrected'}, family-wise alpha {alpha:g}"
    found = t[t.detected]
    if found.empty:
        return t, f"{null_phrase(t)} in {len(t)} rows ({how})"
    where = ", ".join(_rung(r) for r in found.itertuples())
    return t, f"detected in {len(found)} of {len(t)} rows ({how}): {where}"


def _rung(r: Any) -> str:
    """A row's name in a verdict: ``residual lm.1.resid``, ``logits k=2``, ``logits k=full`` (the
    ``k_label`` of :func:`leakage_ladder`, as in its tables; the full vocabulary is never named by its size)."""
    if r.source == "logits":
        label = getattr(r, "k_label", None)
        return f"logits k={label if isinstance(label, str) and label else int(r.k)}"
    k = getattr(r, "k", math.nan)
    return f"{r.source} {r.point}" + ("" if k is None or (isinstance(k, float) and math.isnan(k)) else f" k={int(k)}")
