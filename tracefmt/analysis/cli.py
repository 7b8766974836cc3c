"""``tracefmt to-parquet`` and ``tracefmt sql``: thin click layers over
:func:`tracefmt.analysis.to_parquet` and :func:`tracefmt.analysis.run_sql`.

A ``TraceError`` (a missing analysis extra, a refused output, a query DuckDB rejects) becomes one
line and exit code 2 at the ``tracefmt`` group; bad ``--steps`` text is a usage error.
"""

from __future__ import annotations

import csv
import io
import sys
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tracefmt.analysis.parquet import ExportOptions, ExportSummary, to_parquet
from tracefmt.analysis.sql import QueryResult, run_sql
from tracefmt.cli_info import human_bytes
from tracefmt.errors import TraceError
from tracefmt.extract import parse_step_range
from tracefmt.jsonout import dumps
from tracefmt.progress import progress_bar
from tracefmt.tablescan import DEFAULT_BLOCK_STEPS

__all__ = ["sql_cmd", "to_parquet_cmd"]


def _steps(ctx: click.Context, param: click.Parameter, value: str | None) -> range | None:
    if value is None:
        return None
    try:
        return parse_step_range(value)
    except TraceError as e:
        raise click.BadParameter(str(e)) from None


def _summary_line(s: ExportSummary) -> str:
    ranks = ", ".join(map(str, s.ranks))
    light = f" and {s.light_steps} light steps" if s.light_steps else ""
    return (
        f"exported {s.full_steps} steps{light} of rank{'s' if len(s.ranks) != 1 else ''} {ranks} "
        f"from {s.source} to {s.output}: {s.rows:,} rows in {len(s.tables)} tables, "
        f"{human_bytes(s.bytes)}, {s.seconds:.1f} s ({s.rows_per_s:,.0f} rows/s)"
    )


@click.command("to-parquet")
@click.argument("run", type=click.Path(exists=True, dir_okay=True))
@click.option(
    "-o", "--output", required=True, type=click.Path(file_okay=False), help="The export directory."
)
@click.option(
    "--rank",
    "ranks",
    type=click.IntRange(min=0),
    multiple=True,
    help="Only this rank (repeat for several; default: every rank with a readable file).",
)
@click.option(
    "--steps",
    callback=_steps,
    default=None,
    metavar="A:B",
    help="Steps to export: A:B (both included), A, A: or :B (default: all).",
)
@click.option(
    "--block-steps",
    type=click.IntRange(min=1),
    default=DEFAULT_BLOCK_STEPS,
    show_default=True,
    help="Steps per step_block partition.",
)
@click.option("--overwrite", is_flag=True, help="Replace the export already in the output directory.")
def to_parquet_cmd(
    run: str,
    output: str,
    ranks: tuple[int, ...],
    steps: range | None,
    block_steps: int,
    overwrite: bool,
) -> None:
    """Write a run's tables as a Parquet dataset for DuckDB, Spark, Trino or Dask.

    Tables steps, ops, tensors, stats, op_timings, events, scalars and light_stats, one directory
    each, partitioned rank=R/step_block=A-B/ (spec/parquet.md); _tracefmt.json says what was
    exported.  For example 'tracefmt to-parquet runs/exp1 -o exp1.parquet', then 'tracefmt sql
    runs/exp1 "SELECT count(*) FROM ops" --parquet exp1.parquet', or point DuckDB, Spark or Dask
    at exp1.parquet/ops.
    """
    options = ExportOptions(
        ranks=ranks or None, steps=steps, block_steps=block_steps, overwrite=overwrite
    )
    with progress_bar("to-parquet", "steps") as progress:
        summary = to_parquet(run, output, options, progress=progress)
    click.echo(_summary_line(summary))
    for rank, why in summary.skipped.items():
        click.echo(f"skipped rank {rank}: {why}", err=True)


def _text(value: Any) -> str:
    return "NULL" if value is None else str(value)


def _print_table(result: QueryResult) -> None:
    console = Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 200)
    table = Table(show_lines=False)
    for name, kind in zip(result.columns, result.types, strict=True):
        numeric = kind.upper() in _NUMERIC
        table.add_column(escape(name), justify="right" if numeric else "left")
    for row in result.rows:
        table.add_row(*(escape(_text(v)) for v in row))
    console.print(table)
    console.print(f"{len(result.rows)} row{'s' if len(result.rows) != 1 else ''}")


_NUMERIC = frozenset(
    [
        "TINYINT",
        "SMALLINT",
        "INTEGER",
        "BIGINT",
        "HUGEINT",
        "UTINYINT",
        "USMALLINT",
        "UINTEGER",
        "UBIGINT",
        "FLOAT",
        "DOUBLE",
    ]
)


def _csv(result: QueryResult) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(result.columns)
    writer.writerows([["" if v is None else v for v in row] for row in result.rows])
    return out.getvalue()


@click.command("sql")
@click.argument("run", type=click.Path(exists=True, dir_okay=True))
@click.argument("query")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as a JSON array of objects.")
@click.option("--csv", "as_csv", is_flag=True, help="Print the rows as CSV with a header line.")
@click.option(
    "--parquet",
    type=click.Path(file_okay=False),
    default=None,
    help="Query this export (made by to-parquet; exported here first when it does not exist). "
    "Default: RUN.parquet next to the run, made or refreshed as needed.",
)
def sql_cmd(run: str, query: str, as_json: bool, as_csv: bool, parquet: str | None) -> None:
    """Run a SQL query (DuckDB) over a run's tables.

    Views: steps, ops, tensors, stats, op_timings, events, scalars, light_stats, each with the
    columns of spec/parquet.md plus rank and step_block.  Without --parquet the run is exported
    to RUN.parquet beside it on first use (again when the run has changed), or to a temporary
    directory when that cannot be written.  For example: tracefmt sql runs/exp1 "SELECT t.name,
    max(s.norm) AS norm FROM stats s JOIN tensors t USING (rank, step, tensor) WHERE t.role =
    'gradient' GROUP BY t.name ORDER BY norm DESC LIMIT 5"
    """
    if as_json and as_csv:
        raise click.UsageError("Choose one of --json and --csv.")
    quiet = as_json or as_csv

    def note(text: str) -> None:
        click.echo(text, err=True)

    with progress_bar("to-parquet", "steps", enabled=not quiet) as progress:
        result = run_sql(run, query, parquet=parquet, progress=progress, note=note)
    if as_json:
        click.echo(dumps(result.records()))
    elif as_csv:
        click.echo(_csv(result), nl=False)
    else:
        _print_table(result)
