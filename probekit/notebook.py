"""Figures that survive a static view of an executed notebook.

A plotly figure in a notebook is saved as ``application/vnd.plotly.v1+json`` only: JupyterLab
draws it, but nbconvert's HTML export shows nothing. :func:`static_figures` selects a plotly
renderer that saves each figure twice, as that JSON (interactive in Jupyter) and as inline HTML
calling plotly.js, with the plotly.js library itself inlined in the first figure's output (no
CDN: it works offline). PNG export through kaleido needs a Chrome binary, which is why the HTML
form is the one always written.
"""

from __future__ import annotations

from typing import Any

__all__ = ["static_figures", "RENDERER"]

RENDERER = "probekit_static"


_STATE = {"sent_plotlyjs": False}  # module-level: plotly copies a renderer before each use


def _renderer_class() -> type:
    from plotly.io._base_renderers import MimetypeRenderer

    class StaticHTMLRenderer(MimetypeRenderer):
        """Self-contained ``text/html`` for each figure; plotly.js is inlined once per kernel."""

        def to_mimebundle(self, fig_dict: dict) -> dict[str, Any]:
            import plotly.io as pio

            html = pio.to_html(fig_dict, full_html=False, include_plotlyjs=not _STATE["sent_plotlyjs"],
                               default_width="100%", config={"displaylogo": False, "responsive": True})
            _STATE["sent_plotlyjs"] = True
            return {"text/html": html}

    return StaticHTMLRenderer


def static_figures() -> str:
    """Make plotly figures in this kernel display as JSON *and* self-contained HTML; returns the renderer name.

    Call it once at the top of a notebook. Calling it again inlines plotly.js again in the next
    figure (e.g. after clearing the outputs that held it).

    Example:
        >>> import plotly.io as pio
        >>> from probekit.notebook import static_figures
        >>> static_figures()
        'plotly_mimetype+probekit_static'
        >>> pio.renderers.default
        'plotly_mimetype+probekit_static'
    """
    import plotly.io as pio

    pio.renderers[RENDERER] = _renderer_class()()
    _STATE["sent_plotlyjs"] = False
    pio.renderers.default = f"plotly_mimetype+{RENDERER}"
    return pio.renderers.default
