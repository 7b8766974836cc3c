"""The terminal report of ``replayer ranks`` (rich): verdict, ranks without data, mismatches per
process group, replica findings, where the time went, and which rank the others waited for in
each step's collectives."""

from __future__ import annotations

import math

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from replayer.ranks.findings import Arrival, RanksReport, RankTime

#: Ranks listed one per row in the time table up to this many; beyond, the slowest ones.
MAX_TIME_ROWS = 16
#: Steps without data listed per rank; the rest are counted.
MAX_STEPS_PER_RANK = 3


def _seconds(x: float) -> str:
    if math.isnan(x):
        return "-"
    return f"{x * 1e3:.1f} ms" if x >= 1e-3 else f"{x * 1e6:.0f} us"


def render(report: RanksReport, console: Console) -> None:
    """Print ``report`` to ``console``."""
    steps = report.steps
    span = f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}..{steps[-1]} ({len(steps)})"
    verdict = "[green]consistent[/]" if report.consistent else "[red]findings[/]"
    console.print(
        f"[bold]{escape(report.path)}[/]: {span}, {len(report.ranks)} of "
        f"{len(report.expected_ranks)} ranks readable: {verdict}"
    )
    if report.no_data:
        console.print("\n[bold]Ranks without data[/]")
        shown: dict[int, int] = {}
        for d in report.no_data:
            shown[d.rank] = shown.get(d.rank, 0) + 1
            if shown[d.rank] <= MAX_STEPS_PER_RANK:
                console.print(f"  [yellow]{escape(d.reason)}[/]")
        for rank, n in shown.items():
            if n > MAX_STEPS_PER_RANK:
                console.print(f"  ... and {n - MAX_STEPS_PER_RANK} more steps of rank {rank}")
    # with a rank lacking data, collectives are matched across the ranks that have it
    every = "every rank with data" if report.no_data else "every rank"
    for g in report.groups:
        head = (
            f"\n[bold]group {escape(g.group)}[/] (ranks {_ranks(g.ranks)}): "
            f"{g.matched} of {g.checked} collectives matched on {every}"
        )
        console.print(head)
        for m in g.mismatches:
            console.print(f"  [red]{m.kind}[/] {escape(m.message)}")
        for v in g.values:
            console.print(f"  [red]values[/] {escape(v.message)}")
        if g.omitted:
            console.print(f"  ... and {g.omitted} more findings in this group (--max-mismatches)")
    if report.replicas:
        console.print("\n[bold]Replicas[/]")
        for v in report.replicas:
            console.print(f"  [red]{v.kind}[/] {escape(v.message)}")
            if v.parting is not None:
                console.print(f"    parts at: {escape(v.parting.message)}")
    _times(report, console)
    _arrivals(report, console)
    for note in report.notes:
        console.print(f"[dim]note: {escape(note)}[/]")


def _ranks(ranks: tuple[int, ...]) -> str:
    if len(ranks) > 2 and ranks == tuple(range(ranks[0], ranks[-1] + 1)):
        return f"{ranks[0]}-{ranks[-1]}"
    return ", ".join(map(str, ranks))


def _times(report: RanksReport, console: Console) -> None:
    if not report.times:
        return
    rows: list[RankTime] = list(report.times)
    title = "Time per rank (sum over the steps read)"
    if len(rows) > MAX_TIME_ROWS:
        rows = sorted(rows, key=lambda t: -t.step_time if not math.isnan(t.step_time) else 0)
        rows = rows[:MAX_TIME_ROWS]
        title += f", the {MAX_TIME_ROWS} slowest"
    table = Table(title=title, title_justify="left")
    for col in ("rank", "steps", "step time", "in c10d ops", "c10d ops"):
        table.add_column(col, justify="right")
    slowest = report.slowest_rank
    for t in rows:
        mark = " (slowest)" if t.rank == slowest and len(report.times) > 1 else ""
        table.add_row(
            f"{t.rank}{mark}",
            str(t.steps),
            _seconds(t.step_time),
            _seconds(t.collective_time),
            str(t.collectives),
        )
    console.print()
    console.print(table)


def _arrivals(report: RanksReport, console: Console) -> None:
    """Per step, the collective whose ranks arrived furthest apart, and the rank that came last."""
    rows: list[tuple[int, Arrival]] = [
        (s.step, s.widest_arrival) for s in report.step_times if s.widest_arrival is not None
    ]
    if not rows:
        return
    title = (
        "Arrival at collectives: per step, the collective whose ranks entered it furthest apart "
        "(host start after each rank's own step start; clocks of different hosts are not compared)"
    )
    if len(rows) > MAX_TIME_ROWS:
        rows = sorted(sorted(rows, key=lambda r: -r[1].spread_ns)[:MAX_TIME_ROWS])
        title += f", the {MAX_TIME_ROWS} widest"
    table = Table(title=title, title_justify="left")
    groups = len(report.groups) > 1  # one group: its name is in the group heading above
    for col in ("step", "collective", *(["group"] if groups else []), "spread", "last", "first"):
        table.add_column(col, justify="left" if col in ("collective", "group") else "right")
    for step, a in rows:
        start = dict(a.starts)
        table.add_row(
            str(step),
            escape(f"{a.op.removesuffix('.default')} #{a.seq}"),
            *([escape(a.group)] if groups else []),
            _seconds(a.spread_ns / 1e9),
            f"rank {a.last_rank} at {_seconds(start[a.last_rank] / 1e9)}"
            if a.spread_ns
            else f"all at {_seconds(start[a.last_rank] / 1e9)}",
            f"rank {a.first_rank} at {_seconds(start[a.first_rank] / 1e9)}" if a.spread_ns else "",
        )
    console.print()
    console.print(table)
