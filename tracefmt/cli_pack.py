"""``tracefmt pack RUN -o ARCHIVE`` and ``tracefmt verify ARCHIVE``: thin click layers over
:func:`tracefmt.pack.pack` and :func:`replayer.check.verify.verify`.

The one place ``tracefmt`` reaches above its layer: ``verify`` re-executes steps, which is the
replayer's work (ONNX, ONNX Runtime), yet belongs with ``pack`` in this CLI.  So
:func:`verify_cmd` imports :mod:`replayer.check.verify` when it runs, never at import time, and
says what to install when the replayer cannot be imported; nothing else in ``tracefmt`` imports
``replayer`` or ``onnx``.

A ``TraceError`` (a refused output, a damaged source, a missing plugin or replayer) becomes one line
and exit code 2 at the ``tracefmt`` group.  ``verify`` exits 0 when the archive validates clean and
every re-executed step passed, 1 when not, 2 when it cannot be read.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tracefmt.cli_info import human_bytes
from tracefmt.errors import TraceError
from tracefmt.jsonout import dumps
from tracefmt.pack import PACK_FILTERS, PackSummary, pack
from tracefmt.progress import progress_bar

if TYPE_CHECKING:
    from replayer.check.verify import VerifyReport

__all__ = ["pack_cmd", "verify_cmd"]


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 200)


def _ratio(ratio: float) -> str:
    return f"{ratio:.2f}x smaller" if ratio >= 1 else f"{1 / ratio:.2f}x larger"


def _pack_line(s: PackSummary) -> str:
    graphs = sum(r.graphs_before for r in s.ranks), sum(r.graphs_after for r in s.ranks)
    strings = sum(r.strings_before for r in s.ranks), sum(r.strings_after for r in s.ranks)
    return (
        f"packed {s.steps} step{'s' if s.steps != 1 else ''} of {len(s.ranks)} "
        f"rank{'s' if len(s.ranks) != 1 else ''} from {s.source} ({human_bytes(s.source_bytes)}) "
        f"to {s.output} ({human_bytes(s.output_bytes)}, {_ratio(s.ratio)}, values "
        f"{s.values_filter}) in {s.seconds:.1f} s ({s.mb_per_s:.1f} MB/s); graphs {graphs[0]} -> "
        f"{graphs[1]}, strings {strings[0]} -> {strings[1]}"
        f"{', with run.json' if s.manifest else ''}"
    )


@click.command("pack")
@click.argument("run", type=click.Path(exists=True, dir_okay=True))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False),
    help="The archive: a new run directory.",
)
@click.option(
    "--filter",
    "values_filter",
    type=click.Choice(PACK_FILTERS),
    default=PACK_FILTERS[0],
    show_default=True,
    help="Compressor of the values (blosc2-zstd and zstd need hdf5plugin: "
    "pip install 'tracefmt[archive]'; gzip needs nothing, and is slower).",
)
@click.option("--overwrite", is_flag=True, help="Replace the run already in the output directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def pack_cmd(run: str, output: str, values_filter: str, overwrite: bool, as_json: bool) -> None:
    """Pack a finished run into an archive: a run directory that every reader opens like the
    run, with its values compressed, graphs and strings stored once, its manifest and provenance
    kept, and each rank file's provenance saying what it was packed from ('packed_from': source
    paths, sizes and SHA-256, tracefmt version, filter, time).  Check it with 'tracefmt verify'.
    """
    with progress_bar("pack", "steps", enabled=not as_json) as progress:
        summary = pack(run, output, values_filter=values_filter, overwrite=overwrite, progress=progress)
    if as_json:
        data = dataclasses.asdict(summary)
        data.update(ratio=summary.ratio, mb_per_s=summary.mb_per_s, steps=summary.steps)
        click.echo(dumps(data))
    else:
        click.echo(_pack_line(summary))
    for rank in summary.missing:
        click.echo(
            f"warning: rank {rank} has no file in the source run; it is not in the archive.", err=True
        )


def _render(report: VerifyReport, con: Console) -> None:
    from replayer.check.verify import FAIL, NOT_FAILING, PASS

    verdict_style = {PASS: "green", FAIL: "red"}  # the others yellow
    if report.findings:
        table = Table(title=f"validation: {len(report.findings)} finding(s)", title_justify="left")
        for col in ("rule", "severity", "where", "message"):
            table.add_column(col)
        for f in report.findings:
            table.add_row(f.rule, f.severity, escape(f.location), escape(f.message))
        con.print(table)
    else:
        con.print("validation (deep): no findings")
    table = Table(title="re-execution", title_justify="left")
    for col in ("step", "rank", "mode", "ops", "checked", "skipped", "failed", "verdict", "detail"):
        table.add_column(
            col,
            justify="right"
            if col in ("step", "rank", "ops", "checked", "skipped", "failed")
            else "left",
        )
    for c in report.checks:
        style = verdict_style.get(c.verdict, "yellow")
        table.add_row(
            str(c.step),
            str(c.rank),
            c.mode,
            str(c.ops),
            str(c.checked),
            str(c.skipped),
            str(c.failed),
            f"[{style}]{c.verdict}[/]",
            escape(c.detail),
        )
    con.print(table)
    ran = [c for c in report.checks if c.mode != "-"]
    verdict = "[green]VERIFIED[/]" if report.passed else "[red]FAILED[/]"
    con.print(
        f"{escape(str(report.path))}: {verdict} ({len(report.errors)} validation error(s), "
        f"{len(ran)} re-execution(s), {sum(c.verdict not in NOT_FAILING for c in ran)} failed)"
    )


@click.command("verify")
@click.argument("archive", type=click.Path(exists=True, dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify_cmd(archive: str, as_json: bool) -> None:
    """Check an archive (or any run): 'tracefmt validate --deep', then re-execute every step
    that has recorded values with 'replayer check' (local mode; chain mode too where the step
    holds its leaves: parameters, optimizer state, batch and random draws), and print a table
    of step, rank, mode, ops checked/skipped/failed and verdict.

    Exit status 0: valid and every check passed; 1: a validation error or a failed check;
    2: unreadable, or the replayer (onnx, onnxruntime) is not installed.
    """
    try:
        from replayer.check.verify import verify
    except ImportError as e:
        raise TraceError(
            f"tracefmt verify re-executes steps with the replayer, which needs onnx and onnxruntime, "
            f"but it cannot be imported here ({e}). Install them (pip install onnx onnxruntime), "
            "or run 'tracefmt validate --deep' for the checks that need no re-execution."
        ) from e
    # One bar for both parts (rich draws one live display at a time): chunks, then steps.
    with progress_bar("verify", enabled=not as_json) as progress:
        report = verify(archive, progress=progress, validate_progress=progress)
    if as_json:
        click.echo(
            dumps(
                {
                    "path": str(report.path),
                    "passed": report.passed,
                    "findings": [dataclasses.asdict(f) for f in report.findings],
                    "checks": [dataclasses.asdict(c) for c in report.checks],
                }
            )
        )
    else:
        _render(report, _console())
    if report.exit_code:
        sys.exit(report.exit_code)
