"""The blocks of a report page: one page template, tables, figure divs, the summary box.

Pages are rendered from small jinja2 templates. Every ``{{ value }}`` is HTML-escaped
(:func:`html.escape`) unless it is a :class:`markupsafe.Markup` fragment built here, so a
template never has to remember ``|e``. plotly.js is inlined once per page by :func:`page`,
and sent to a notebook once per kernel by :func:`notebook_js`.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
from typing import Any, Sequence

import jinja2
import pandas as pd
from markupsafe import Markup

from .._version import __version__
from .serialise import jsonable

__all__ = ["CSS", "Markup", "escape", "render", "page", "html_table", "kv_table", "raw_table", "figure_div",
           "summary_div", "notebook_js"]

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#222;
     max-width:1000px;margin:2em auto;padding:0 1em;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}
.sub{color:#666;margin-top:0} .intro{font-size:1.05em}
.summary{background:#f4f8fb;border-left:4px solid #1f77b4;padding:.6em 1em}
.notes{background:#fff8e6;border-left:4px solid #e6a700;padding:.6em 1em}
.caption{color:#555;font-size:.92em;margin:.2em 0 1.5em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border-bottom:1px solid #e3e3e3;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#fafafa} td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.fit{font-size:.8em;width:100%} table.fit th,table.fit td{padding:.2em .4em} table.fit th{white-space:normal}
.scroll{overflow-x:auto;max-width:100%} details{margin:1em 0} summary{cursor:pointer;color:#1f77b4} code{font-size:.92em}
footer{color:#888;font-size:.8em;margin-top:3em}
"""

PAGE = (
    '<!DOCTYPE html>\n'
    '<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
    '<title>{{ title }}</title><style>{{ css }}</style><script type="text/javascript">{{ plotlyjs }}</script>'
    '</head><body><h1>{{ title }}</h1><p class="sub">{{ subtitle }}</p>'
    '{% if intro %}<p class="intro">{{ intro }}</p>{% endif %}{{ body }}'
    '<footer>Written by probekit {{ version }} on {{ written }}.</footer></body></html>\n'
)

_NOTEBOOK_JS_SENT = False  # plotly.js goes into a notebook once per kernel, as plotly's own renderer does


def escape(x: Any) -> str:
    """``x`` as HTML text; a :class:`Markup` fragment is kept as it is."""
    return str(x) if isinstance(x, Markup) else html.escape(str(x))


# trim_blocks/lstrip_blocks: a line holding only {% ... %} leaves nothing in the output
_ENV = jinja2.Environment(autoescape=False, finalize=escape, trim_blocks=True, lstrip_blocks=True,
                          keep_trailing_newline=True, undefined=jinja2.StrictUndefined)


def render(template: str, **values: Any) -> Markup:
    """``template`` (jinja2 source) filled with ``values``, escaped as :func:`escape` does."""
    return Markup(_ENV.from_string(template).render(**values))


def page(title: str, subtitle: str, body: str, intro: str | None = None) -> str:
    """A whole self-contained page: CSS and plotly.js inside, ``body`` (HTML) under the title
    and, when given, the ``intro`` paragraph (text: what the page is)."""
    return str(render(PAGE, title=title, subtitle=subtitle, intro=intro, body=Markup(body), css=Markup(CSS),
                      plotlyjs=Markup(_plotlyjs()), version=__version__,
                      written=_dt.datetime.now().isoformat(timespec="seconds")))


def html_table(rows: list[dict], columns: Sequence[tuple[str, str]], numeric: Sequence[str] = (),
               cls: str | None = None) -> Markup:
    """A scrolling table of ``rows`` (dicts of cell text); ``columns`` are (key, heading) pairs,
    ``numeric`` keys are right-aligned; ``cls="fit"`` sets a smaller font, tighter cells and
    headings that wrap (a wide table that must fit the page)."""
    head = "".join(f"<th>{escape(label)}</th>" for _, label in columns)
    body = []
    for rec in rows:
        cells = "".join(f'<td class="num">{escape(rec.get(k, ""))}</td>' if k in numeric
                        else f"<td>{escape(rec.get(k, ''))}</td>" for k, _ in columns)
        body.append(f"<tr>{cells}</tr>")
    attr = f' class="{escape(cls)}"' if cls else ""
    return Markup(f'<div class="scroll"><table{attr}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
                  "</table></div>")


def raw_table(df: pd.DataFrame) -> Markup:
    """Every column, 4 significant digits, blanks for NaN; wide tables scroll."""
    df = df.drop(columns=["perm_null"], errors="ignore")  # each row's permutation statistics: data, not a cell
    inner = df.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0)
    return Markup(f'<div class="scroll">{inner}</div>')


def kv_table(d: dict) -> Markup:
    """A two-column table of settings or data; values that are not strings are shown as JSON."""
    if not d:
        return Markup("<p><i>none recorded</i></p>")
    rows = []
    for k, v in d.items():
        val = v if isinstance(v, str) else json.dumps(jsonable(v), ensure_ascii=False)
        rows.append(f"<tr><th>{escape(k)}</th><td><code>{escape(val)}</code></td></tr>")
    return Markup(f"<table>{''.join(rows)}</table>")


def figure_div(fig: Any) -> Markup:
    """A plotly figure's div and call, without plotly.js (the page or :func:`notebook_js` brings it)."""
    return Markup(fig.to_html(full_html=False, include_plotlyjs=False, default_width="100%",
                              config={"displaylogo": False, "responsive": True}))


def summary_div(text: str, bold: int = 1) -> Markup:
    """The summary box of a page; its first ``bold`` lines (the verdicts) in bold."""
    lines = [f"<b>{escape(x)}</b>" if i < bold else escape(x) for i, x in enumerate(text.splitlines())]
    return Markup(f'<div class="summary">{"<br>".join(lines)}</div>')


def notebook_js() -> Markup:
    """plotly.js as a script the first time a notebook view asks, nothing after that."""
    global _NOTEBOOK_JS_SENT
    if _NOTEBOOK_JS_SENT:
        return Markup("")
    _NOTEBOOK_JS_SENT = True
    return Markup(f'<script type="text/javascript">{_plotlyjs()}</script>')


def _plotlyjs() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()

