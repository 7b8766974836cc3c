"""``replayer summary TRACE``: the click command.  Thin: parse, call :func:`summarize`, print.

Registered by ``replayer/cli.py`` (``main.add_command(summary)``); a ``TraceError`` reaches the
group, which prints it as one line with exit code 2.
"""

from __future__ import annotations

import sys

import click
from rich.console import Console

from replayer.summary.rollup import summarize
from replayer.summary.sumtable import render_summary
from tracefmt.jsonout import dumps

__all__ = ["summary"]


@click.command("summary")
@click.argument("trace", type=click.Path(exists=True))
@click.option(
    "--step", "step_no", type=int, default=None, help="Step number (default: the first full step)."
)
@click.option("--rank", type=int, default=None, help="Rank (default: the lowest).")
@click.option(
    "--depth",
    type=click.IntRange(min=0),
    default=None,
    help="Show modules at most this deep (the model is 0; default: all). Deeper modules stay "
    "in their parents' numbers.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def summary(trace: str, step_no: int | None, rank: int | None, depth: int | None, as_json: bool) -> None:
    """A torchinfo-style summary of the model from one recorded step: each module (indented by
    depth, with its class) with its output shape, parameters, forward multiply-adds, forward
    and backward host time, activation bytes and memory, rolled up over its submodules; then
    the totals.  Class names and exact parameter counts need module metadata (format 1.5,
    record(..., model=...)); without it they come from the graph."""
    result = summarize(trace, step=step_no, rank=rank)
    if as_json:
        click.echo(dumps(result.to_json(depth), indent=2))
        return
    console = Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 200)
    render_summary(result, console, depth=depth)
