"""``tracefmt export-trace TRACE --step N [--rank R|all] [--max-mb M] -o step.json``: thin click
layer over :func:`tracefmt.chrometrace.export_trace` (open the files in ui.perfetto.dev or
chrome://tracing).

A ``TraceError`` (no such step or rank, an unreadable file) becomes one line and exit code 2 at
the ``tracefmt`` group; a bad ``--rank`` or ``--max-mb`` is a usage error (exit 2).
"""

from __future__ import annotations

import click

import tracefmt
from tracefmt.cli_info import human_bytes
from tracefmt.jsonout import dumps
from tracefmt.progress import progress_bar
from tracefmt.traceexport import DEFAULT_MAX_BYTES, export_json, export_trace

__all__ = ["export_trace_cmd"]


def _rank(ctx: click.Context, param: click.Parameter, value: str) -> int | None:
    if value == "all":
        return None
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither a rank number nor 'all'.") from None


def _max_bytes(ctx: click.Context, param: click.Parameter, value: float) -> int:
    if not value > 0:
        raise click.BadParameter(f"the size cap must be more than 0 MB, not {value}.")
    return max(int(value * 2**20), 1)


@click.command("export-trace")
@click.argument("path", type=click.Path(exists=True, dir_okay=True))
@click.option("--step", "step_no", type=int, required=True, help="Step number to export.")
@click.option(
    "--rank",
    callback=_rank,
    default="all",
    metavar="R|all",
    help="One rank, or 'all': every rank that recorded the step (the default), one process each.",
)
@click.option(
    "--max-mb",
    "max_bytes",
    type=float,
    callback=_max_bytes,
    default=DEFAULT_MAX_BYTES / 2**20,
    show_default=True,
    help="Size cap of one file in MiB; a larger step is split into step.json, step.1.json, ...",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="The JSON file to write (Chrome Trace Event Format).",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def export_trace_cmd(
    path: str, step_no: int, rank: int | None, max_bytes: int, output: str, as_json: bool
) -> None:
    """Write one step as a timeline that ui.perfetto.dev and chrome://tracing open: a process
    per rank, nested phase, module and op slices (op index, module, shapes, dtypes, times,
    memory and output statistics in each op's arguments), a memory counter and the step's
    events.

    Ops are placed at their recorded host start times; ops recorded without one are laid end
    to end after the op before them.  For example 'tracefmt export-trace runs/gpt --step 3
    -o step3.json', then open step3.json at https://ui.perfetto.dev.
    """
    with tracefmt.open(path) as trace, progress_bar("reading", "ranks", enabled=not as_json) as progress:
        ranks = None if rank is None else [rank]
        result = export_trace(
            trace, step_no, output, ranks=ranks, max_bytes=max_bytes, progress=progress
        )
    if as_json:
        click.echo(dumps(export_json(result)))
        return
    for r, why in result.skipped_ranks.items():
        click.echo(f"skipped rank {r}: {why}", err=True)
    n = len(result.files)
    ranks_text = ", ".join(map(str, result.ranks))
    click.echo(
        f"wrote step {result.step} of rank{'s' if len(result.ranks) > 1 else ''} {ranks_text} "
        f"({result.ops} ops) to {n} file{'s' if n > 1 else ''}"
        + (f" of at most {human_bytes(max_bytes)} each (each opens on its own):" if n > 1 else ":")
    )
    for f in result.files:
        click.echo(f"  {f} ({human_bytes(f.stat().st_size)})")
    if result.unmeasured_starts:
        click.echo(
            f"{result.unmeasured_starts} ops have no recorded start time; they are laid end to "
            "end after the op before them."
        )
    if result.moved_starts:
        click.echo(
            f"{result.moved_starts} ops started before the previous op ended (another thread?); "
            "they are moved to its end so that slices nest."
        )
    for f in result.stale:
        click.echo(f"warning: {f} is left from an earlier export, not part of this one.", err=True)
    click.echo(f"Open {'them' if n > 1 else 'it'} at https://ui.perfetto.dev or chrome://tracing.")
