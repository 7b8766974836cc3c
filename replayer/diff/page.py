"""A diff as one self-contained HTML page: the terminal report with a plot of divergence above it.

The report is rich's HTML export of :func:`replayer.diff.render.render`, so the page and the
terminal never disagree; the plot (matplotlib, imported only here) shows the max relative distance
of each divergent op along execution order, coloured by phase.

Example::

    write_html(diff_sides("runs/a", "runs/b"), "diff.html")
"""

from __future__ import annotations

import base64
import html
import io
import os

from rich.console import Console

from replayer.diff.render import render
from replayer.diff.results import RunDiff, StepDiff
from tracefmt.model import Phase

__all__ = ["PHASE_COLOURS", "plot_png", "write_html"]

PHASE_COLOURS = {
    Phase.FORWARD: "#1f77b4",
    Phase.BACKWARD: "#ff7f0e",
    Phase.OPTIMIZER: "#2ca02c",
    Phase.OTHER: "#7f7f7f",
}


def plot_png(result: StepDiff | RunDiff) -> bytes | None:
    """A PNG plot of divergence (max relative distance, log scale) along execution order,
    coloured by phase; ``None`` when there is no step diff to plot."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    d = result if isinstance(result, StepDiff) else result.diff
    if d is None:
        return None
    run = result if isinstance(result, RunDiff) and len(result.steps) > 1 else None
    fig = Figure(figsize=(11, 6.5 if run else 4.2), dpi=100, layout="constrained")
    ax = fig.add_subplot(2, 1, 1) if run else fig.add_subplot(1, 1, 1)
    for span in d.phase_spans:
        ax.axvspan(span.start, span.stop, color=PHASE_COLOURS[span.phase], alpha=0.06, lw=0)
    floor = 1e-12
    for phase, colour in PHASE_COLOURS.items():
        pts = [
            (x.position, max(x.score, floor)) for x in d.divergences if x.phase is phase and x.measured
        ]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.scatter(xs, [min(y, 1e6) for y in ys], s=10, color=colour, label=phase.label)
    struct = [c.position for c in d.structural if c.kind in ("added", "removed")]
    if struct:
        ax.scatter(
            struct, [floor] * len(struct), marker="|", s=60, color="black", label="op on one side only"
        )
    if d.origin is not None:
        ax.axvline(d.origin.position, color="red", lw=1, ls="--", label="origin")
    ax.set_yscale("log")
    ax.set_xlim(0, max(d.positions, 1))
    ax.set_xlabel("aligned execution order (op position)")
    ax.set_ylabel("max relative distance")
    ax.set_title(
        f"Divergence along step {d.step_a} (A) vs step {d.step_b} (B)", loc="right", fontsize=10
    )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.08), ncol=6, fontsize=8, frameon=False)
    if run is not None:
        ax2 = fig.add_subplot(2, 1, 2)
        steps = [v.step for v in run.steps]
        ax2.bar(steps, [v.different_tensors for v in run.steps], color="#d62728")
        ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax2.set_xlabel("step")
        ax2.set_ylabel("tensors beyond tolerance")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>@TITLE@</title>
<style>body{{font-family:sans-serif;margin:1.5em}} img{{max-width:100%}}
pre{{font-family:Menlo,'DejaVu Sans Mono',monospace;font-size:13px;line-height:1.3;
white-space:pre-wrap}}</style></head>
<body><h1>@TITLE@</h1>@IMAGE@
<pre style="color:#000;background:#fff">{code}</pre></body></html>
"""


def write_html(result: StepDiff | RunDiff, path: str | os.PathLike[str], *, top: int = 25) -> None:
    """Write the report and its plot (an embedded PNG) as one self-contained HTML page."""
    console = Console(record=True, width=140, file=io.StringIO(), color_system="truecolor")
    render(result, console, top=top)
    png = plot_png(result)
    image = (
        ""
        if png is None
        else (
            f'<img alt="divergence along execution order" src="data:image/png;base64,'
            f'{base64.b64encode(png).decode("ascii")}">'
        )
    )
    title = html.escape(f"replayer diff: {result.verdict}")
    # rich formats the template with str.format (CSS braces are doubled); ours go in first.
    template = _PAGE.replace("@TITLE@", title).replace("@IMAGE@", image)
    with open(path, "w", encoding="utf-8") as f:
        f.write(console.export_html(inline_styles=True, code_format=template))
