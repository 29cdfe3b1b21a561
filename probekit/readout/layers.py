"""The two front doors of the readout: :func:`probe_layers` and :func:`mutual_information`.

Both return one row per hook point and position with the columns of
:data:`probekit.readout.table.COLUMNS`; they differ only in their defaults and documentation.
Their keyword arguments become one :class:`~probekit.readout.options.ReadoutOptions` that the
table builder (:func:`~probekit.readout.table.readout_table`) hands to the held-out scorer.
"""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd
import torch

from .table import readout_table

__all__ = ["probe_layers", "mutual_information"]


def probe_layers(
    acts: Any,
    labels: Any,
    groups: Any = None,
    cv: int = 5,
    seed: int = 0,
    C: float = 1.0,
    positions: Sequence[str] | None = None,
    control: bool = True,
    permutation: bool = True,
    n_boot: int = 1000,
    device: str | torch.device = "cpu",
    progress: bool = True,
    **kwargs: Any,
) -> pd.DataFrame:
    """Probe every hook point (and position) with cross-validated linear probes.

    All points, folds and tasks (real labels, control task, permuted labels) are fitted in
    one batched L-BFGS solve per memory chunk (see :func:`~probekit.readout.probes.fit_batched`);
    features are standardised per fold on the training rows only. Folds are ``StratifiedKFold`` (shuffled
    with ``seed``), or ``StratifiedGroupKFold`` when ``groups`` is given so no group is in
    both train and test. Every sample gets exactly one held-out prediction.

    ``acts``: ``{point: Tensor[n, d] | Tensor[n, p, d]}`` (each position its own row,
    named from ``positions`` or by index), an ActivationStore (``.points`` and
    ``store[point]``), or a Tensor ``[n, d]`` / ``[layers, n, d]``. ``labels``: n strings,
    ints or bools.

    Returns one row per point and position with the columns of
    :func:`mutual_information`: ``point, layer, kind, position,
    n, n_classes, accuracy, accuracy_lo, accuracy_hi, chance, log_loss, entropy_bits, mi_bits,
    mi_lo, mi_hi, mi_perm_bits, control_accuracy, control_mi_bits, selectivity, mi_estimator,
    temperature, n_iter, converged, p_value, p_adjusted, leaks``. ``accuracy_lo/hi`` is a 95% Wilson interval on the
    held-out correct count (a percentile group bootstrap when ``groups`` is given, as answers
    within a group are not independent); ``mi_*`` are in bits (see ``mutual_information``);
    ``log_loss`` is the held-out cross-entropy in nats of the calibrated probe that
    ``mi_bits`` uses (``temperature`` = 1/beta of that calibration, ``calibrate=False`` for
    the raw probe); ``chance`` is the majority-class rate; ``selectivity`` = accuracy -
    control accuracy (Hewitt & Liang 2019 control task: each group, or each sample without
    groups, gets a random label with the class proportions kept); ``n_iter``/``converged``:
    the solver's most iterations over folds and tasks, and whether all met ``tol``;
    ``p_value`` the permutation test of the row (labels permuted, across groups when given; every
    row on the same ``n_perm`` permutations), ``p_adjusted`` step-down maxT over all rows returned,
    ``leaks`` = ``p_adjusted < 0.05`` and ``mi_bits > mi_perm_bits``, ``mde_accuracy`` the accuracy the
    test would detect with 80% power, ``n_units`` the independent samples or groups, ``perm_null``
    each row's statistic on the observed labels and every permutation
    (:mod:`probekit.readout.significance`). Extra
    keyword arguments (``estimator``, ``calibrate``, ``max_iter``, ``tol``, ``dtype``,
    ``memory_limit`` in bytes per chunk of points; any field of
    :class:`~probekit.readout.options.ReadoutOptions`, or ``options=ReadoutOptions(...)``
    whose fields the keywords given override) go to the table builder. ``estimator`` picks the
    held-out scorer (:mod:`probekit.readout.scorers`): ``"probe"`` (default), ``"knn"``,
    ``"sklearn"``, any registered name or a scorer instance.

    Example:
        >>> import torch
        >>> y = torch.arange(200) % 2
        >>> acts = {f"lm.{i}.resid": torch.randn(200, 16) + i * y[:, None] for i in range(3)}
        >>> df = probe_layers(acts, y, n_boot=200, progress=False)
        >>> df[["point", "layer", "kind"]].values.tolist()[0]
        ['lm.0.resid', 0.0, 'resid']
        >>> bool(df.accuracy.iloc[2] > 0.95), df.leaks.tolist()
        (True, [False, True, True])
    """
    return readout_table(acts, labels, groups, options=kwargs.pop("options", None), cv=cv, seed=seed, C=C,
                         positions=positions, control=control, permutation=permutation, n_boot=n_boot,
                         device=device, progress=progress, **kwargs)


def mutual_information(
    acts: Any,
    labels: Any,
    groups: Any = None,
    cv: int = 5,
    seed: int = 0,
    n_boot: int = 1000,
    *,
    estimator: str = "probe",
    n_components: int | None = None,
    k: int = 3,
    C: float = 1.0,
    positions: Sequence[str] | None = None,
    control: bool = True,
    permutation: bool = True,
    device: str | torch.device = "cpu",
    progress: bool = True,
    **kwargs: Any,
) -> pd.DataFrame:
    """Mutual information I(activations; labels) per hook point, in bits: a LOWER bound.

    ``estimator="probe"`` (default): the cross-validated held-out probe bound
    ``H(Y) - CE`` (Pimentel et al. 2020; Xu et al. 2020), H(Y) the plug-in entropy of the
    labels, CE the mean held-out cross-entropy (bits) of L2 logistic probes fitted on the
    other folds. It is a lower bound on the true MI for any probe, and can be slightly
    negative when the probe finds nothing (its own estimation error). With
    ``calibrate=True`` (default) each fold's probabilities are shrunk towards its training
    prior by a factor chosen on the other folds (:func:`~probekit.readout.information.calibrate_heldout`): an L2 probe
    with d near n is overconfident and its raw bound can fall to -2 bits on a layer where
    it is 78% accurate; calibrated, the bound is never much below 0 and still held out.
    ``mi_lo``/``mi_hi``:
    95% percentile bootstrap of the per-sample gain ``-log2 p(y_i) - ce_i`` over the whole
    sample's class frequencies p (its mean is the bound), resampling whole groups when
    ``groups`` is given; with labels independent of X it contains 0 in 96% of draws (n=300). ``mi_perm_bits``: the same estimate with the labels
    permuted, the estimator's floor; ``control_mi_bits``/``selectivity``: the Hewitt & Liang
    control task. Sample-based bounds cannot certify more than O(log n) bits (McAllester &
    Stratos 2020), and never more than H(Y).

    ``estimator="knn"``: Ross's k-NN estimate (:func:`~probekit.readout.information.ksg_mi`) on the 1-D held-out probe
    logit (K logits for K > 2 classes), or, with ``n_components``, on the top principal
    components of the activations. Still a lower bound up to the k-NN estimator's own
    bias (data processing); no bootstrap CI (``mi_lo``/``mi_hi`` are NaN).

    Takes the same inputs as :func:`probekit.readout.probes.probe_layers` and returns the
    same columns (the two share one engine). Extra keyword arguments: ``calibrate``,
    ``max_iter``, ``tol``, ``dtype``, ``memory_limit`` (the fields of
    :class:`~probekit.readout.options.ReadoutOptions`), or ``options=ReadoutOptions(...)``.
    ``estimator`` may also name any registered scorer or be a scorer instance
    (:mod:`probekit.readout.scorers`).

    Example:
        >>> import torch
        >>> y = torch.arange(400) % 2
        >>> x = torch.randn(400, 4); x[:, 0] += 3 * (2 * y - 1)
        >>> df = mutual_information({"lm.0.resid": x}, y, n_boot=200, progress=False)
        >>> bool(0.8 < df.mi_bits[0] <= 1.0), bool(abs(df.mi_perm_bits[0]) < 0.05)
        (True, True)
    """
    return readout_table(
        acts, labels, groups, options=kwargs.pop("options", None), cv=cv, seed=seed, C=C, positions=positions,
        control=control, permutation=permutation, n_boot=n_boot, device=device, progress=progress,
        estimator=estimator, n_components=n_components, k=k, **kwargs,
    )
