"""Rules about light steps (format 1.4): ``light_steps`` and the tables its rows point into,
``light_stats``, ``light_events`` and ``light_scalars``.

A light step is committed by its ``light_steps`` row, as a full step by its ``steps`` row; rows
no committed light step reaches are not part of the trace.  A file older than 1.4 has no light
tables, and these rules have nothing to check in it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from tracefmt import _layout as L
from tracefmt.light import LightKind
from tracefmt.nonfinite import light_report
from tracefmt.rules._base import Issue, Skip, rule
from tracefmt.rules._context import FileContext
from tracefmt.rules._views import Span

_LIGHT_FLAGS = L.LIGHT_MOMENTS | L.LIGHT_COUNTS | L.LIGHT_INPUTS_NONFINITE
_KINDS = np.array(sorted(int(k) for k in LightKind), dtype=np.uint8)
_FLAG_NAMES = {
    L.STEP_HAS_NAN: "STEP_HAS_NAN",
    L.STEP_HAS_INF: "STEP_HAS_INF",
    L.STEP_NONFINITE_CREATED: "STEP_NONFINITE_CREATED",
    L.STEP_NONFINITE_STATE: "STEP_NONFINITE_STATE",
}


@dataclass(frozen=True)
class LightRef:
    """One committed light step: its row in ``light_steps``, step number, flags and ranges."""

    row: int
    step: int
    flags: int
    ranges: dict[str, Span]


def light_refs(ctx: FileContext) -> list[LightRef]:
    """Every committed light step (none before 1.4; Skip when ``light_steps`` is broken,
    TF-LAYOUT-001, or over the limit, TF-LIGHT-001)."""
    if not L.has_dataset(L.LIGHT_STEPS, ctx.minor):
        return []
    if ctx.length(L.LIGHT_STEPS) > L.MAX_STEP_COUNT_SCAN:
        raise Skip
    rows = ctx.table(L.LIGHT_STEPS)
    ranges = {t: (rows[s].tolist(), rows[c].tolist()) for t, (s, c) in L.LIGHT_RANGES.items()}
    steps, flags = rows["step"].tolist(), rows["flags"].tolist()
    return [
        LightRef(
            i,
            steps[i],
            flags[i],
            {t: Span(starts[i], counts[i]) for t, (starts, counts) in ranges.items()},
        )
        for i in range(len(rows))
    ]


def usable_light_refs(ctx: FileContext) -> list[LightRef]:
    """:func:`light_refs`, or none when ``light_steps`` is broken (for rules about more than
    light steps, which go on with the rest)."""
    try:
        return light_refs(ctx)
    except Skip:
        return []


def light_rows(ctx: FileContext, ref: LightRef, table: str) -> np.ndarray | None:
    """Light step ``ref``'s rows of ``table``; None when its range is invalid (TF-LIGHT-002)."""
    span = ref.ranges[table]
    try:
        if not ctx.range_ok(table, span.start, span.count):
            return None
    except Skip:
        return None
    return ctx.rows(table, span.start, span.count)


def light_scalars(ctx: FileContext, ref: LightRef) -> dict[str, float]:
    """Light step ``ref``'s scalars by name (unusable names left out: TF-STR-001, TF-STR-002)."""
    rows = light_rows(ctx, ref, L.LIGHT_SCALARS)
    if rows is None:
        return {}
    names = [ctx.string(sid) for sid in rows["name"].tolist()]
    return {n: v for n, v in zip(names, rows["value"].tolist(), strict=True) if n is not None}


@rule("TF-LIGHT-001", "Light step numbers are >= 0 and strictly increasing")
def light_order(ctx: FileContext) -> Iterator[Issue]:
    if not L.has_dataset(L.LIGHT_STEPS, ctx.minor):
        return
    n = ctx.length(L.LIGHT_STEPS)
    if n > L.MAX_STEP_COUNT_SCAN:
        yield Issue(
            ctx.loc(L.LIGHT_STEPS),
            f"/{L.LIGHT_STEPS} has {n} rows; the limit is {L.MAX_STEP_COUNT_SCAN}.",
        )
        return
    steps = ctx.table(L.LIGHT_STEPS)["step"]
    for row in np.flatnonzero(steps < 0).tolist():
        yield Issue(ctx.loc(L.LIGHT_STEPS, row), f"Light step number {int(steps[row])} is negative.")
    for row in (np.flatnonzero(np.diff(steps) <= 0) + 1).tolist():
        yield Issue(
            ctx.loc(L.LIGHT_STEPS, row),
            f"Light step {int(steps[row])} follows light step {int(steps[row - 1])}; light "
            "step numbers must increase.",
        )


@rule("TF-LIGHT-002", "A light step's ranges lie in their tables, in light step order")
def light_ranges(ctx: FileContext) -> Iterator[Issue]:
    refs = light_refs(ctx)
    for table in L.LIGHT_RANGES:
        end, previous = 0, None
        for ref in refs:
            start, count = ref.ranges[table].start, ref.ranges[table].count
            loc = ctx.loc(L.LIGHT_STEPS, ref.row, ref.step)
            if not ctx.range_ok(table, start, count):
                yield Issue(
                    loc,
                    f"The light step's rows {start}..{start + count} of /{table} are out of "
                    f"range (it has {ctx.length(table)} rows; at most {L.MAX_STEP_ROWS} per step).",
                )
            elif count and start < end:
                yield Issue(
                    loc,
                    f"The light step's rows {start}..{start + count} of /{table} overlap or "
                    f"precede light step {previous}'s, which end at {end}.",
                )
            if count and ctx.range_ok(table, start, count):
                end, previous = max(end, start + count), ref.step


@rule("TF-LIGHT-003", "Light rows use defined kinds and flags and hold consistent values")
def light_stat_rows(ctx: FileContext) -> Iterator[Issue]:
    for ref in light_refs(ctx):
        rows = light_rows(ctx, ref, L.LIGHT_STATS)
        if rows is None or not len(rows):
            continue
        flags = rows["flags"].astype(np.int64)
        moments = (flags & L.LIGHT_MOMENTS) != 0
        values = np.stack([rows[f] for f in ("min", "max", "mean", "std", "norm")])
        with np.errstate(invalid="ignore"):
            bad_moments = moments & (
                ~np.isfinite(values).all(axis=0)
                | (rows["min"] > rows["max"])
                | (rows["std"] < 0)
                | (rows["norm"] < 0)
            )
        counted = (flags & L.LIGHT_COUNTS) != 0
        total = rows["nan"].astype(np.float64) + rows["inf"].astype(np.float64)
        unknown = ((flags & ~_LIGHT_FLAGS) != 0) | ~np.isin(rows["kind"], _KINDS)
        start = ref.ranges[L.LIGHT_STATS].start
        for i in np.flatnonzero(unknown).tolist():
            yield Issue(
                ctx.loc(L.LIGHT_STATS, start + i, ref.step),
                f"Light row {i} has kind {int(rows['kind'][i])} and flags {int(flags[i])}; "
                f"kinds are {_KINDS.tolist()} and flags use the bits {_LIGHT_FLAGS}.",
                ctx.unknown_severity,
            )
        bad = bad_moments | (counted & (total > rows["numel"].astype(np.float64)))
        for i in np.flatnonzero(bad).tolist():
            r = rows[i]
            yield Issue(
                ctx.loc(L.LIGHT_STATS, start + i, ref.step),
                f"Light row {i}'s statistics are inconsistent: flags {int(r['flags'])}, min "
                f"{r['min']}, max {r['max']}, mean {r['mean']}, std {r['std']}, norm {r['norm']}, "
                f"nan {r['nan']}, inf {r['inf']} for {r['numel']} elements.",
            )


@rule("TF-LIGHT-004", "A light step's flags are defined bits and agree with its rows and loss")
def light_flags(ctx: FileContext) -> Iterator[Issue]:
    defined = L.step_flag_bits(ctx.minor)
    for ref in light_refs(ctx):
        loc = ctx.loc(L.LIGHT_STEPS, ref.row, ref.step)
        if ref.flags & ~defined:
            yield Issue(
                loc, f"Light step flags {ref.flags:#x} use undefined bits.", ctx.unknown_severity
            )
        rows = light_rows(ctx, ref, L.LIGHT_STATS)
        if rows is None:
            continue  # TF-LIGHT-002
        want = light_report(rows, light_scalars(ctx, ref)).flags
        for bit, name in _FLAG_NAMES.items():
            if bool(want & bit) != bool(ref.flags & bit):
                yield Issue(
                    loc,
                    f"{name} is {'set' if ref.flags & bit else 'clear'}, but the light step's "
                    f"rows and loss say it should be {'set' if want & bit else 'clear'}.",
                )


@rule("TF-LIGHT-005", "A light step's events name no op or tensor; its scalar names are distinct")
def light_events_scalars(ctx: FileContext) -> Iterator[Issue]:
    for ref in light_refs(ctx):
        events = light_rows(ctx, ref, L.LIGHT_EVENTS)
        start = ref.ranges[L.LIGHT_EVENTS].start
        for k, (op, tensor) in enumerate(
            [] if events is None else zip(events["op"].tolist(), events["tensor"].tolist(), strict=True)
        ):
            if (op, tensor) != (L.NO_INDEX, L.NO_INDEX):
                yield Issue(
                    ctx.loc(L.LIGHT_EVENTS, start + k, ref.step),
                    f"The light step's event names op {op} and tensor {tensor}; a light step "
                    "has no graph, so both must be -1.",
                )
        scalars = light_rows(ctx, ref, L.LIGHT_SCALARS)
        seen: set[object] = set()
        for k, sid in enumerate([] if scalars is None else scalars["name"].tolist()):
            text = ctx.string(sid) if sid >= 0 else None
            key: object = text if text is not None else ("id", sid)
            if key in seen:
                yield Issue(
                    ctx.loc(L.LIGHT_SCALARS, ref.ranges[L.LIGHT_SCALARS].start + k, ref.step),
                    f"The scalar {text if text is not None else sid!r} appears twice in the light step.",
                )
            seen.add(key)
