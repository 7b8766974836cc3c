"""What the plot commands share: figures on matplotlib's Agg canvas (no display, no pyplot state),
event markers, and writing a figure as PNG, SVG or a self-contained HTML page.

The HTML page holds the figure as inline SVG (text drawn as paths, so no font either): it opens
anywhere, offline, and fetches nothing (the SVG's XML prolog, doctype and namespace declarations,
the only URLs in it, are left out: an HTML parser needs none of them, and references use SVG 2's
``href``).
"""

from __future__ import annotations

import html
import io
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from replayer.errors import ReplayError
from tracefmt.columns import RunEvents

__all__ = [
    "BUCKETS",
    "EVENT_COLORS",
    "FORMATS",
    "buckets",
    "decimate",
    "draw_events",
    "event_steps",
    "figure_svg",
    "html_page",
    "line_color",
    "new_figure",
    "write_figure",
]

#: The output formats, by file suffix.
FORMATS = (".png", ".svg", ".html")
#: Event marker colours by kind (others: grey).  Reds for NaN/Inf, oranges for spikes: colours
#: the series lines (:data:`LINE_COLORS`) do not use.
EVENT_COLORS = {
    "nonfinite_created": "#e41a1c",
    "nonfinite_state": "#a50f15",
    "loss_spike": "#ff7f00",
    "grad_norm_spike": "#b35806",
    "exception": "#000000",
    "process_died": "#000000",
    "user_trigger": "#984ea3",
    "remote_trigger": "#6a51a3",
}
_OTHER_EVENT = "#7f7f7f"
#: Series colours: tab10 without its red, orange and grey (those mark events).
LINE_COLORS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
#: Events annotated with their kind at the top of the axes when there are at most this many.
_ANNOTATE = 8
_SVG_METADATA = {"Creator": None, "Date": None, "Format": None, "Type": None}
#: Runs of steps a line is drawn from at most (two points each: their smallest and largest value).
BUCKETS = 2000


def new_figure(width: float = 11.0, height: float = 5.5) -> Figure:
    """A figure on an Agg canvas, laid out by matplotlib's constrained layout."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def line_color(i: int) -> str:
    return LINE_COLORS[i % len(LINE_COLORS)]


def event_steps(events: Sequence[RunEvents]) -> dict[str, np.ndarray]:
    """Each event kind's distinct steps over ``events`` (of one or more ranks)."""
    out: dict[str, list[np.ndarray]] = {}
    for ev in events:
        for code, kind in enumerate(ev.kind_labels):
            out.setdefault(kind, []).append(ev.steps[ev.kinds == code])
    return {kind: np.unique(np.concatenate(parts)) for kind, parts in sorted(out.items())}


def draw_events(ax: Axes, events: Sequence[RunEvents]) -> int:
    """Mark every event of ``events`` on ``ax``, whose x axis is steps: a dashed line at its
    step, one colour and one legend entry per kind, and when there are few, the kinds of each
    step written beside its line.  Each kind's lines are one collection with gid
    ``event:KIND``.  Returns the number of (step, kind) marked."""
    by_kind = event_steps(events)
    at: dict[int, list[str]] = {}
    for kind, steps in by_kind.items():
        lines = ax.vlines(
            steps,
            0,
            1,
            transform=ax.get_xaxis_transform(),
            colors=EVENT_COLORS.get(kind, _OTHER_EVENT),
            linestyles="--",
            linewidth=1.6,
            label=f"{kind} ({len(steps)})",
            zorder=5,
        )
        lines.set_gid(f"event:{kind}")
        for s in steps.tolist():
            at.setdefault(int(s), []).append(kind)
    if len(at) <= _ANNOTATE:
        for step, kinds in sorted(at.items()):
            ax.annotate(
                ", ".join(kinds),
                (step, 1.0),
                xycoords=ax.get_xaxis_transform(),
                rotation=90,
                fontsize=7,
                color=EVENT_COLORS.get(kinds[0], _OTHER_EVENT),
                ha="right",
                va="top",
                xytext=(-2, -2),
                textcoords="offset points",
            )
    return sum(len(s) for s in by_kind.values())


def buckets(n: int) -> np.ndarray | None:
    """Starts of about :data:`BUCKETS` equal runs of ``n`` points (None: draw every point)."""
    if n <= 2 * BUCKETS:
        return None
    return np.unique(np.linspace(0, n, BUCKETS, endpoint=False).astype(np.int64))


def decimate(x: np.ndarray, y: np.ndarray, starts: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Each run's smallest and largest value at the run's middle step (NaN: none recorded)."""
    if starts is None:
        return x, y
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.fmin.reduceat(y, starts), np.fmax.reduceat(y, starts)
    mid = np.add.reduceat(x.astype(np.float64), starts) / np.diff(np.append(starts, len(x)))
    return np.repeat(mid, 2), np.column_stack([lo, hi]).ravel()


def figure_svg(fig: Figure) -> str:
    """The figure as an SVG document (text as paths, no metadata block)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata=_SVG_METADATA)
    return buf.getvalue()


def _inline_svg(svg: str) -> str:
    """``svg`` as an element to put inside HTML: no prolog, doctype or namespace declarations,
    and SVG 2's ``href`` for ``xlink:href`` (so the element is plain XML without prefixes)."""
    start = svg.find("<svg")
    if start < 0:
        raise ReplayError("matplotlib wrote no <svg> element; cannot build the HTML page.")
    svg = re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", svg[start:], count=2)
    return svg.replace(" xlink:href=", " href=")


def html_page(title: str, figures: Sequence[Figure], notes: Sequence[str] = ()) -> str:
    """A self-contained HTML page: ``title``, the figures as inline SVG, ``notes`` below."""
    body = "\n".join(f'<div class="figure">{_inline_svg(figure_svg(f))}</div>' for f in figures)
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n"
        "<style>body{font-family:sans-serif;margin:1.5em}div.figure svg{max-width:100%;"
        "height:auto}li{color:#444}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{body}\n"
        + (f"<ul>{items}</ul>\n" if items else "")
        + "</body>\n</html>\n"
    )


def write_figure(
    fig: Figure, out: str | Path, *, title: str = "", notes: Sequence[str] = (), dpi: int = 110
) -> Path:
    """Write ``fig`` to ``out``: ``.png`` (Agg, ``dpi``), ``.svg``, or ``.html`` (a
    self-contained page with ``title`` and ``notes``).  Returns the path written."""
    path = Path(out)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ReplayError(
            f"Cannot write {str(path)!r}: the output's suffix must be one of {', '.join(FORMATS)}."
        )
    try:
        if suffix == ".png":
            fig.savefig(path, format="png", dpi=dpi)
        elif suffix == ".svg":
            fig.savefig(path, format="svg", metadata=_SVG_METADATA)
        else:
            path.write_text(html_page(title or path.stem, [fig], notes), encoding="utf-8")
    except OSError as e:
        raise ReplayError(f"Cannot write {str(path)!r}: {e}") from e
    return path
