"""The ``tracefmt`` command: ``info``, ``ls``, ``show``, ``dump``, ``validate``.

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
from rich.table import Table

import tracefmt
from tracefmt.errors import TraceError
from tracefmt.jsonout import dumps
from tracefmt.model import OpNode
from tracefmt.reader import Step
from tracefmt.summary import (
    KindBytes,
    dump_tensor,
    find_tensor,
    select_ops,
    shapes_text,
    trace_info,
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


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def _bytes(n: float) -> str:
    k = 0
    while abs(n) >= 1024 and k < len(_UNITS) - 1:
        n /= 1024
        k += 1
    return f"{n:.0f} B" if k == 0 else f"{n:.1f} {_UNITS[k]}"


def _ratio(k: KindBytes) -> str:
    """``2.31x`` (raw over stored), or ``-`` when nothing is stored."""
    return "-" if k.ratio is None else f"{k.ratio:.2f}x"


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


path_arg = click.argument("path", type=click.Path(exists=True, dir_okay=True))
rank_opt = click.option("--rank", type=int, default=None, help="Rank to read (default: lowest).")
json_opt = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


@main.command()
@path_arg
@json_opt
def info(path: str, as_json: bool) -> None:
    """Run, ranks, steps, ops per step, bytes by kind, compression and provenance."""
    with tracefmt.open(path) as trace:
        data = trace_info(trace)
    if as_json:
        out = dataclasses.asdict(data)
        out["raw_bytes"], out["stored_bytes"] = data.raw_bytes, data.stored_bytes
        _json(out)
        return
    con = _console()
    con.print(
        f"[bold]{data.path}[/]  run {data.run_id}  format {data.format_version}  "
        f"world size {data.world_size}  ranks {', '.join(map(str, data.ranks))}"
    )
    prov = ", ".join(f"{k} {v}" for k, v in data.provenance.items() if k not in ("created", "host"))
    con.print(
        f"written {data.provenance.get('created', '?')} on {data.provenance.get('host', '?')} by {prov}"
    )
    ranks = Table(title="Ranks", title_justify="left")
    for col in (
        "rank",
        "steps",
        "first",
        "last",
        "graphs",
        "ops/step",
        "values",
        "NaN steps",
        "Inf steps",
        "events",
        "dropped",
        "filter",
        "file",
    ):
        ranks.add_column(col, justify="right" if col not in ("filter",) else "left")
    for r in data.rank_info:
        ops = (
            f"{r.ops_per_step_min}"
            if r.ops_per_step_min == r.ops_per_step_max
            else f"{r.ops_per_step_min}-{r.ops_per_step_max} (median {r.ops_per_step_median:g})"
        )
        ranks.add_row(
            str(r.rank),
            str(r.steps),
            _num(r.first_step),
            _num(r.last_step),
            str(r.graphs),
            ops,
            str(r.values_recorded),
            str(r.steps_with_nan),
            str(r.steps_with_inf),
            str(r.events),
            str(r.dropped),
            r.values_filter,
            _bytes(r.file_bytes),
        )
    con.print(ranks)
    kinds = Table(title="Bytes by kind (all ranks)", title_justify="left")
    for col in ("kind", "raw", "on disk", "ratio"):
        kinds.add_column(col, justify="right" if col != "kind" else "left")
    for k in data.bytes_by_kind():
        kinds.add_row(k.kind, _bytes(k.raw_bytes), _bytes(k.stored_bytes), _ratio(k))
    total = KindBytes("total", data.raw_bytes, data.stored_bytes)
    kinds.add_row("[bold]total[/]", _bytes(total.raw_bytes), _bytes(total.stored_bytes), _ratio(total))
    con.print(kinds)


@main.command(name="ls")
@path_arg
@rank_opt
@json_opt
@click.option("--all", "show_all", is_flag=True, help="List every step even in long runs.")
def ls_cmd(path: str, rank: int | None, as_json: bool, show_all: bool) -> None:
    """One line per step: ops, tensors, values, NaN/Inf flags, events, dropped records."""
    with tracefmt.open(path) as trace:
        summaries = trace.summaries(rank)
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
    for col in ("step", "rank", "ops", "tensors", "values", "flags", "events", "dropped", "seconds"):
        table.add_column(col, justify="right" if col != "flags" else "left")
    for i, s in enumerate(shown):
        if len(shown) < len(summaries) and i == limit // 2:
            table.add_row("...", "", "", "", "", f"{len(summaries) - limit} more", "", "", "")
        flags = " ".join(f for f, on in (("NaN", s.has_nan), ("Inf", s.has_inf)) if on)
        table.add_row(
            str(s.step),
            str(s.rank),
            str(s.num_ops),
            str(s.num_tensors),
            str(s.num_values),
            flags,
            str(s.num_events),
            str(s.dropped),
            _num(s.duration),
        )
    con = _console()
    con.print(table)
    if len(shown) < len(summaries):
        con.print(
            f"{len(summaries)} steps; showing the first and last {limit // 2} "
            "(--all lists every one, --json prints them all)."
        )


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
    type=click.Choice(["order", "time"]),
    default="order",
    help="Execution order (default) or host time, longest first.",
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
    """The ops of one step in order, with module path, shapes, dtypes and output statistics."""
    with tracefmt.open(path) as trace:
        step = trace.step(step_no, rank)
    ops = select_ops(step, module=module, op=op, phase=phase)
    if sort == "time":
        ops.sort(key=lambda n: -(n.host_ns or 0))
    if limit is not None:
        ops = ops[:limit]
    if as_json:
        _json(
            {
                "step": step.step,
                "rank": step.rank,
                "scalars": step.scalars,
                "events": [dataclasses.asdict(e) for e in step.events],
                "ops": [_op_json(step, n) for n in ops],
            }
        )
        return
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
    ):
        table.add_column(
            col,
            justify="right" if col in ("#", "min", "max", "mean", "norm", "NaN/Inf", "us") else "left",
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
            "-" if n.host_ns is None else f"{n.host_ns / 1000:.1f}",
        )
    con = _console()
    con.print(table)
    if step.scalars:
        con.print("scalars: " + ", ".join(f"{k}={_num(v)}" for k, v in step.scalars.items()))
    for e in step.events:
        con.print(f"event: {e.kind}: {e.message}")


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
@json_opt
def validate(path: str, deep: bool, as_json: bool) -> None:
    """Check a trace against spec/: exit 0 clean, 1 findings, 2 unreadable."""
    from rich.progress import Progress

    from tracefmt.validate import UNREADABLE
    from tracefmt.validate import validate as run_validate

    with Progress(
        transient=True, disable=as_json or not sys.stderr.isatty(), console=Console(stderr=True)
    ) as bar:
        task = bar.add_task("validating", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        findings = run_validate(path, deep=deep, progress=progress)
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
