"""Readout: what the activations say about a label, per layer (works without a model).

- :func:`probe_layers`: cross-validated linear probes on every hook point, one batched solve
- :func:`mutual_information`: held-out probe lower bound on I(X;Y) in bits (or k-NN)
- :class:`LinearProbe`: the probe as a scikit-learn estimator; :func:`fit_batched`: many at once
- :func:`ksg_mi`: Ross's k-NN estimate for low-dimensional cross-checks
- :func:`make_folds`: the (group-aware) folds the probes use
- :class:`ReadoutOptions`: every setting of a readout table, as one value
- :class:`Scorer`, :func:`register_scorer`: the seam for a new readout (one held-out scorer class)
- :class:`Readout`, :func:`register_readout`: the seam for a new table of :func:`probekit.scan`
  (a plug-in: what it needs collected, the tables it makes; :mod:`probekit.readout.plugins`)
- :func:`sae_readout`: which latents of an SAE carry a label (registers the ``"sparse"`` scorer)
- :func:`stats_table`: probes from sufficient statistics (shrinkage LDA per fold), a store read
  shard by shard and summed across ranks, for stores too large to hold a point in memory
  (registers the ``"lda"`` scorer)
"""

from ._data import make_folds
from .information import ksg_mi
from .layers import mutual_information, probe_layers
from .options import ReadoutOptions
from .plugins import Readout, register_readout
from .probes import BatchedLogistic, LinearProbe, fit_batched
from .scorers import HeldoutScores, Scorer, register_scorer
from .sae_latents import SAEReadout, sae_readout  # registers the "sparse" scorer
from .sufficient import FoldStats, StatsScorer, stats_table  # registers the "lda" scorer

__all__ = [
    "probe_layers",
    "mutual_information",
    "LinearProbe",
    "fit_batched",
    "BatchedLogistic",
    "ksg_mi",
    "make_folds",
    "ReadoutOptions",
    "Scorer",
    "HeldoutScores",
    "register_scorer",
    "Readout",
    "register_readout",
    "sae_readout",
    "SAEReadout",
    "stats_table",
    "StatsScorer",
    "FoldStats",
]
