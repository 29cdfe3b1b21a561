"""Readout: what the activations say about a label, per layer (works without a model).

- :func:`probe_layers`: cross-validated linear probes on every hook point, one batched solve
- :func:`mutual_information`: held-out probe lower bound on I(X;Y) in bits (or k-NN)
- :class:`LinearProbe`: the probe as a scikit-learn estimator; :func:`fit_batched`: many at once
- :func:`ksg_mi`: Ross's k-NN estimate for low-dimensional cross-checks
- :func:`make_folds`: the (group-aware) folds the probes use
"""

from ._data import make_folds
from .information import ksg_mi, mutual_information
from .probes import BatchedLogistic, LinearProbe, fit_batched, probe_layers

__all__ = [
    "probe_layers",
    "mutual_information",
    "LinearProbe",
    "fit_batched",
    "BatchedLogistic",
    "ksg_mi",
    "make_folds",
]
