"""Rules about when each op started (format 1.3): the ``op_starts`` table.

Row r of ``op_starts`` belongs to row r of ``op_stats``: a step's start times are its op_stats
range of ``op_starts``.  A file older than 1.3 has no such table, and these rules have nothing to
check in it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from tracefmt import _layout as L
from tracefmt.rules._base import Issue, Skip, rule
from tracefmt.rules._context import FileContext
from tracefmt.rules._views import StepRef

#: Nanoseconds an op may end after its step's ``duration``: the rounding of a duration stored as
#: float64 seconds (below 1 ns for any step shorter than a week).
END_SLACK_NS = 1000


def _starts(ctx: FileContext, ref: StepRef) -> np.ndarray | None:
    """Step ``ref``'s ``host_start_ns`` values, one per op_stats row; None when the file predates
    1.3, the step has no op rows, or a range is invalid (TF-STEP-002, TF-OPSTART-001)."""
    span = ref.ranges[L.OP_STATS]
    if not span.count or not L.has_dataset(L.OP_STARTS, ctx.minor):
        return None
    try:
        if not ctx.range_ok(L.OP_STATS, span.start, span.count):
            return None
        if not ctx.range_ok(L.OP_STARTS, span.start, span.count):
            return None
    except Skip:
        return None
    starts: np.ndarray = ctx.rows(L.OP_STARTS, span.start, span.count)["host_start_ns"]
    return starts


@rule("TF-OPSTART-001", "op_starts has a row for every op_stats row of a committed step")
def op_start_rows(ctx: FileContext) -> Iterator[Issue]:
    if not L.has_dataset(L.OP_STARTS, ctx.minor):
        return
    n = ctx.length(L.OP_STARTS)
    for ref in ctx.steps():
        span = ref.ranges[L.OP_STATS]
        if not span.count or not ctx.range_ok(L.OP_STATS, span.start, span.count):
            continue  # no op rows, or TF-STEP-002
        if not ctx.range_ok(L.OP_STARTS, span.start, span.count):
            yield Issue(
                ctx.loc(L.STEPS, ref.row, ref.step),
                f"The step's op_stats rows {span.start}..{span.start + span.count} have no rows "
                f"of /{L.OP_STARTS}, which has {n}; every op_stats row needs its start time.",
            )


@rule("TF-OPSTART-002", "op start times are -1 or >= 0")
def op_start_values(ctx: FileContext) -> Iterator[Issue]:
    for ref in ctx.steps():
        starts = _starts(ctx, ref)
        if starts is None:
            continue
        for i in np.flatnonzero(starts < -1).tolist():
            yield Issue(
                ctx.loc(L.OP_STARTS, ref.ranges[L.OP_STATS].start + i, ref.step),
                f"Op {i} starts at {int(starts[i])} ns; a start is -1 (not measured) or >= 0.",
            )


@rule("TF-OPSTART-003", "An op starts and ends within its step's duration")
def op_start_within_step(ctx: FileContext) -> Iterator[Issue]:
    for ref in ctx.steps():
        starts = _starts(ctx, ref)
        if starts is None or not np.isfinite(ref.duration) or ref.duration < 0:
            continue
        host = ctx.rows(L.OP_STATS, ref.ranges[L.OP_STATS].start, len(starts))["host_ns"]
        # in float64: the int64 sum of two hostile values could wrap
        ends = starts.astype(np.float64) + np.maximum(host, 0).astype(np.float64)
        limit = ref.duration * 1e9 + END_SLACK_NS
        for i in np.flatnonzero((starts >= 0) & (ends > limit)).tolist():
            yield Issue(
                ctx.loc(L.OP_STARTS, ref.ranges[L.OP_STATS].start + i, ref.step),
                f"Op {i} starts at {int(starts[i])} ns and takes {max(int(host[i]), 0)} ns: it "
                f"ends after its step, which took {ref.duration * 1e9:.0f} ns.",
            )
