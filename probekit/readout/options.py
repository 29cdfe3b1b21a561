"""How a readout table is computed: one options value passed from the front doors to the scorers.

:func:`~probekit.readout.probes.probe_layers`, :func:`~probekit.readout.layers.mutual_information`,
:func:`~probekit.readout.leakage.leakage` and the ladder take these as keyword arguments (their
signatures are unchanged) or as ``options=ReadoutOptions(...)``; everything below them receives
the one :class:`ReadoutOptions` instead of a copy of twenty parameters.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..errors import InputError, check_bool, check_int, check_number

__all__ = ["ReadoutOptions", "check_dtype", "check_device"]


def check_dtype(dtype: Any) -> torch.dtype:
    """``torch.float32`` / ``torch.float64`` (or their names), else InputError."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    if dtype not in (torch.float32, torch.float64):
        raise InputError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}", fix="use torch.float32")
    return dtype


def check_device(device: Any) -> torch.device:
    """A torch device that exists on this machine, else InputError."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"device {device!r} is not a torch device", fix="use e.g. 'cpu' or 'cuda'") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise InputError(f"device {device!r} is not available on this machine", fix="use device='cpu'")
    return dev


@dataclass(frozen=True)
class ReadoutOptions:
    """Every setting of a readout table; validated when made.

    Cross-validation: ``cv`` folds (group-aware when groups are given), shuffled with ``seed``.
    Controls: ``control`` (Hewitt & Liang control task), ``permutation`` (permuted-label floor).
    Intervals: ``n_boot`` bootstrap resamples (0: none). ``positions``: names of the positions of
    ``[n, p, d]`` activations. ``estimator``: a registered scorer name (``"probe"``, ``"knn"``,
    ``"sklearn"``, see :mod:`probekit.readout.scorers`) or a scorer instance. Probe solver: ``C``,
    ``max_iter``, ``tol``, ``dtype``, ``device``, ``memory_limit`` (bytes of activations per
    chunk of points). ``calibrate``: shrink held-out scores towards the fold prior
    (:func:`~probekit.readout.information.calibrate_heldout`). k-NN MI: ``k``, ``n_components``.
    Verdict: ``n_perm`` label permutations (across groups) of the permutation test, whose statistic
    reads at most ``test_components`` principal directions of a point (:mod:`probekit.readout.permutation`).
    """

    cv: int = 5
    seed: int = 0
    C: float = 1.0
    positions: Sequence[str] | None = None
    control: bool = True
    permutation: bool = True
    n_boot: int = 1000
    device: Any = "cpu"
    progress: bool = True
    estimator: Any = "probe"
    n_components: int | None = None
    k: int = 3
    calibrate: bool = True
    max_iter: int = 1000
    tol: float = 1e-4
    dtype: Any = field(default=torch.float32)
    memory_limit: int = 2**30
    n_perm: int = 1000
    test_components: int = 128

    def __post_init__(self) -> None:
        check_int(self.n_boot, "n_boot", low=0, fix="use n_boot=1000")
        for name in ("progress", "control", "permutation", "calibrate"):
            check_bool(getattr(self, name), name)
        # 19 permutations: the smallest p-value, 1 / (n_perm + 1), is then 0.05
        check_int(self.n_perm, "n_perm", low=19, fix="use n_perm=1000 (the default), or at least 200 (the smallest "
                                                      "p-value is 1 / (n_perm + 1))")
        check_int(self.test_components, "test_components", low=1, fix="use test_components=128")
        check_number(self.C, "C", low=0, low_open=True, fix="use C=1.0")
        check_dtype(self.dtype)
        check_device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return check_dtype(self.dtype)

    @property
    def torch_device(self) -> torch.device:
        return check_device(self.device)

    @classmethod
    def of(cls, options: ReadoutOptions | None = None, **values: Any) -> ReadoutOptions:
        """``options`` (or the defaults) with ``values`` laid over it.

        A value equal to the field's default does not override ``options``: the front doors pass
        every named parameter, and a default there means "not given". An unknown name raises
        InputError (a misspelt option must not be ignored).
        """
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise InputError(
                f"unknown readout option(s) {unknown}",
                fix=f"use the options of ReadoutOptions: {', '.join(names)}",
            )
        if options is None:
            return cls(**values)
        if not isinstance(options, cls):
            raise InputError(f"options must be a ReadoutOptions, got {type(options).__name__}",
                             fix="pass options=ReadoutOptions(...) or the settings as keywords")
        given = {k: v for k, v in values.items() if not _is_default(v, names[k])}
        return dataclasses.replace(options, **given) if given else options

    def replace(self, **values: Any) -> ReadoutOptions:
        """A copy with ``values`` changed."""
        return dataclasses.replace(self, **values)


def _is_default(value: Any, f: dataclasses.Field) -> bool:
    try:
        return bool(value is f.default or (type(value) is type(f.default) and value == f.default))
    except Exception:  # values without a plain == (arrays): never a default
        return False
