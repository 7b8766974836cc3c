"""``tracefmt info RUN [--rank R] [--json]``: thin click layer over :func:`tracefmt.summary.trace_info`.

One row per rank: host, status, steps, light steps (format 1.4), first and last committed step,
graphs, ops per step, values, steps where an op created NaN/Inf and where the state (loss,
parameters, gradients, optimizer state) held some (``--json`` also counts the steps with any NaN
and any Inf), events, dropped records, filter, file size; a damaged or missing rank is a row with
its problem, not an error.  Exit codes: 0 every rank shown read, 1 some rank is damaged or missing
(the rows say which), 2 the run cannot be read at all or a usage error.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import tracefmt
from tracefmt.jsonout import dumps
from tracefmt.packinfo import PackedFrom, parse_packed_from
from tracefmt.summary import RANK_OK, KindBytes, RankInfo, TraceInfo, trace_info

__all__ = ["EXIT_INCOMPLETE", "human_bytes", "info_cmd"]

#: ``tracefmt info``'s exit code when a rank shown is damaged or missing.
EXIT_INCOMPLETE = 1

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(n: float | None) -> str:
    """``1.5 MiB``: a byte count for people (``-`` for None)."""
    if n is None:
        return "-"
    k = 0
    while abs(n) >= 1024 and k < len(_UNITS) - 1:
        n /= 1024
        k += 1
    return f"{n:.0f} B" if k == 0 else f"{n:.1f} {_UNITS[k]}"


def _ratio(k: KindBytes) -> str:
    """``2.31x`` (raw over stored), or ``-`` when nothing is stored."""
    return "-" if k.ratio is None else f"{k.ratio:.2f}x"


def _text(x: object) -> str:
    return "-" if x is None else str(x)


def _ops(r: RankInfo) -> str:
    if r.ops_per_step_min is None:
        return "-"
    if r.ops_per_step_min == r.ops_per_step_max:
        return f"{r.ops_per_step_min}"
    return f"{r.ops_per_step_min}-{r.ops_per_step_max} (median {r.ops_per_step_median:g})"


_COLUMNS = (
    "rank", "host", "status", "steps", "light", "first", "last", "graphs", "ops/step", "values",
    "created", "state", "events", "dropped", "filter", "file",
)  # fmt: skip


def _row(r: RankInfo) -> list[str]:
    status = r.status if r.status == RANK_OK else f"[red]{r.status}[/]"
    numbers = (r.steps, r.light_steps, r.first_step, r.last_step, r.graphs)
    counts = (
        r.values_recorded,
        r.steps_nonfinite_created,
        r.steps_nonfinite_state,
        r.events,
        r.dropped,
    )
    return [
        str(r.rank),
        escape(_text(r.host)),
        status,
        *map(_text, numbers),
        _ops(r),
        *map(_text, counts),
        _text(r.values_filter),
        human_bytes(r.file_bytes),
    ]


def _get(data: Any, key: str) -> Any:
    return data.get(key) if isinstance(data, dict) else None


def provenance_lines(p: dict[str, Any]) -> list[str]:
    """One line each for what produced the run, as the recorder stores it (spec/format.md 4.2.1):
    code, command, numerics, hardware, packages and capture path; keys a file lacks are skipped
    (``--json`` gives everything)."""
    lines = []
    code = _get(p, "code")
    if code:
        state = "clean"
        if _get(code, "dirty"):
            state = f"dirty, diff sha256 {str(_get(code, 'diff_sha256'))[:16]}"
        lines.append(
            f"code: git {str(_get(code, 'commit'))[:12]} on {_get(code, 'branch') or 'no branch'}"
            f" ({state}) in {_get(code, 'root')}"
        )
    command = _get(p, "command")
    if command:
        argv = " ".join(map(str, _get(command, "argv") or []))
        lines.append(f"command: {argv} (in {_get(command, 'cwd')})")
    numerics = _get(p, "numerics")
    if numerics:
        env = " ".join(f"{k}={v}" for k, v in (_get(numerics, "env") or {}).items())
        det = "on" if _get(numerics, "deterministic_algorithms") else "off"
        lines.append(
            f"numerics: deterministic algorithms {det}, float32 matmul "
            f"{_get(numerics, 'float32_matmul_precision')}, threads "
            f"{_get(numerics, 'num_threads')}; env {env or 'none set'}"
        )
    hw = _get(p, "hardware")
    if hw:
        gpus = ", ".join(map(str, _get(hw, "gpus") or [])) or "none in use"
        versions = ", ".join(
            f"{k} {_get(hw, k)}" for k in ("driver", "cuda", "cudnn", "nccl") if _get(hw, k)
        )
        lines.append(
            f"hardware: {_get(hw, 'cpu')} x{_get(hw, 'cpu_count')}; GPUs {gpus}"
            + (f"; {versions}" if versions else "")
        )
    packages = _get(p, "packages")
    if packages:
        named = ", ".join(f"{k} {packages[k]}" for k in ("torch", "numpy") if k in packages)
        lines.append(f"packages: {len(packages)} installed ({named})")
    capture = _get(p, "capture")
    if capture:
        what = "+".join(map(str, _get(capture, "capture") or []))
        lines.append(
            f"capture: engine {_get(capture, 'engine')}, mode {_get(capture, 'mode')}, {what}"
            + (", values" if _get(capture, "values") else "")
        )
    packed = parse_packed_from(p)  # tracefmt pack (spec 4.2.2)
    if isinstance(packed, PackedFrom):
        first = packed.sources[0]
        lines.append(
            f"packed: by {packed.tool} {packed.tracefmt} at {packed.time} with {packed.filter} "
            f"from {first.path} ({first.bytes} bytes, sha256 {first.sha256[:16]}...)"
        )
    elif packed is not None:  # a Problem: TF-PACK-001 reports it too
        lines.append(f"packed: unreadable: {packed.message}")
    return lines


def _print(data: TraceInfo) -> None:
    con = Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 200)
    manifest = "run.json" if data.manifest else "no manifest"
    con.print(
        f"[bold]{escape(data.path)}[/]  run {escape(data.run_id)}  format {data.format_version}  "
        f"world size {data.world_size}  ranks {len(data.ranks)} of {len(data.expected_ranks)} "
        f"readable  ({manifest})",
        soft_wrap=True,
    )
    p = data.provenance
    prov = ", ".join(
        f"{k} {v}" for k, v in p.items() if k not in ("created", "host") and isinstance(v, str)
    )
    con.print(escape(f"written {p.get('created', '?')} on {p.get('host', '?')} by {prov}"))
    for line in provenance_lines(p):
        con.print(escape(line), soft_wrap=True)
    ranks = Table(title="Ranks", title_justify="left")
    for col in _COLUMNS:
        ranks.add_column(col, justify="left" if col in ("host", "status", "filter") else "right")
    for r in data.rank_info:
        ranks.add_row(*_row(r))
    con.print(ranks)
    for r in data.rank_info:
        if r.problem:
            con.print(f"rank {r.rank} {r.status}: {escape(r.problem)}", soft_wrap=True)
    if data.manifest_problem:
        con.print(f"[red]manifest unreadable[/]: {escape(data.manifest_problem)}", soft_wrap=True)
    kinds = Table(title="Bytes by kind (ranks shown)", title_justify="left")
    for col in ("kind", "raw", "on disk", "ratio"):
        kinds.add_column(col, justify="right" if col != "kind" else "left")
    for k in data.bytes_by_kind():
        kinds.add_row(k.kind, human_bytes(k.raw_bytes), human_bytes(k.stored_bytes), _ratio(k))
    total = KindBytes("total", data.raw_bytes, data.stored_bytes)
    kinds.add_row(
        "[bold]total[/]", human_bytes(total.raw_bytes), human_bytes(total.stored_bytes), _ratio(total)
    )
    con.print(kinds)


@click.command(name="info")
@click.argument("path", type=click.Path(exists=True, dir_okay=True))
@click.option("--rank", type=int, default=None, help="Only this rank (default: every rank).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def info_cmd(path: str, rank: int | None, as_json: bool) -> None:
    """Run, ranks, steps, ops per step, bytes by kind, compression and provenance.

    Exit 0 when every rank shown read, 1 when a rank is damaged or missing, 2 when the run
    cannot be read.
    """
    with tracefmt.open(path) as trace:
        data = trace_info(trace, None if rank is None else [rank])
    if as_json:
        out: dict[str, Any] = dataclasses.asdict(data)
        out["raw_bytes"], out["stored_bytes"] = data.raw_bytes, data.stored_bytes
        click.echo(dumps(out))
    else:
        _print(data)
    if not data.complete:
        sys.exit(EXIT_INCOMPLETE)
