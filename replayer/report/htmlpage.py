"""The report's one self-contained HTML page: sections of tables, images and downloads.

Everything is inside the file: images are PNG ``data:`` URIs, downloads (a step's Perfetto
trace) ``data:`` links, styles inline in one ``<style>``; no script, font or request leaves the
page, so it opens from a mail attachment or an archive years later.  Text is escaped by Jinja's
autoescaping; the only markup passed through is :attr:`Section.html`, which callers build from
escaped text (rich's HTML export).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field

import jinja2

__all__ = ["Download", "Image", "Section", "Table", "render_page"]


@dataclass(frozen=True)
class Table:
    """Rows of text; ``numeric`` columns are right-aligned."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric: frozenset[int] = frozenset()
    caption: str = ""


@dataclass(frozen=True)
class Image:
    """A PNG figure."""

    title: str
    png: bytes
    caption: str = ""

    @property
    def src(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass(frozen=True)
class Download:
    """A file the reader saves from the page (``data:`` link with a file name)."""

    label: str
    filename: str
    data: bytes
    mime: str = "application/json"

    @property
    def href(self) -> str:
        return f"data:{self.mime};base64," + base64.b64encode(self.data).decode("ascii")


@dataclass(frozen=True)
class Section:
    """One part of the page, in the order given; ``html`` is trusted, already-escaped markup."""

    anchor: str
    title: str
    intro: str = ""
    tables: tuple[Table, ...] = ()
    images: tuple[Image, ...] = ()
    downloads: tuple[Download, ...] = ()
    commands: tuple[str, ...] = ()
    html: str = ""
    notes: tuple[str, ...] = field(default=())


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #1d232a; background: #fafbfc; }
header { background: #1d3557; color: #fff; padding: 16px 28px; }
header h1 { margin: 0 0 4px; font-size: 20px; }
header p { margin: 0; opacity: .85; }
nav { padding: 8px 28px; background: #e9eef4; position: sticky; top: 0; }
nav a { margin-right: 14px; color: #1d3557; text-decoration: none; }
main { padding: 8px 28px 40px; max-width: 1280px; }
section { margin-top: 26px; }
h2 { font-size: 17px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 13px; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { padding: 3px 10px; border-bottom: 1px solid #e3e7eb; text-align: left; vertical-align: top; }
th { background: #f0f3f6; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 10px 0 18px; }
figure img { max-width: 100%; border: 1px solid #e3e7eb; background: #fff; }
figcaption { color: #57606a; font-size: 12px; }
pre { background: #fff; border: 1px solid #e3e7eb; padding: 8px; overflow-x: auto; font-size: 12px; }
pre.rich { background: #0d1117; color: #e6edf3; }
.note { color: #57606a; }
a.download { display: inline-block; margin: 4px 10px 4px 0; padding: 4px 10px;
  border: 1px solid #1d3557; border-radius: 4px; color: #1d3557; text-decoration: none; }
</style></head>
<body>
<header><h1>{{ title }}</h1><p>{{ subtitle }}</p></header>
<nav>{% for s in sections %}<a href="#{{ s.anchor }}">{{ s.title }}</a>{% endfor %}</nav>
<main>
{% for s in sections %}
<section id="{{ s.anchor }}">
<h2>{{ s.title }}</h2>
{% if s.intro %}<p>{{ s.intro }}</p>{% endif %}
{% for t in s.tables %}
<table>{% if t.caption %}<caption>{{ t.caption }}</caption>{% endif %}
<thead><tr>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in t.rows %}<tr>{% for cell in row %}
<td{% if loop.index0 in t.numeric %} class="n"{% endif %}>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>
{% endfor %}
{% for im in s.images %}
<figure><img src="{{ im.src }}" alt="{{ im.title }}">
<figcaption>{{ im.title }}{% if im.caption %}: {{ im.caption }}{% endif %}</figcaption></figure>
{% endfor %}
{% if s.html %}{{ s.html | safe }}{% endif %}
{% for d in s.downloads %}
<a class="download" download="{{ d.filename }}" href="{{ d.href }}">{{ d.label }}</a>{% endfor %}
{% if s.commands %}<pre>{% for c in s.commands %}{{ c }}
{% endfor %}</pre>{% endif %}
{% for n in s.notes %}<p class="note">{{ n }}</p>{% endfor %}
</section>
{% endfor %}
</main></body></html>
"""


def render_page(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """The whole page as text."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(_TEMPLATE).render(title=title, subtitle=subtitle, sections=sections)
