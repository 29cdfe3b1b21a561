"""The logit-lens grid of the ladder organism: what each layer would say at the last prompt tokens.

The figure of ``docs/concepts.md`` ("Logit lens") comes from here, measured on the model
:mod:`.ladder` trained, not drawn by hand: on held-out scenes whose true answer is ``Yes``
and on scenes whose answer is ``No``, the top-1 token of :class:`probekit.readout.lens.LogitLens`
(averaged probabilities over the scenes) per layer and per position.

Example (on any probekit model and scenes with a ``meta["answer"]``)::

    grid = lens_grid(model, scenes)            # columns: answer, point, layer, position, token, prob
    save_png(grid, "docs/img/lens-grid.png")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd

__all__ = ["lens_grid", "save_png", "POSITIONS"]

POSITIONS = (-4, -3, -2, -1)  # the last four prompt tokens; -1 predicts the answer


def lens_grid(model: Any, scenes: Sequence[Any], positions: Sequence[int] = POSITIONS, per_answer: int = 100) -> pd.DataFrame:
    """Top-1 logit-lens token per layer and position, separately for scenes answered Yes and No."""
    from ...hooks.collect import collect
    from ...readout.lens import LogitLens

    tok = getattr(model.processor, "tokenizer", model.processor)
    frames = []
    for answer in ("Yes", "No"):
        chosen = [s for s in scenes if s.answer.rstrip(".") == answer][:per_answer]
        if not chosen:
            continue
        store = collect(model, [s.image for s in chosen], [s.question for s in chosen],
                                 points=["lm.embed", "lm.*.resid"], positions=list(positions), progress=False)
        top = LogitLens(model).top_k(store, k=1)
        ids = model._impl.build_inputs(model, [chosen[0].image], [chosen[0].question], None)["input_ids"][0]
        names = {str(p): tok.decode([int(ids[p])]) for p in positions}  # the token each column sits on
        frames.append(top.assign(answer=answer, input_token=top.position.astype(str).map(names)))
    return pd.concat(frames, ignore_index=True)


def save_png(grid: pd.DataFrame, path: str | Path) -> Path:
    """Two heat maps (true answer Yes / No): rows layers, columns positions, cell = top-1 token, colour = its probability."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    path = Path(path)
    answers = list(dict.fromkeys(grid.answer))
    fig, axes = plt.subplots(1, len(answers), figsize=(4.2 * len(answers), 3.6), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, answer in zip(axes, answers):
        g = grid[grid.answer == answer]
        points = list(dict.fromkeys(g.sort_values("layer").point))
        cols = list(dict.fromkeys(g.position))
        prob = np.full((len(points), len(cols)), np.nan)
        for r in g.itertuples():
            i, j = points.index(r.point), cols.index(r.position)
            prob[i, j] = r.prob
            ax.text(j, i, repr(r.token.strip() or r.token)[1:-1] or "␣", ha="center", va="center", fontsize=9,
                    color="white" if r.prob > 0.6 else "black")
        im = ax.imshow(prob, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
        heads = g.drop_duplicates("position").set_index("position").input_token.reindex(cols)
        ax.set_xticks(range(len(cols)), [f"{c}\n{t!r}" for c, t in zip(cols, heads)], fontsize=8)
        ax.set_yticks(range(len(points)), points, fontsize=8)
        ax.set_title(f"scenes whose answer is {answer}", fontsize=10)
        ax.set_xlabel("position (the prompt token it sits on)")
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="top-1 probability")
    fig.suptitle("Logit lens on the ladder organism: top-1 token per layer and position", fontsize=10)
    import io

    from ...files import atomic_write

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write(path, buf.getvalue(), "figure")
