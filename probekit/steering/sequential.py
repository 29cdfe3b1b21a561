"""LEACE fitted layer by layer with the model running: each point on activations recorded under the
erasers already fitted for the points before it.

The one steering procedure that runs a model to fit a direction, so it sits above both the
value (:class:`~probekit.steering.Direction`) and the interventions it applies while fitting.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from ..data.images import check_images, image_hashes
from ..errors import check_bool
from ..hooks.collect import collect
from ..models.adapter import Model
from .basis import Eraser
from .directions import Direction
from .fit import leace as fit_leace
from .inputs import labels_digest
from .interventions import ablate

__all__ = ["leace_sequential"]


def leace_sequential(model: Model, images: Any, labels: Any, prompts: Any = None, *,
                     points: str | Sequence[str] = "lm.*.resid", positions: Any = "last",
                     apply_positions: Any = None, by_position: bool = True, batch_size: int = 16,
                     progress: bool = False, shrinkage: bool = False) -> Direction:
    """LEACE fitted layer by layer, each on activations recorded with the earlier erasers active.

    A later layer can re-derive an erased attribute from positions or components the
    earlier erasers did not touch; fitting point i on activations collected while the
    erasers of points < i are applied (at ``apply_positions``, None = every position)
    removes what it re-derives. Costs one pass over ``images`` per point.

    ``positions`` are the selectors the erasers are fitted on (a tuple fits one eraser per
    point that guards every one of them, see :meth:`Direction.leace`). The direction
    records ``fit_images`` (the images' content hashes) so that
    :func:`probekit.steering.evaluate` refuses to grade it on them.

    Example:
        >>> import probekit, tempfile
        >>> m = probekit.load(probekit.tiny.build("llava", tempfile.mkdtemp() + "/m"))
        >>> d = leace_sequential(m, probekit.tiny.fixture_images(20, 32), [i % 2 for i in range(20)],
        ...                      "What colour?", points="lm.*.resid")
        >>> d.method, d.points, len(d.fit_images)
        ('leace_sequential', ['lm.0.resid', 'lm.1.resid'], 20)
    """
    names = model.resolve(points)
    check_bool(progress, "progress")
    images = check_images(images)
    fit_images = image_hashes(images)
    erasers: dict[str, Eraser] = {}
    bases: dict[str, Tensor] = {}
    n, pos_names = None, None
    for p in names:
        with contextlib.ExitStack() as stack:
            if erasers:  # the erasers fitted so far, active while point p is recorded
                done = Direction(dict(bases), erasers=dict(erasers), method="leace")
                stack.enter_context(ablate(model, done, points=list(erasers), positions=apply_positions))
            store = collect(model, images, prompts, points=[p], positions=positions,
                            batch_size=batch_size, progress=progress)
        one = fit_leace(store, labels, points=[p], by_position=by_position, shrinkage=shrinkage)
        erasers[p], bases[p] = one.erasers[p], one.bases[p]
        n, pos_names = one.meta.get("n"), store.meta.get("positions")
    return Direction(bases, erasers=erasers, method="leace_sequential",
                     meta={"model": model.name, "positions": pos_names, "n": n, "by_position": by_position,
                           "apply_positions": None if apply_positions is None else str(apply_positions),
                           "fit_images": fit_images, "fit_labels": labels_digest(labels),
                           **({"shrinkage": True} if shrinkage else {})})
