"""The terminal report of ``replayer why`` (rich): one section per step of a rank with events.

Each section lists the step's events, the cause in a sentence, a table of the numbers at the
cause (inputs and outputs at that step, the same op or module at the step before), the cause
found in earlier steps, the path to the loss, the rank that saw it first, and how to record the
step again in full.
"""

from __future__ import annotations

import math

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from replayer.why.explained import Cause, Explanation, FirstSeen, Site, TensorNumbers, WhyReport

__all__ = ["render"]


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{x:.4g}"


def _count(x: int | None) -> str:
    return "-" if x is None else str(x)


def _first(seen: FirstSeen | None) -> str:
    if seen is None:
        return "-"
    via = " (from a remote trigger)" if seen.source == "remote_trigger" else ""
    return f"rank {seen.rank} at step {seen.step} ({seen.how}: {seen.kind}){via}"


def _row(table: Table, where: str, side: str, n: TensorNumbers) -> None:
    name = n.name or (f"#{n.tensor}" if n.tensor is not None else "")
    if n.view_of:
        name += f" = view of {n.view_of}"
    table.add_row(
        where,
        side,
        f"{escape(name)} [dim]{n.role}[/]",
        "" if n.shape is None else "x".join(map(str, n.shape)) or "()",
        _num(n.min),
        _num(n.max),
        _num(n.norm),
        _count(n.nan),
        _count(n.inf),
        style="red" if n.nan or n.inf else None,
    )


def _numbers(cause: Cause) -> Table:
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for col in ("step", "", "tensor", "shape", "min", "max", "norm", "nan", "inf"):
        numeric = col in ("min", "max", "norm", "nan", "inf")
        table.add_column(
            col,
            justify="right" if numeric else "left",
            overflow="fold",
            no_wrap=col != "tensor",
            ratio=3 if col == "tensor" else None,
        )
    sites: list[Site] = [cause.at, *([cause.before] if cause.before is not None else [])]
    for s in sites:
        where = str(s.step)
        for n in s.inputs:
            _row(table, where, "in", n)
        for n in s.outputs:
            _row(table, where, "out", n)
    return table


def _cause(console: Console, label: str, cause: Cause) -> None:
    console.print(f"  [bold]{label}[/] [cyan]{cause.kind}[/]: {escape(cause.description)}")
    console.print(f"    at {escape(cause.at.label)}, step {cause.at.step} ({cause.at.capture})")
    if cause.before is not None:
        console.print(f"    step before: {escape(cause.before.label)}, step {cause.before.step}")
    if cause.at.inputs or cause.at.outputs or cause.before is not None:
        console.print(_numbers(cause), soft_wrap=True)


def _path(e: Explanation) -> str:
    parts = []
    for k, link in enumerate(e.path):
        if e.path_elided and k == (len(e.path) + 1) // 2:
            parts.append(f"... {e.path_elided} more ...")
        where = link.module or "<top>"
        name = "" if link.name is None else link.name.rpartition("::")[2] + " "
        parts.append(f"{name}({where})" if name else where)
    return " -> ".join(parts)


def _section(console: Console, group: list[Explanation]) -> None:
    e = group[0]
    kinds = ", ".join(x.kind for x in group)
    head = f"\n[bold]rank {e.rank}, step {e.step}[/] ({e.capture} step, {e.category})"
    console.print(f"{head}: [yellow]{escape(kinds)}[/]")
    for x in group:
        if x.reason:
            console.print(f"  - {escape(x.reason)}")
    if e.cause is not None:
        _cause(console, "origin", e.cause)
    if e.earlier is not None:
        _cause(console, "earlier", e.earlier)
    if e.path:
        console.print(f"  [bold]path to the loss[/]: {escape(_path(e))}")
    console.print(f"  [bold]seen first[/] by {_first(e.first_seen)}")
    for note in dict.fromkeys(n for x in group for n in x.notes):
        console.print(f"  [dim]note: {escape(note)}[/]")
    console.print("  [bold]record it again in full[/] (from your checkpoint):")
    for line in e.rerecord.python.rstrip().splitlines():
        console.print(f"    {escape(line)}", highlight=False)
    for command in e.rerecord.commands:
        console.print(f"    $ {escape(command)}", highlight=False)


def render(report: WhyReport, console: Console) -> None:
    """Print ``report`` to ``console``."""
    if not report.explanations:
        narrowed = [
            f"{k} {v}"
            for k, v in (("rank", report.options.rank), ("step", report.options.step))
            if v is not None
        ]
        where = f" ({', '.join(narrowed)})" if narrowed else ""
        console.print(f"[bold]{escape(report.path)}[/]: [green]no trigger event[/]{where}.")
    else:
        n = len(report.explanations)
        console.print(
            f"[bold]{escape(report.path)}[/]: {n} trigger event{'s' if n != 1 else ''}; "
            f"seen first by {_first(report.first_seen)}"
        )
    groups: dict[tuple[int, int, str], list[Explanation]] = {}
    for e in report.explanations:
        groups.setdefault((e.rank, e.step, e.category), []).append(e)
    for group in groups.values():
        _section(console, group)
    for note in report.notes:
        console.print(f"[dim]note: {escape(note)}[/]")
