"""Rules about committed steps and the per-step tables: stats, op_stats, values, histograms,
events and scalars.  Row checks are vectorized with numpy, so a long stats-only run stays fast."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from tracefmt import _layout as L
from tracefmt._rows import DataRow, EventRow, HistRow, named
from tracefmt.dtypes import DTYPE_INFO, DType, heap_name
from tracefmt.rules._base import Issue, Skip, rule
from tracefmt.rules._context import FileContext
from tracefmt.rules._views import GraphView, StepRef

# Plain ints: ``~`` of a flag enum drops the undefined bits instead of keeping them.
_STAT_FLAGS = int(L.STAT_MOMENTS | L.STAT_COUNTS | L.STAT_FINGERPRINT)
_DTYPES = frozenset(int(d) for d in DType)


@rule("TF-STEP-001", "Step numbers are >= 0 and strictly increasing")
def step_order(ctx: FileContext) -> Iterator[Issue]:
    n = ctx.length(L.STEPS)
    if n > L.MAX_STEP_COUNT_SCAN:
        yield Issue(ctx.loc(L.STEPS), f"/{L.STEPS} has {n} rows; the limit is {L.MAX_STEP_COUNT_SCAN}.")
        return
    steps = ctx.table(L.STEPS)["step"]
    for row in np.flatnonzero(steps < 0).tolist():
        yield Issue(ctx.loc(L.STEPS, row), f"Step number {int(steps[row])} is negative.")
    for row in (np.flatnonzero(np.diff(steps) <= 0) + 1).tolist():
        yield Issue(
            ctx.loc(L.STEPS, row),
            f"Step {int(steps[row])} follows step {int(steps[row - 1])}; step numbers must increase.",
        )


@rule("TF-STEP-002", "Every row a committed step references exists")
def step_references(ctx: FileContext) -> Iterator[Issue]:
    n_graphs = ctx.length(L.GRAPHS)
    for ref in ctx.steps():
        loc = ctx.loc(L.STEPS, ref.row, ref.step)
        if ref.graph >= n_graphs:
            yield Issue(loc, f"The step references graph {ref.graph}; /{L.GRAPHS} has {n_graphs} rows.")
        for table, span in ref.ranges.items():
            start, count = span.start, span.count
            try:
                ok = ctx.range_ok(table, start, count)
            except Skip:
                continue  # the table is broken: TF-LAYOUT-001
            if not ok:
                yield Issue(
                    loc,
                    f"The step's rows {start}..{start + count} of /{table} are out of "
                    f"range (it has {ctx.length(table)} rows; at most "
                    f"{L.MAX_STEP_ROWS} per step).",
                )


@rule("TF-STEP-003", "stats and op_stats hold 0 rows or one per tensor / op")
def step_counts(ctx: FileContext) -> Iterator[Issue]:
    for ref, view in ctx.step_graphs():
        loc = ctx.loc(L.STEPS, ref.row, ref.step)
        stats, op_stats = ref.ranges[L.STATS].count, ref.ranges[L.OP_STATS].count
        if stats not in (0, view.n_tensors):
            yield Issue(loc, f"The step has {stats} stats rows for a graph of {view.n_tensors} tensors.")
        if op_stats not in (0, view.n_ops):
            yield Issue(loc, f"The step has {op_stats} op_stats rows for a graph of {view.n_ops} ops.")


@rule("TF-STEP-004", "Steps' ranges of a table do not overlap and follow the step order")
def step_append_only(ctx: FileContext) -> Iterator[Issue]:
    for table in L.STEP_RANGES:
        try:
            ctx.length(table)
        except Skip:
            continue
        end, previous = 0, None
        for ref in ctx.steps():
            start, count = ref.ranges[table].start, ref.ranges[table].count
            if count == 0 or not ctx.range_ok(table, start, count):
                continue
            if start < end:
                yield Issue(
                    ctx.loc(L.STEPS, ref.row, ref.step),
                    f"The step's rows {start}..{start + count} of /{table} overlap or "
                    f"precede step {previous}'s, which end at {end}.",
                )
            end, previous = max(end, start + count), ref.step


@rule("TF-STEP-005", "Step flags are defined bits and agree with the step's statistics")
def step_flags(ctx: FileContext) -> Iterator[Issue]:
    defined = L.step_flag_bits(ctx.minor)  # 1.4 adds the bits TF-STEP-006 checks
    for ref in ctx.steps():
        loc = ctx.loc(L.STEPS, ref.row, ref.step)
        if ref.flags & ~defined:
            yield Issue(loc, f"Step flags {ref.flags:#x} use undefined bits.", ctx.unknown_severity)
        stats = ctx.step_rows(ref, L.STATS)
        if stats is None:
            continue  # TF-STEP-002
        counted = (stats["flags"] & L.STAT_COUNTS) != 0
        for bit, field, name in (
            (L.STEP_HAS_NAN, "nan", "STEP_HAS_NAN"),
            (L.STEP_HAS_INF, "inf", "STEP_HAS_INF"),
        ):
            seen = bool(np.any(stats[field][counted] > 0))
            if seen != bool(ref.flags & bit):
                yield Issue(
                    loc,
                    f"{name} is {'clear' if seen else 'set'}, but the step's counted "
                    f"statistics have {'some' if seen else 'no'} {field} values.",
                )


def _stats(ctx: FileContext, ref: StepRef, view: GraphView) -> np.ndarray | None:
    """The step's stats rows when they are usable: one per tensor (else TF-STEP-002/003)."""
    rows = ctx.step_rows(ref, L.STATS)
    return rows if rows is not None and len(rows) == view.n_tensors else None


@rule("TF-STAT-001", "Statistics use defined flags and hold consistent values")
def stat_rows(ctx: FileContext) -> Iterator[Issue]:
    for ref, view in ctx.step_graphs():
        rows = _stats(ctx, ref, view)
        if rows is None or not len(rows):
            continue
        start = ref.ranges[L.STATS].start
        flags = rows["flags"]
        moments = (flags & L.STAT_MOMENTS) != 0
        values = np.stack([rows[f] for f in ("min", "max", "mean", "std", "norm")])
        with np.errstate(invalid="ignore"):
            bad_moments = moments & (
                ~np.isfinite(values).all(axis=0)
                | (rows["min"] > rows["max"])
                | (rows["std"] < 0)
                | (rows["norm"] < 0)
            )
        counted = (flags & L.STAT_COUNTS) != 0
        total = (
            rows["nan"].astype(np.float64)
            + rows["inf"].astype(np.float64)
            + rows["zero"].astype(np.float64)
        )
        bad = (
            ((flags.astype(np.int64) & ~_STAT_FLAGS) != 0)
            | bad_moments
            | (counted & (total > view.numel_array))
        )
        for i in np.flatnonzero(bad).tolist():
            r = rows[i]
            yield Issue(
                ctx.loc(L.STATS, start + i, ref.step),
                f"Statistics of tensor {i} are inconsistent: flags {int(r['flags'])}, "
                f"min {r['min']}, max {r['max']}, mean {r['mean']}, std {r['std']}, "
                f"norm {r['norm']}, nan {r['nan']}, inf {r['inf']}, zero {r['zero']} for "
                f"{view.numel[i]} elements.",
            )


@rule("TF-STAT-002", "op_stats fields are -1 or >= 0")
def stat_op_rows(ctx: FileContext) -> Iterator[Issue]:
    for ref in ctx.steps():
        rows = ctx.step_rows(ref, L.OP_STATS)
        if rows is None or not len(rows):
            continue
        bad = (rows["host_ns"] < -1) | (rows["device_ns"] < -1) | (rows["mem_bytes"] < -1)
        for i in np.flatnonzero(bad).tolist():
            yield Issue(
                ctx.loc(L.OP_STATS, ref.ranges[L.OP_STATS].start + i, ref.step),
                f"Op {i}'s timing {rows[i].tolist()} has a value below -1.",
            )


def _value_rows(
    ctx: FileContext, ref: StepRef, view: GraphView
) -> Iterator[tuple[int, int, str, int, int, int]]:
    """Usable ``data_index`` rows of a step: (row, tensor, heap, offset, count, fingerprint)."""
    rows = ctx.step_rows(ref, L.DATA_INDEX)
    if rows is None:
        return
    start = ref.ranges[L.DATA_INDEX].start
    for k, d in enumerate(named(rows, DataRow)):
        tensor, offset, count = d.tensor, d.offset, d.count
        if tensor >= view.n_tensors or view.tensor_list[tensor].dtype not in _DTYPES:
            continue
        numel, dtype = view.numel[tensor], DType(view.tensor_list[tensor].dtype)
        info = DTYPE_INFO[dtype]
        if (
            numel is None
            or count != numel * info.per_element
            or numel * info.itemsize > L.MAX_VALUE_BYTES
        ):
            continue
        heap = f"{L.DATA_GROUP}/{heap_name(dtype)}"
        try:
            if ctx.range_ok(heap, offset, count, L.MAX_VALUE_BYTES):
                yield start + k, tensor, heap, offset, count, d.fingerprint
        except Skip:
            continue


@rule("TF-STAT-003", "Stats fingerprints equal the recorded values' fingerprints", deep=True)
def stat_fingerprints(ctx: FileContext) -> Iterator[Issue]:
    for ref, view in ctx.step_graphs():
        stats = _stats(ctx, ref, view)
        if stats is None or not len(stats):
            continue
        for _, tensor, heap, offset, count, _ in _value_rows(ctx, ref, view):
            row = stats[tensor]
            if not row["flags"] & L.STAT_FINGERPRINT:
                continue
            actual = ctx.values_fingerprint(heap, offset, count)
            if int(row["fingerprint"]) != actual:
                yield Issue(
                    ctx.loc(L.STATS, ref.ranges[L.STATS].start + tensor, ref.step),
                    f"Tensor {tensor}'s statistics have fingerprint {int(row['fingerprint'])}"
                    f" but its recorded values (/{heap}, items {offset}..{offset + count}) "
                    f"have {actual}.",
                )


@rule("TF-DATA-001", "data_index rows name graph tensors in increasing order")
def data_tensors(ctx: FileContext) -> Iterator[Issue]:
    for ref, view in ctx.step_graphs():
        rows = ctx.step_rows(ref, L.DATA_INDEX)
        if rows is None or not len(rows):
            continue
        start, tensors = ref.ranges[L.DATA_INDEX].start, rows["tensor"].astype(np.int64)
        for k in np.flatnonzero(tensors >= view.n_tensors).tolist():
            yield Issue(
                ctx.loc(L.DATA_INDEX, start + k, ref.step),
                f"Values are recorded for tensor {tensors[k]}; the graph has {view.n_tensors}.",
            )
        for k in (np.flatnonzero(np.diff(tensors) <= 0) + 1).tolist():
            yield Issue(
                ctx.loc(L.DATA_INDEX, start + k, ref.step),
                f"Tensor {tensors[k]} follows tensor {tensors[k - 1]}; a step's value rows "
                "name strictly increasing tensors.",
            )


@rule("TF-DATA-002", "A value row's count matches its tensor and lies inside its heap")
def data_extent(ctx: FileContext) -> Iterator[Issue]:
    for ref, view in ctx.step_graphs():
        rows = ctx.step_rows(ref, L.DATA_INDEX)
        if rows is None:
            continue
        for k, d in enumerate(named(rows, DataRow)):
            tensor, offset, count = d.tensor, d.offset, d.count
            loc = ctx.loc(L.DATA_INDEX, ref.ranges[L.DATA_INDEX].start + k, ref.step)
            if (
                tensor >= view.n_tensors
                or view.tensor_list[tensor].dtype not in _DTYPES
                or view.numel[tensor] is None
            ):
                continue  # TF-DATA-001, TF-TENSOR-001, TF-TENSOR-002
            dtype = DType(view.tensor_list[tensor].dtype)
            info, numel = DTYPE_INFO[dtype], view.numel[tensor] or 0
            heap = f"{L.DATA_GROUP}/{heap_name(dtype)}"
            if numel * info.itemsize > L.MAX_VALUE_BYTES:
                yield Issue(
                    loc,
                    f"Tensor {tensor} has {numel * info.itemsize} bytes of values; "
                    f"the limit is {L.MAX_VALUE_BYTES}.",
                )
            elif count != numel * info.per_element:
                yield Issue(
                    loc,
                    f"Tensor {tensor} has {count} stored items; {numel} elements of "
                    f"{dtype.label} need {numel * info.per_element}.",
                )
            else:
                try:
                    ok = ctx.range_ok(heap, offset, count, L.MAX_VALUE_BYTES)
                except Skip:
                    continue
                if not ok:
                    yield Issue(
                        loc,
                        f"Tensor {tensor}'s items {offset}..{offset + count} lie "
                        f"outside /{heap} ({ctx.length(heap)} items).",
                    )


@rule("TF-DATA-003", "Stored values match their fingerprint", deep=True)
def data_fingerprints(ctx: FileContext) -> Iterator[Issue]:
    for ref, view in ctx.step_graphs():
        for row, tensor, heap, offset, count, fp in _value_rows(ctx, ref, view):
            actual = ctx.values_fingerprint(heap, offset, count)
            if actual != fp:
                yield Issue(
                    ctx.loc(L.DATA_INDEX, row, ref.step),
                    f"The values of tensor {tensor} (/{heap}, items {offset}.."
                    f"{offset + count}) have fingerprint {actual}, not {fp}; the file is "
                    "damaged.",
                )


@rule("TF-HIST-001", "Histograms name graph tensors and hold consistent ranges and counts")
def hist_rows(ctx: FileContext) -> Iterator[Issue]:
    bins = ctx.hist_bins
    if bins is None:
        raise Skip  # TF-FILE-006
    for ref, view in ctx.step_graphs():
        start, count = ref.ranges[L.HISTS].start, ref.ranges[L.HISTS].count
        if bins == 0 and count:
            yield Issue(
                ctx.loc(L.STEPS, ref.row, ref.step),
                f"The step has {count} histograms, but the file's hist_bins is 0.",
            )
            continue
        rows = ctx.step_rows(ref, L.HISTS)
        if rows is None:
            continue
        previous = -1
        for k, h in enumerate(named(rows, HistRow)):
            tensor, lo, hi, counts = h.tensor, h.lo, h.hi, h.counts
            loc = ctx.loc(L.HISTS, start + k, ref.step)
            if tensor >= view.n_tensors or tensor <= previous:
                yield Issue(
                    loc,
                    f"Histogram row names tensor {tensor} (after {previous}); rows "
                    f"name strictly increasing tensors of the graph's "
                    f"{view.n_tensors}.",
                )
            elif not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
                yield Issue(
                    loc,
                    f"Histogram of tensor {tensor} has range {lo}..{hi}; it must be "
                    "finite with lo <= hi.",
                )
            else:
                numel = view.numel[tensor]
                if numel is not None and sum(counts) > numel:
                    yield Issue(
                        loc,
                        f"Histogram of tensor {tensor} counts {sum(counts)} values; "
                        f"the tensor has {numel}.",
                    )
            previous = max(previous, tensor)


@rule("TF-EVENT-001", "Events name ops and tensors of the step's graph")
def event_rows(ctx: FileContext) -> Iterator[Issue]:
    for ref, view in ctx.step_graphs():
        rows = ctx.step_rows(ref, L.EVENTS)
        if rows is None:
            continue
        for k, e in enumerate(named(rows, EventRow)):
            op, tensor = e.op, e.tensor
            if not (-1 <= op < view.n_ops and -1 <= tensor < view.n_tensors):
                yield Issue(
                    ctx.loc(L.EVENTS, ref.ranges[L.EVENTS].start + k, ref.step),
                    f"The event names op {op} and tensor {tensor}; the graph has "
                    f"{view.n_ops} ops and {view.n_tensors} tensors (-1: none).",
                )


@rule("TF-SCALAR-001", "A step's scalar names are distinct")
def scalar_names(ctx: FileContext) -> Iterator[Issue]:
    for ref in ctx.steps():
        rows = ctx.step_rows(ref, L.SCALARS)
        if rows is None:
            continue
        seen: set[object] = set()
        for k, sid in enumerate(rows["name"].tolist()):
            text = ctx.string(sid) if sid >= 0 else None
            key: object = text if text is not None else ("id", sid)
            if key in seen:
                yield Issue(
                    ctx.loc(L.SCALARS, ref.ranges[L.SCALARS].start + k, ref.step),
                    f"The scalar {text if text is not None else sid!r} appears twice in the step.",
                )
            seen.add(key)
