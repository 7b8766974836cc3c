"""The ``replayer`` command.  Thin: parse, call the library, print.

A ``TraceError`` (``ReplayError`` included) becomes one line on stderr and exit code 2.
``check`` exits 0 when every checked op matched, 1 when one did not; ``ranks`` 0 when the ranks
are consistent, 1 when it has findings; ``why`` 0 when the run has no trigger event, 1 when it
explains some.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

import tracefmt
from replayer.cli_diff import diff
from replayer.errors import ReplayError
from replayer.export.mapping import PHASES
from replayer.plots.cli import dist, timeline
from replayer.report.cli import report_cmd
from replayer.summary.cli import summary
from replayer.view.cli import view
from tracefmt.cli import TraceErrorGroup
from tracefmt.jsonout import dumps
from tracefmt.progress import progress_bar

EXIT_MISMATCH = 1


@click.group(cls=TraceErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(tracefmt.__version__, prog_name="replayer")
def main() -> None:
    """Rebuild, view, check and diff recorded training steps, compare ranks, explain trigger
    events and report on whole runs, without torch."""


main.add_command(diff)
main.add_command(report_cmd)
main.add_command(summary)
main.add_command(view)
main.add_command(timeline)
main.add_command(dist)


_step = click.option("--step", "step_no", type=int, required=True, help="Step number.")
_rank = click.option("--rank", type=int, default=None, help="Rank (default: lowest).")
_module = click.option("--module", default=None, help="Only ops in modules matching this glob.")


def _depth_option(default_help: str) -> Callable[[Any], Any]:
    return click.option(
        "--depth",
        type=int,
        default=None,
        help=f"Fold modules deeper than this into expandable Module nodes ({default_help}).",
    )


@main.command()
@click.argument("trace", type=click.Path(exists=True))
@_step
@_rank
@click.option("--phase", type=click.Choice(PHASES), default="all", show_default=True)
@_module
@_depth_option("default: flat, every op a node")
@click.option(
    "--no-values", is_flag=True, help="Leave recorded values out (graph inputs, not initializers)."
)
@click.option(
    "--split-saved",
    is_flag=True,
    help="Draw forward tensors read by backward ops as separate inputs (faster in Netron).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx", "explorer"]),
    default="onnx",
    show_default=True,
    help="explorer: Model Explorer graph JSON, with overlay files <name>.<overlay>.json next to it.",
)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
def export(
    trace: str,
    step_no: int,
    rank: int | None,
    phase: str,
    module: str | None,
    depth: int | None,
    no_values: bool,
    split_saved: bool,
    fmt: str,
    output: str,
) -> None:
    """Export one recorded step as an ONNX model, or as Model Explorer graph JSON."""
    from replayer.export.build import export_step, save_model

    if fmt == "explorer":
        if depth is not None or no_values or split_saved:
            raise click.UsageError("--depth, --no-values and --split-saved apply to ONNX only.")
        from replayer.view.cli import echo_explorer_export

        echo_explorer_export(trace, step_no, rank, phase, module, output)
        return

    data_path = Path(output).with_name(Path(output).name + ".data")
    with tracefmt.open(trace) as t, progress_bar("export", "ops") as progress:
        model, stats = export_step(
            t,
            step_no,
            rank=rank,
            phase=phase,
            module=module,
            depth=depth,
            with_values=not no_values,
            split_saved=split_saved,
            progress=progress,
            external_data=data_path,
        )
    save_model(model, output)
    extra = f" (values in {data_path.name})" if stats.external else ""
    modules = f", {stats.modules} Module nodes" if stats.modules else ""
    custom = stats.ops - stats.standard
    kinds = len(stats.custom)
    custom_text = (
        f", {custom} as custom nodes of {kinds} op type{'s' if kinds != 1 else ''}" if custom else ""
    )
    click.echo(
        f"wrote {output}{extra}: {stats.ops} ops, {stats.standard} as standard ONNX"
        f"{custom_text}{modules}"
    )


def _parse_feeds(feeds: tuple[str, ...]) -> dict[str, np.ndarray]:
    out = {}
    for item in feeds:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ReplayError(f"--feed {item!r} is not NAME=FILE.npy.")
        try:
            out[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ReplayError(f"--feed {name}: cannot read {path!r} as a .npy array: {e}") from e
    return out


@main.command()
@click.argument("trace", type=click.Path(exists=True))
@_step
@_rank
@click.option("--phase", type=click.Choice(PHASES), default="all", show_default=True)
@_module
@click.option(
    "--chain",
    is_flag=True,
    help="Feed each op its producers' replayed outputs, not the "
    "recorded ones (errors accumulate along the step).",
)
@click.option(
    "--feed",
    "feeds",
    multiple=True,
    metavar="NAME=FILE.npy",
    help="What-if: replace a recorded tensor (implies --chain); repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("-v", "--verbose", is_flag=True, help="List every op, not only failures.")
def check(
    trace: str,
    step_no: int,
    rank: int | None,
    phase: str,
    module: str | None,
    chain: bool,
    feeds: tuple[str, ...],
    as_json: bool,
    verbose: bool,
) -> None:
    """Re-run a recorded step in ONNX Runtime and compare every op with the record.

    Exit status 0: every checked op matched; 1: at least one did not (a what-if never fails).
    """
    from replayer.check.checker import check_step

    arrays = _parse_feeds(feeds)
    with tracefmt.open(trace) as t, progress_bar("check", "ops", enabled=not as_json) as progress:
        report = check_step(
            t,
            step_no,
            rank=rank,
            phase=phase,
            module=module,
            chain=chain,
            feeds=arrays,
            progress=progress,
        )
    if as_json:
        click.echo(dumps(report.to_json(), indent=1))
    else:
        from rich.console import Console

        from replayer.check.report import render

        render(report, Console(), verbose=verbose)
    if not report.passed and not arrays:
        sys.exit(EXIT_MISMATCH)


@main.command()
@click.argument("run", type=click.Path(exists=True))
@click.option("--step", "step_no", type=int, default=None, help="Step number (default: every step).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--max-mismatches",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Findings kept per process group.",
)
@click.option(
    "--max-arrivals",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Collectives kept per process group with each rank's arrival time (--json).",
)
def ranks(run: str, step_no: int | None, as_json: bool, max_mismatches: int, max_arrivals: int) -> None:
    """Check a run's ranks against each other: collectives matched per process group, the
    numbers replicas should share, per-rank step and collective time, and (traces of format 1.3)
    which rank arrived last at each step's collectives, the others waiting for it.  Arrival times
    are host times after each rank's own step start: clocks of different hosts are not compared.

    Exit status 0: consistent; 1: findings (a mismatch, a rank without data, replicas that differ).
    """
    from replayer.ranks import check_ranks

    with tracefmt.open(run) as t, progress_bar("ranks", "ranks") as progress:
        report = check_ranks(
            t,
            step_no,
            max_mismatches=max_mismatches,
            max_arrivals=max_arrivals,
            progress=progress,
        )
    if as_json:
        click.echo(dumps(report.to_json(), indent=1))
    else:
        from rich.console import Console

        from replayer.ranks import render

        render(report, Console())
    if not report.consistent:
        sys.exit(EXIT_MISMATCH)


@main.command()
@click.argument("trace", type=click.Path(exists=True))
@click.option("--rank", type=click.IntRange(min=0), default=None, help="Only this rank's events.")
@click.option(
    "--step", "step_no", type=click.IntRange(min=0), default=None, help="Only this step's events."
)
@click.option(
    "--spike-ratio",
    type=click.FloatRange(min=1, min_open=True),
    default=None,
    help="Spikes: a tensor departed when its norm or largest magnitude changed by this factor "
    "(default 3).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def why(
    trace: str, rank: int | None, step_no: int | None, spike_ratio: float | None, as_json: bool
) -> None:
    """Explain each trigger event of a flight-recorded run: where the NaN/Inf entered, or where
    a spike's statistics departed from the step before (op or module, its numbers at that step
    and the one before, the path to the loss), which rank saw it first, and how to record that
    step again in full from a checkpoint.

    Exit status 0: no trigger event; 1: events explained.
    """
    from replayer.why import WhyOptions, explain

    options = WhyOptions(rank=rank, step=step_no)
    if spike_ratio is not None:  # else WhyOptions' default
        options = dataclasses.replace(options, spike_ratio=spike_ratio)
    with tracefmt.open(trace) as t:
        report = explain(t, options)
    if as_json:
        click.echo(dumps(report.to_json(), indent=1))
    else:
        from rich.console import Console

        from replayer.why import render

        render(report, Console())
    if report.has_events:
        sys.exit(EXIT_MISMATCH)


if __name__ == "__main__":
    main()
