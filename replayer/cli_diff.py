"""``replayer diff A B``: thin click layer over :func:`replayer.diff.runs.diff_sides`.

Exit status: 0 when the sides are equal within tolerance, 1 when they differ, 2 on usage errors
(bad arguments, missing traces or steps: the group turns a ``TraceError`` into one line and 2).
"""

from __future__ import annotations

import click
from rich.console import Console

from replayer.diff.jsondata import to_json
from replayer.diff.page import write_html
from replayer.diff.render import render
from replayer.diff.runs import diff_sides
from tracefmt.jsonout import dumps
from tracefmt.progress import progress_bar

__all__ = ["diff"]

EXIT_EQUAL, EXIT_DIFFERENT = 0, 1


@click.command("diff")
@click.argument("side_a", metavar="A")
@click.argument("side_b", metavar="B")
@click.option(
    "--rtol",
    type=click.FloatRange(min=0),
    default=None,
    help="Relative tolerance for every dtype (default: by dtype, e.g. 1.3e-6 float32).",
)
@click.option(
    "--atol",
    type=click.FloatRange(min=0),
    default=None,
    help="Absolute tolerance for every dtype (default: by dtype, e.g. 1e-5 float32).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option(
    "--report",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Also write an HTML report with a plot of divergence along the step.",
)
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Rows in the tables of structural changes and divergences.",
)
@click.option(
    "--stats-only",
    is_flag=True,
    help="Measure distances from statistics even where values were recorded.",
)
@click.option(
    "--all-steps",
    is_flag=True,
    help="Run diffs: go on past the first step that differs beyond tolerance.",
)
@click.option(
    "--view",
    "serve_view",
    is_flag=True,
    help="Then serve side B's step on 127.0.0.1 until Ctrl-C, divergent ops marked (as "
    "`replayer view --diff A B`: Model Explorer with each op's relative difference, opened "
    "on the origin, for large steps; Netron for small ones).",
)
@click.pass_context
def diff(
    ctx: click.Context,
    side_a: str,
    side_b: str,
    rtol: float | None,
    atol: float | None,
    as_json: bool,
    report: str | None,
    top: int,
    stats_only: bool,
    all_steps: bool,
    serve_view: bool,
) -> None:
    """Find where two recorded steps, runs or ranks diverge first, and why.

    A and B are TRACE[:STEP][@RANK]: two steps of a run (runs/a:3 runs/a:4), the same step of
    two runs (runs/a:3 runs/b), two ranks (runs/a:3@0 runs/a:3@1).  With no step on either side,
    every step the two have in common is compared and the first that differs is reported.
    Exit status 0: equal within tolerance; 1: different; 2: usage error.
    """
    if serve_view and as_json:
        raise click.UsageError("--view serves a page until Ctrl-C; --json prints data: give one.")
    with progress_bar("diff", "steps", enabled=not as_json) as progress:
        result = diff_sides(
            side_a,
            side_b,
            rtol=rtol,
            atol=atol,
            values=not stats_only,
            progress=progress,
            stop_at_first_different=not all_steps,
        )
    if as_json:
        click.echo(dumps(to_json(result, limit=max(top, 100))))
    else:
        render(result, Console(), top=top)
    if report is not None:
        write_html(result, report, top=max(top, 25))
        if not as_json:
            click.echo(f"wrote {report}")
    if serve_view:
        from replayer.diff.runs import parse_side
        from replayer.view.cli import serve_diff_view
        from replayer.view.netron import diff_view

        serve_diff_view(diff_view(result, parse_side(side_b).path))
    ctx.exit(EXIT_EQUAL if result.equal else EXIT_DIFFERENT)
