"""``tracefmt extract RUN --steps A:B --ranks R,... -o SMALL``: thin click layer over
:func:`tracefmt.extract.extract`.

A ``TraceError`` (a refused selection or output, an unreadable source) becomes one line and exit
code 2 at the ``tracefmt`` group; bad ``--steps`` or ``--ranks`` text is a usage error (exit 2).
"""

from __future__ import annotations

import click

from tracefmt.cli_info import human_bytes
from tracefmt.errors import TraceError
from tracefmt.extract import ExtractSummary, extract, parse_step_range
from tracefmt.progress import progress_bar

__all__ = ["extract_cmd"]


def _steps(ctx: click.Context, param: click.Parameter, value: str | None) -> range | None:
    if value is None:
        return None
    try:
        return parse_step_range(value)
    except TraceError as e:
        raise click.BadParameter(str(e)) from None


def _ranks(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(r) for r in value.split(",") if r.strip()]
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a comma-separated list of rank numbers (e.g. 0,3)."
        ) from None


def _summary_line(s: ExtractSummary) -> str:
    uneven = len({r.steps for r in s.ranks}) > 1  # then each rank's count
    ranks = ", ".join(f"{r.rank} ({r.steps})" if uneven else str(r.rank) for r in s.ranks)
    return (
        f"extracted {s.steps} step{'s' if s.steps != 1 else ''} "
        f"({s.step_range[0]}:{s.step_range[1]}) of rank{'s' if len(s.ranks) > 1 else ''} "
        f"{ranks} from {s.source} ({human_bytes(s.source_bytes)}) to {s.output} "
        f"({human_bytes(s.output_bytes)}){', with run.json' if s.manifest else ''}"
    )


@click.command("extract")
@click.argument("run", type=click.Path(exists=True, dir_okay=True))
@click.option(
    "--steps",
    callback=_steps,
    default=None,
    metavar="A:B",
    help="Steps to copy: A:B (both included), A, A: or :B (default: all).",
)
@click.option(
    "--ranks",
    callback=_ranks,
    default=None,
    metavar="R,...",
    help="Ranks to copy, comma-separated (default: every rank with a file).",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False),
    help="The new run directory.",
)
@click.option("--overwrite", is_flag=True, help="Replace the run already in the output directory.")
def extract_cmd(
    run: str, steps: range | None, ranks: list[int] | None, output: str, overwrite: bool
) -> None:
    """Copy some steps of some ranks into a new, smaller run directory (same run id).

    Each copied step keeps everything it has (graph, timings, statistics, histograms, values,
    events, scalars); the files' provenance says what was extracted from where.  For example
    'tracefmt extract runs/big --steps 41207 --ranks 3 -o small', then
    'replayer diff runs/big:41207@3 small:41207@3'.
    """
    with progress_bar("extract", "steps") as progress:
        summary = extract(run, output, steps=steps, ranks=ranks, overwrite=overwrite, progress=progress)
    click.echo(_summary_line(summary))
    for rank, why in summary.skipped.items():
        click.echo(f"skipped rank {rank}: {why}", err=True)
