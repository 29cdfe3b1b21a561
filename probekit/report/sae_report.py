"""The HTML page of an SAE-latent readout: the per-layer table, the ranked latents, and for each of the
best latents a strip of thumbnails of the images it fires on most.

:class:`SAEReport` wraps a :class:`probekit.readout.sae_latents.SAEReadout` and the images the store
was collected on (the same order); ``to_html()`` is one self-contained page (thumbnails inlined as PNG
data URIs), ``save(path)`` writes it atomically. The layer table uses the columns and verdict cells of
every probekit report (:func:`probekit.report.pages.leakage_rows`).

Example:
    >>> import torch
    >>> from probekit.hooks.store import ActivationStore
    >>> from probekit.readout.sae_latents import sae_readout
    >>> from probekit.sae import SAE
    >>> sae = SAE.random(4, 8, "topk", k=2, point="lm.0.resid")
    >>> x = torch.randn(60, 4); y = (x[:, 0] > 0).long()
    >>> r = sae_readout(ActivationStore({"lm.0.resid": x}), sae, y, cv=3, n_boot=50, k=2)
    >>> page = SAEReport(r, images=None).to_html()
    >>> "Latents that carry the label" in page and "<!DOCTYPE html>" in page
    True
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ..files import atomic_write
from .html import Markup, escape, html_table, kv_table, page, raw_table, summary_div
from .pages import _power, leakage_rows
from .tables import normalise
from .text import ci_text, fmt, fmt_p

__all__ = ["SAEReport", "thumbnail"]


def thumbnail(image: Any, size: int = 56) -> str:
    """``<img>`` tag of ``image`` shrunk to ``size`` pixels on its long side, as an inline PNG."""
    from ..data.images import to_pil

    im = to_pil(image).copy()
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" width="{im.width}" height="{im.height}" style="margin:1px">'


class SAEReport:
    """A page for an :class:`~probekit.readout.sae_latents.SAEReadout` (see the module docstring).

    ``images``: the store's images in order (paths, PIL images or arrays), for the thumbnails; None
    leaves them out. ``labels``: one per image, written under each thumbnail. ``n_latents``: rows of the
    latent table per point.
    """

    def __init__(self, readout: Any, images: Sequence[Any] | None = None, labels: Sequence[Any] | None = None,
                 title: str = "probekit SAE-latent readout", notes: Sequence[str] = (), n_latents: int = 20):
        self.readout, self.images, self.labels = readout, images, labels
        self.title, self.notes, self.n_latents = title, list(notes), n_latents

    def summary(self) -> str:
        return self.readout.summary()

    def _strip(self, point: str, latent: int) -> Markup:
        rows = self.readout.top.get((point, latent), [])
        if self.images is None or not rows:
            return Markup("")
        cells = []
        for i in rows:
            cap = "" if self.labels is None else f"<br><small>{escape(self.labels[i])}</small>"
            cells.append(f'<span style="display:inline-block;text-align:center">{thumbnail(self.images[i])}{cap}</span>')
        return Markup("".join(cells))

    def _latent_rows(self) -> tuple[list[dict], list[tuple[str, str]]]:
        lat = self.readout.latents
        classes = [c for c in lat.columns if c.startswith("mean_act[")]
        out = []
        for rec in lat.groupby("point", sort=False).head(self.n_latents).to_dict("records"):
            out.append({"point": rec["point"], "latent": f"#{int(rec['latent'])}", "rank": int(rec["rank"]),
                        "accuracy": ci_text(rec, "accuracy"), "chance": fmt(rec["chance"]),
                        "mi": ci_text(rec, "mi_bits"), "p": fmt_p(rec.get("p_adjusted")),
                        "leaks": "yes" if rec.get("leaks") else _power(rec.get("mde_accuracy")),
                        "fire": fmt(rec["fire_rate"], 3),
                        "by_class": " / ".join(f"{c[9:-1]}: {fmt(rec[c], 3)}" for c in classes),
                        "images": self._strip(rec["point"], int(rec["latent"]))})
        cols = [("point", "hook point"), ("latent", "latent"), ("rank", "rank"), ("accuracy", "accuracy [95% CI]"),
                ("chance", "chance"), ("mi", "MI bits [95% CI]"), ("p", "p (family-wise)"),
                ("leaks", "detected (else: would detect)"), ("fire", "fire rate"),
                ("by_class", "mean activation by class"), ("images", "fires most on")]
        return out, cols

    def to_html(self) -> str:
        r = self.readout
        rows, cols, num = leakage_rows(normalise(r.table))
        lrows, lcols = self._latent_rows()
        quality = pd.DataFrame([{"point": p, **{k: v for k, v in st.items() if k not in ("point", "position")}}
                                for p, st in r.stats.items()])
        body = [str(summary_div(self.summary(), bold=len(r.table)))]
        if self.notes:
            body.append('<div class="notes"><b>Notes</b><ul>' + "".join(f"<li>{escape(n)}</li>" for n in self.notes)
                        + "</ul></div>")
        body += ["<h2>Sparse probe on the latents, per SAE</h2>", str(html_table(rows, cols, num, cls="fit")),
                 "<p class='caption'>The probe keeps, inside each training fold, the k latents with the largest ANOVA "
                 "F on that fold's training rows. The verdict is probekit's one permutation test on all latents, "
                 "family-wise over the rows.</p>",
                 "<h2>Latents that carry the label</h2>", str(html_table(lrows, lcols, ["rank", "accuracy", "chance"])),
                 "<p class='caption'>One probe per live latent (firing on at least "
                 f"{fmt(r.settings.get('min_fire_rate'), 3)} of the samples); the verdict is corrected over every latent "
                 "tested, so ranking them selects nothing the correction has not paid for. The thumbnails are the samples "
                 "on which the latent fires most.</p>",
                 "<h2>SAE quality on these samples</h2>", str(raw_table(quality)),
                 "<details><summary>all latent rows</summary>", str(raw_table(r.latents)), "</details>",
                 "<h2>Settings</h2>", str(kv_table(r.settings))]
        return page(self.title, ", ".join(r.table.point.astype(str)), "\n".join(body))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the page to ``path`` atomically; returns the path."""
        return atomic_write(path, self.to_html(), "SAE readout page")
