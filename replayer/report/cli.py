"""The ``replayer report`` command (the library function is :func:`replayer.report.write_report`)."""

from __future__ import annotations

import click

import tracefmt
from tracefmt.progress import progress_bar

__all__ = ["report_cmd"]


@click.command(name="report")
@click.argument("run", type=click.Path(exists=True))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The HTML file.")
@click.option(
    "--rank", type=int, default=None, help="The rank whose step is detailed (default: the first)."
)
@click.option(
    "--step",
    "step_no",
    type=int,
    default=None,
    help="The full step detailed (default: the first with an event, else the median-time step).",
)
@click.option("--top-ops", type=click.IntRange(min=1), default=15, show_default=True)
@click.option(
    "--modules",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Modules per norm timeline (those with the largest norms).",
)
def report_cmd(
    run: str, output: str, rank: int | None, step_no: int | None, top_ops: int, modules: int
) -> None:
    """Write one self-contained HTML page about RUN: provenance and steps, the model summary,
    every trigger event with replayer why's explanation, and the costliest ops of one step."""
    from replayer.report import ReportOptions, write_report

    options = ReportOptions(rank=rank, step=step_no, top_ops=top_ops, modules=modules)
    with tracefmt.open(run) as t, progress_bar("report", "sections") as progress:
        path = write_report(t, output, options, progress)
    click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
