"""The ``tracefmt`` command: ``info``, ``ls``, ``show``, ``dump``, ``validate``, ``extract``.

Thin by design: each command parses, calls a library function, prints.  A ``TraceError`` anywhere
becomes one line on stderr and exit code 2 (``validate`` exits 1 for findings).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import tracefmt
from tracefmt.analysis.cli import sql_cmd, to_parquet_cmd
from tracefmt.cli_extract import extract_cmd
from tracefmt.cli_info import info_cmd
from tracefmt.cli_pack import pack_cmd, verify_cmd
from tracefmt.cli_trace import export_trace_cmd
from tracefmt.errors import TraceError
from tracefmt.jsonout import dumps
from tracefmt.model import OpNode
from tracefmt.reader import Step, StepSummary
from tracefmt.summary import (
    OP_ORDERS,
    dump_tensor,
    find_tensor,
    run_summaries,
    select_ops,
    shapes_text,
    sort_ops,
)

EXIT_FINDINGS = 1
EXIT_ERROR = 2


class TraceErrorGroup(click.Group):
    """Turns every TraceError (and I/O error) into one line and exit code 2.  Shared by the
    ``tracefmt`` and ``replayer`` commands."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TraceError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(EXIT_ERROR)
        except OSError as e:
            click.echo(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), err=True)
            ctx.exit(EXIT_ERROR)


def _console() -> Console:
    # Piped output gets a wide page rather than rich's 80-column default.
    return Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 200)


def _json(data: Any) -> None:
    """Print ``data`` as strict JSON (non-finite numbers as ``"inf"``, ``"-inf"``, ``"nan"``)."""
    click.echo(dumps(data))


def _num(x: float | int | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, int):
        return str(x)
    if math.isnan(x) or math.isinf(x):
        return str(x)
    return f"{x:.4g}"


@click.group(cls=TraceErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(tracefmt.__version__, prog_name="tracefmt")
def main() -> None:
    """Inspect and check tracefmt trace files (a rank file or a run directory)."""


main.add_command(extract_cmd)
main.add_command(info_cmd)
main.add_command(export_trace_cmd)
main.add_command(to_parquet_cmd)
main.add_command(sql_cmd)
main.add_command(pack_cmd)
main.add_command(verify_cmd)

path_arg = click.argument("path", type=click.Path(exists=True, dir_okay=True))
rank_opt = click.option("--rank", type=int, default=None, help="Rank to read (default: lowest).")
ranks_opt = click.option("--rank", type=int, default=None, help="Only this rank (default: every rank).")
json_opt = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


@main.command(name="ls")
@path_arg
@ranks_opt
@json_opt
@click.option("--all", "show_all", is_flag=True, help="List every step even in long runs.")
def ls_cmd(path: str, rank: int | None, as_json: bool, show_all: bool) -> None:
    """One line per step and rank, full or light: ops, tensors, values, non-finite values an op
    created or the state holds, events, dropped records.

    Ranks whose file is damaged or missing are named on stderr.  ``--json`` also has each step's
    raw ``has_nan`` and ``has_inf`` (an attention mask's -inf sets them every step)."""
    with tracefmt.open(path) as trace:
        summaries = run_summaries(trace, rank)
        for r, why in trace.damaged_ranks.items() if rank is None else ():
            click.echo(f"warning: rank {r} is damaged: {why}", err=True)
        for r in trace.missing_ranks if rank is None else ():
            click.echo(f"warning: rank {r} has no file (the run expects it).", err=True)
    if as_json:
        _json([dataclasses.asdict(s) for s in summaries])
        return
    limit = 40
    shown = (
        summaries
        if show_all or len(summaries) <= limit
        else (summaries[: limit // 2] + summaries[-limit // 2 :])
    )
    table = Table()
    columns = ("step", "rank", "kind", "ops", "tensors", "values", "non-finite", "events")
    for col in (*columns, "dropped", "seconds"):
        table.add_column(col, justify="left" if col in ("kind", "non-finite", "events") else "right")
    for i, s in enumerate(shown):
        if len(shown) < len(summaries) and i == limit // 2:
            more = f"{len(summaries) - limit} more"
            table.add_row("...", "", "", "", "", "", more, "", "", "")
        full = s if isinstance(s, StepSummary) else None
        sizes = ("-",) * 3 if full is None else (full.num_ops, full.num_tensors, full.num_values)
        table.add_row(
            str(s.step),
            str(s.rank),
            s.kind,
            *map(str, sizes),
            _nonfinite(s.nonfinite_created, s.nonfinite_state),
            _events(s.num_events, s.event_kinds),
            "-" if full is None else str(full.dropped),
            _num(s.duration),
        )
    con = _console()
    con.print(table)
    if len(shown) < len(summaries):
        con.print(
            f"{len(summaries)} steps; showing the first and last {limit // 2} "
            "(--all lists every one, --json prints them all)."
        )


def _nonfinite(created: bool, state: bool) -> str:
    """``created state``: the step flags of spec section 6.5 that matter (format 1.4)."""
    return " ".join(word for word, on in (("[red]created[/]", created), ("[red]state[/]", state)) if on)


def _events(n: int, kinds: tuple[str, ...]) -> str:
    """``2: loss_spike, note``: the number of events and their kinds."""
    return str(n) if not kinds else f"{n}: {escape(', '.join(dict.fromkeys(kinds)))}"


def _us(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1000:.1f}"


def _op_json(step: Step, node: OpNode) -> dict[str, Any]:
    out = dataclasses.asdict(node)
    out["phase"] = node.phase.label
    out["outputs_stats"] = [
        None if step.tensors[t].stats is None else dataclasses.asdict(step.tensors[t].stats)  # type: ignore[arg-type]
        for t in node.outputs
    ]
    return out


@main.command()
@path_arg
@click.option("--step", "step_no", type=int, required=True, help="Step number to show.")
@rank_opt
@click.option("--module", default=None, help="Only ops whose module path matches this glob.")
@click.option("--op", default=None, help="Only ops whose name matches this glob (e.g. 'mm*').")
@click.option(
    "--phase",
    type=click.Choice(["forward", "backward", "optimizer", "other"]),
    default=None,
    help="Only ops of this phase.",
)
@click.option(
    "--sort",
    type=click.Choice(OP_ORDERS),
    default="order",
    help="Execution order (default), host time (longest first) or memory (most bytes first).",
)
@click.option("--limit", type=int, default=None, help="Show at most this many ops.")
@json_opt
def show(
    path: str,
    step_no: int,
    rank: int | None,
    module: str | None,
    op: str | None,
    phase: str | None,
    sort: str,
    limit: int | None,
    as_json: bool,
) -> None:
    """The ops of one step in order, with module path, shapes, dtypes and output statistics, and
    the step's RNG states (--json: their bytes in base64)."""
    with tracefmt.open(path) as trace:
        step = trace.step(step_no, rank)
    ops = sort_ops(select_ops(step, module=module, op=op, phase=phase), sort)
    if limit is not None:
        ops = ops[:limit]
    if as_json:
        _json(
            {
                "step": step.step,
                "rank": step.rank,
                "scalars": step.scalars,
                "events": [dataclasses.asdict(e) for e in step.events],
                "rng_states": [s.as_json() for s in step.rng_states],  # format 1.6
                "ops": [_op_json(step, n) for n in ops],
            }
        )
        return
    starts = any(n.host_start_ns is not None for n in ops)  # format 1.3: when each op started
    memory = any(n.mem_bytes is not None for n in ops)
    table = Table(
        title=f"step {step.step}, rank {step.rank}: {len(ops)} of {len(step.ops)} ops",
        title_justify="left",
    )
    for col in (
        "#",
        "phase",
        "module",
        "op",
        "inputs",
        "outputs",
        "min",
        "max",
        "mean",
        "norm",
        "NaN/Inf",
        "us",
        *(["start us"] if starts else []),
        *(["bytes"] if memory else []),
    ):
        table.add_column(
            col, justify="left" if col in ("phase", "module", "op", "inputs", "outputs") else "right"
        )
    for n in ops:
        out = step.tensors[n.outputs[0]] if n.outputs else None
        st = out.stats if out is not None else None
        bad = (
            ""
            if st is None or st.nan is None
            else (f"[red]{st.nan}/{st.inf}[/]" if (st.nan or st.inf) else "0/0")
        )
        table.add_row(
            str(n.index),
            n.phase.label,
            n.module or "-",
            n.name.removeprefix("aten::"),
            shapes_text([step.tensors[t] for t in n.inputs]),
            shapes_text([step.tensors[t] for t in n.outputs]),
            _num(st.min if st else None),
            _num(st.max if st else None),
            _num(st.mean if st else None),
            _num(st.norm if st else None),
            bad,
            _us(n.host_ns),
            *([_us(n.host_start_ns)] if starts else []),
            *([_num(n.mem_bytes)] if memory else []),
        )
    con = _console()
    con.print(table)
    if step.scalars:
        con.print("scalars: " + ", ".join(f"{k}={_num(v)}" for k, v in step.scalars.items()))
    for e in step.events:
        con.print(f"event: {e.kind}: {e.message}")
    if step.rng_states:  # format 1.6
        rng = ", ".join(f"{s.device} ({len(s.state)} bytes)" for s in step.rng_states)
        con.print(f"RNG states at the step's start: {rng}")


@main.command()
@path_arg
@click.option("--step", "step_no", type=int, required=True, help="Step number.")
@click.option("--tensor", "tensor_key", required=True, help="Tensor id or name.")
@rank_opt
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .npy file.")
@click.option("--raw", is_flag=True, help="Write bfloat16/float8 as their stored bits.")
def dump(path: str, step_no: int, tensor_key: str, rank: int | None, output: str, raw: bool) -> None:
    """Write one tensor's recorded values to a .npy file (no pickle)."""
    with tracefmt.open(path) as trace:
        tensor = find_tensor(trace.step(step_no, rank), tensor_key)
        out = dump_tensor(tensor, output, raw=raw)
    click.echo(
        f"wrote tensor {tensor.index} ({tensor.name or 'unnamed'}, {tensor.dtype.label}"
        f"{list(tensor.shape)}) to {out}"
    )


@main.command()
@path_arg
@click.option("--deep", is_flag=True, help="Also read every chunk and check every fingerprint.")
@ranks_opt
@json_opt
def validate(path: str, deep: bool, rank: int | None, as_json: bool) -> None:
    """Check a trace against spec/: exit 0 clean, 1 findings, 2 unreadable."""
    from tracefmt.progress import progress_bar
    from tracefmt.validate import UNREADABLE
    from tracefmt.validate import validate as run_validate

    with progress_bar("validating", enabled=not as_json) as progress:
        ranks = None if rank is None else [rank]
        findings = run_validate(path, deep=deep, progress=progress, ranks=ranks)
    if as_json:
        _json([dataclasses.asdict(f) for f in findings])
    elif findings:
        table = Table(title=f"{len(findings)} finding(s) in {path}", title_justify="left")
        for col in ("rule", "severity", "where", "message"):
            table.add_column(col)
        for f in findings:
            table.add_row(f.rule, f.severity, f.location, f.message)
        _console().print(table)
    else:
        click.echo(f"{path}: valid ({'deep' if deep else 'structural'} check, no findings)")
    if any(f.rule == UNREADABLE for f in findings):
        sys.exit(EXIT_ERROR)
    if findings:
        sys.exit(EXIT_FINDINGS)


if __name__ == "__main__":
    main()
