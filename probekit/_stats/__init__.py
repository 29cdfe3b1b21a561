"""Statistics shared by every layer: intervals, bootstraps, p-values from intervals, Holm.

One home, so that "95% CI" means the same interval in the readout, the steering evaluation,
the experiments and the organisms. Numpy and scipy only; nothing here knows about models.

- :data:`Z95`: the two-sided 95% normal quantile (``scipy.stats.norm.ppf(0.975)``).
- :func:`wilson`: Wilson score interval of a proportion (scalar or vectorised).
- :func:`bootstrap_mean`: mean and percentile-bootstrap CI (``scipy.stats.bootstrap``).
- :func:`cluster_bootstrap`: percentile CIs of ratios of per-unit sums, resampling whole units
  (samples or groups), many statistics on the same resamples; hand-written, as scipy resamples
  observations, not clusters.
- :func:`p_from_ci`, :func:`p_difference_from_ci`: normal-approximation p-values read off a
  95% interval (se = width / (2 * Z95)).
- :func:`holm`: Holm's step-down adjustment.
- :func:`permutations`: label permutations that respect groups (whole groups trade labels).
- :func:`permutation_p`, :func:`maxt_adjust`: permutation p-values and Westfall-Young step-down
  maxT adjustment over a family of tests sharing one set of permutations (the verdict).
- :func:`min_detectable_accuracy`: the accuracy a family-wise test at that n, group count and
  family size detects with 80% power (the power shown beside every "nothing detected").
- :func:`t_interval`, :func:`t_half_width`: Student-t intervals of a mean over a few independent
  replicates (seeds), scalar and vectorised.
- :func:`bootstrap_indices`, :func:`unit_resample`, :func:`unit_weights`, :func:`percentile_interval`:
  the resampling every hand-written bootstrap uses (samples; whole units within each stratum, as indices
  or as multiplicities) and its percentile interval.
- :func:`z_power`, :func:`min_detectable_z_effect`: power and minimal detectable effect of a one-sided
  z-test with a known standard error.
- :func:`sign_flip_null`, :func:`min_detectable_shift`: paired designs (one difference per unit, e.g.
  per name pair): the permutation statistics of a two-sided sign-flip test of the mean difference, every
  row on the same flips (the verdict's ``perm_null``), and the mean shift it detects with 80% power.

Example:
    >>> lo, hi = wilson(8, 10)
    >>> round(lo, 4), round(hi, 4)
    (0.4902, 0.9433)
    >>> holm([0.01, 0.04, 0.03, 0.5]).round(2).tolist()
    [0.04, 0.09, 0.09, 0.5]
"""

from __future__ import annotations

from .intervals import Z95, wilson, p_from_ci, p_difference_from_ci, holm, t_half_width, t_interval, percentile_interval, z_power, min_detectable_z_effect
from .resampling import _RNG_KW, bootstrap_mean, cluster_bootstrap, bootstrap_indices, unit_resample, unit_weights, permutations, sign_flip_null
from .power import permutation_p, maxt_adjust, min_detectable_accuracy, min_detectable_shift
from .intervals import _lower, _upper  # noqa: F401 (used by callers' exact quantiles)

__all__ = ['Z95', 'wilson', 'p_from_ci', 'p_difference_from_ci', 'holm', 't_half_width', 't_interval', 'percentile_interval', 'z_power', 'min_detectable_z_effect', 'bootstrap_mean', 'cluster_bootstrap', 'bootstrap_indices', 'unit_resample', 'unit_weights', 'permutations', 'sign_flip_null', 'permutation_p', 'maxt_adjust', 'min_detectable_accuracy', 'min_detectable_shift']
