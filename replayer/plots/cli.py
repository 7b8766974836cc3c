"""The ``replayer timeline`` and ``replayer dist`` commands: parse, call the library, print.

Registered on the ``replayer`` group by :mod:`replayer.cli`; ``TraceError`` becomes one line
on stderr and exit code 2 there.
"""

from __future__ import annotations

import click

import tracefmt
from replayer.errors import ReplayError
from replayer.plots.dist import VIEWS, DistOptions, dist_figure, read_dist
from replayer.plots.figures import FORMATS, event_steps, write_figure
from replayer.plots.timeline import TimelineOptions, read_timeline, timeline_figure
from tracefmt.columns import METRICS, PHASES, SOURCES, Selection
from tracefmt.progress import progress_bar
from tracefmt.reader import Trace

__all__ = ["dist", "timeline"]

_METRIC_HELP = "; ".join(f"{name}: {what}" for name, what in METRICS.items())


def _ranks(trace: Trace, text: str | None) -> tuple[int, ...] | None:
    """``--ranks``: None (the lowest rank), ``all``, or ``R,R,...``."""
    if text is None:
        return None
    if text.strip() == "all":
        return trace.ranks
    try:
        ranks = tuple(dict.fromkeys(int(part) for part in text.split(",") if part.strip()))
    except ValueError:
        raise ReplayError(f"--ranks {text!r} is not 'all' or a list of ranks like 0,1,3.") from None
    if not ranks:
        raise ReplayError("--ranks names no rank; give 'all' or a list like 0,1,3.")
    for r in ranks:
        trace.rank_file(r)  # a clear error for a rank the run does not have
    return ranks


def _output(ctx: click.Context, param: click.Parameter, path: str) -> str:
    """``-o``: a file name ending in one of :data:`~replayer.plots.figures.FORMATS`."""
    if not path.lower().endswith(FORMATS):
        raise click.BadParameter(f"the file name must end in {', '.join(FORMATS)}", ctx, param)
    return path


_out = click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    callback=_output,
    help="out.png, out.svg or out.html (a self-contained page).",
)
_tensor_help = "Tensors (glob over names, or labels such as h.0.mlp.c_fc:addmm#0)."
_no_events = click.option("--no-events", is_flag=True, help="Do not mark the run's events.")


@click.command()
@click.argument("trace", type=click.Path(exists=True))
@click.option(
    "--metric",
    required=True,
    help=f"What to plot: {_METRIC_HELP}; or a scalar the run recorded, by name (lr) or as scalar:NAME.",
)
@click.option("--module", default=None, help="Modules (glob over module paths; <root> is the model).")
@click.option("--tensor", default=None, help=_tensor_help)
@click.option(
    "--phase",
    type=click.Choice(PHASES),
    default=None,
    help="forward: module outputs (default by module); backward: parameter gradients; "
    "optimizer: parameters after the step. With --tensor: only tensors of that phase.",
)
@click.option(
    "--source",
    type=click.Choice(SOURCES),
    default="auto",
    show_default=True,
    help="Full steps, light steps, or auto: those with more steps.",
)
@click.option(
    "--ranks", "ranks_text", default=None, metavar="R,R,...|all", help="Ranks (default: the lowest)."
)
@click.option(
    "--band", is_flag=True, help="With several ranks: a min..max band and the median per series."
)
@click.option(
    "--max-lines",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Lines drawn at most; the series with the largest values are kept.",
)
@click.option(
    "--log/--linear", "log", default=None, help="Y axis (default: log when values span decades)."
)
@_no_events
@_out
def timeline(
    trace: str,
    metric: str,
    module: str | None,
    tensor: str | None,
    phase: str | None,
    source: str,
    ranks_text: str | None,
    band: bool,
    max_lines: int,
    log: bool | None,
    no_events: bool,
    output: str,
) -> None:
    """Plot a metric across every recorded step of a run: one line per module or tensor, or
    with several ranks a line per rank (or --band), the run's events as dashed lines.

    Reads only the step index and the statistics tables it plots.
    """
    selection = Selection(module=module, tensor=tensor, phase=phase, source=source)
    with tracefmt.open(trace) as t, progress_bar("timeline", "blocks") as progress:
        options = TimelineOptions(
            metric=metric,
            selection=selection,
            ranks=_ranks(t, ranks_text),
            band=band,
            max_lines=max_lines,
            log=log,
            events=not no_events,
        )
        tl = read_timeline(t, options, progress=progress)
    fig = timeline_figure(tl, options)
    write_figure(fig, output, title=tl.title, notes=tl.notes)
    for note in tl.notes:
        click.echo(note, err=True)
    events = sum(len(steps) for steps in event_steps(tl.events).values())
    click.echo(
        f"wrote {output}: {len(tl.labels)} series over {len(tl.steps)} steps"
        + (f", {events} events marked" if events else "")
    )


@click.command()
@click.argument("trace", type=click.Path(exists=True))
@click.option("--tensor", required=True, help=_tensor_help)
@click.option("--module", default=None, help="Only tensors of modules matching this glob.")
@click.option("--phase", type=click.Choice(PHASES), default=None, help="Only tensors of this phase.")
@click.option("--rank", type=int, default=None, help="Rank (default: the lowest).")
@click.option(
    "--view",
    type=click.Choice(VIEWS),
    default="ridge",
    show_default=True,
    help="ridge: a curve per step, offset; bands: percentiles 0,7,16,50,84,93,100 over steps.",
)
@click.option(
    "--max-tensors", type=click.IntRange(min=1), default=6, show_default=True, help="Panels at most."
)
@click.option(
    "--max-curves",
    type=click.IntRange(min=2),
    default=40,
    show_default=True,
    help="Ridge view: curves per panel at most (spread evenly over the steps).",
)
@_no_events
@_out
def dist(
    trace: str,
    tensor: str,
    module: str | None,
    phase: str | None,
    rank: int | None,
    view: str,
    max_tensors: int,
    max_curves: int,
    no_events: bool,
    output: str,
) -> None:
    """Plot how tensors' values were distributed over the steps, from the histograms recorded
    with record(..., hist_bins=N): offset curves per step (ridge) or percentile bands."""
    options = DistOptions(
        selection=Selection(module=module, tensor=tensor, phase=phase),
        rank=rank,
        view=view,
        max_tensors=max_tensors,
        max_curves=max_curves,
        events=not no_events,
    )
    with tracefmt.open(trace) as t, progress_bar("dist", "blocks") as progress:
        d = read_dist(t, options, progress=progress)
    fig = dist_figure(d, options)
    title = f"Distributions of {tensor} (rank {d.rank})"
    write_figure(fig, output, title=title, notes=d.notes)
    for note in d.notes:
        click.echo(note, err=True)
    click.echo(f"wrote {output}: {len(d.series)} tensor{'s' if len(d.series) != 1 else ''}, {view} view")
