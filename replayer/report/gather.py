"""What ``replayer report`` shows, read from a run: typed sections, no HTML.

:func:`overview` reads the run's provenance and per-rank counts (``tracefmt info``'s data);
:func:`focus_step` picks the step the page details (the first event's step, else the full step of
median duration); :func:`costly_ops` totals that step's op times and bytes by op and module;
:func:`why_fragment` renders ``replayer why``'s explanation of every trigger event, and
:func:`summary_fragment` ``replayer summary``'s table of the model, as HTML.
"""

from __future__ import annotations

import io
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Console

import tracefmt
from tracefmt.reader import Step, Trace
from tracefmt.summary import TraceInfo, trace_info

if TYPE_CHECKING:
    from replayer.summary import ModelSummary

__all__ = [
    "OpCost",
    "Overview",
    "costly_ops",
    "focus_step",
    "overview",
    "summary_fragment",
    "why_fragment",
]


@dataclass(frozen=True)
class Overview:
    """The page's header: what the run is and what it holds."""

    path: str
    run_id: str
    world_size: int
    format_version: str
    provenance: dict[str, Any]
    #: rank -> ``ok`` or its problem (damaged, missing)
    rank_status: dict[int, str]
    full_steps: int
    light_steps: int
    first_step: int | None
    last_step: int | None
    events: int
    steps_nonfinite_created: int
    steps_nonfinite_state: int
    median_step_s: float | None


@dataclass(frozen=True)
class OpCost:
    """One op (by name, module and phase) of the detailed step: its calls, host time, bytes."""

    name: str
    module: str
    phase: str
    calls: int
    host_ms: float
    share: float  #: of the step's measured host time, 0..1
    mem_bytes: int | None  #: bytes its outputs allocated; None when not measured


def overview(trace: Trace, info: TraceInfo | None = None) -> Overview:
    """The run's header (``info``: :func:`tracefmt.summary.trace_info`, read when not given)."""
    info = info or trace_info(trace)
    rows = [r for r in info.rank_info if r.problem is None]
    status = {r.rank: "ok" if r.problem is None else r.problem for r in info.rank_info}
    durations = [s.duration for r in trace.ranks for s in trace.summaries(r) if s.duration > 0]
    firsts = [r.first_step for r in rows if r.first_step is not None]
    lasts = [r.last_step for r in rows if r.last_step is not None]
    return Overview(
        path=info.path,
        run_id=info.run_id,
        world_size=info.world_size,
        format_version=info.format_version,
        provenance=info.provenance,
        rank_status=status,
        full_steps=sum(r.steps or 0 for r in rows),
        light_steps=sum(r.light_steps or 0 for r in rows),
        first_step=min(firsts) if firsts else None,
        last_step=max(lasts) if lasts else None,
        events=sum(r.events or 0 for r in rows),
        steps_nonfinite_created=sum(r.steps_nonfinite_created or 0 for r in rows),
        steps_nonfinite_state=sum(r.steps_nonfinite_state or 0 for r in rows),
        median_step_s=statistics.median(durations) if durations else None,
    )


def focus_step(trace: Trace, rank: int, step: int | None = None) -> int | None:
    """The full step of ``rank`` the page details: ``step`` when given (a TraceError when the
    rank has no full step there), else the first step with an event, else the step of median
    duration; None when the rank has no full step."""
    summaries = trace.summaries(rank)
    if step is not None:
        if step not in {s.step for s in summaries}:
            have = ", ".join(str(s.step) for s in summaries[:20]) or "none"
            raise tracefmt.TraceError(
                f"Rank {rank} has no full step {step} (its full steps: {have}); "
                "choose one of them with --step."
            )
        return step
    if not summaries:
        return None
    with_events = [s.step for s in summaries if s.num_events]
    if with_events:
        return with_events[0]
    ordered = sorted(summaries, key=lambda s: (s.duration, s.step))
    return ordered[(len(ordered) - 1) // 2].step


def costly_ops(step: Step, limit: int = 15) -> list[OpCost]:
    """The ``limit`` costliest ops of ``step`` by total host time, grouped by op, module and
    phase (the 12 layers' ``aten::mm`` of one module path are one row per path)."""
    groups: dict[tuple[str, str, str], list[int]] = {}
    mem: dict[tuple[str, str, str], int] = {}
    for op in step.ops:
        key = (op.name, op.module, op.phase.label)
        acc = groups.setdefault(key, [0, 0])
        acc[0] += 1
        acc[1] += max(op.host_ns or 0, 0)
        if op.mem_bytes is not None and op.mem_bytes >= 0:
            mem[key] = mem.get(key, 0) + op.mem_bytes
    total = sum(ns for _, ns in groups.values()) or 1
    rows = sorted(groups.items(), key=lambda kv: (-kv[1][1], kv[0]))[:limit]
    return [
        OpCost(name, module, phase, calls, ns / 1e6, ns / total, mem.get((name, module, phase)))
        for (name, module, phase), (calls, ns) in rows
    ]


def _rich_html(draw: Callable[[Console], None], width: int = 110) -> str:
    """What ``draw`` prints on a rich console, as HTML with its colours as inline styles."""
    console = Console(record=True, width=width, file=io.StringIO(), color_system="truecolor")
    draw(console)
    return console.export_html(inline_styles=True, code_format='<pre class="rich">{code}</pre>')


def why_fragment(trace: Trace, ranks: Sequence[int] | None = None) -> tuple[int, str]:
    """(events explained, HTML) of ``replayer why``'s report on ``trace`` (every rank, or the
    one rank of ``ranks`` when it names one): the terminal report as rich renders it."""
    from replayer.why import WhyOptions, explain, render

    rank = ranks[0] if ranks is not None and len(ranks) == 1 else None
    report = explain(trace, WhyOptions(rank=rank))
    return len(report.explanations), _rich_html(lambda c: render(report, c))


def summary_fragment(
    trace: Trace, rank: int, step: int, depth: int | None = 3
) -> tuple[ModelSummary, str]:
    """``replayer summary``'s table of ``step`` of ``rank`` (modules at most ``depth`` deep), as
    HTML, and the summary itself."""
    from replayer.summary import render_summary, summarize_step

    summary = summarize_step(trace.step(step, rank), trace.modules(step, rank), trace=str(trace.path))
    return summary, _rich_html(lambda c: render_summary(summary, c, depth=depth), width=150)
