"""Rules about a step's own op attributes and storage offsets (format 1.1).

A step stores, in ``op_attrs`` and ``tensor_offsets``, the ops and tensors whose attributes and
storage offsets differ from its graph's base values (the ``attrs`` of the graph's ``ops`` rows, the
``storage_offset`` of its ``tensors`` rows); ``step_overrides`` row k holds the ranges of ``steps``
row k.  A file older than 1.1 has none of this, and these rules have nothing to check in it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from tracefmt import _layout as L
from tracefmt.attrcodec import decode_attrs
from tracefmt.rules._base import Issue, Skip, rule
from tracefmt.rules._context import FileContext
from tracefmt.rules._views import GraphView, StepRef

#: Per override table: the field naming the op or tensor, and what it names.
_TARGET = {L.OP_ATTRS: ("op", "op"), L.TENSOR_OFFSETS: ("tensor", "tensor")}


def _start(ref: StepRef, table: str) -> int:
    return 0 if ref.overrides is None else ref.overrides[table].start


def _count(view: GraphView, table: str) -> int:
    return view.n_ops if table == L.OP_ATTRS else view.n_tensors


@rule(
    "TF-OVERRIDE-001",
    "Every step has a step_overrides row whose ranges lie in their tables, in step order",
)
def override_ranges(ctx: FileContext) -> Iterator[Issue]:
    if not ctx.has_overrides:
        return
    n_index = ctx.length(L.STEP_OVERRIDES)
    if n_index < ctx.length(L.STEPS):
        ref = ctx.steps()[n_index]
        yield Issue(
            ctx.loc(L.STEPS, ref.row, ref.step),
            f"/{L.STEP_OVERRIDES} has {n_index} rows, fewer than the "
            f"{ctx.length(L.STEPS)} committed steps; every row of /{L.STEPS} needs its "
            f"row of /{L.STEP_OVERRIDES}.",
        )
    for table in L.OVERRIDE_RANGES:
        end, previous = 0, None
        for ref in ctx.steps():
            if ref.overrides is None:
                continue  # no row (reported above), or it could not be read (TF-FILT-003)
            loc = ctx.loc(L.STEP_OVERRIDES, ref.row, ref.step)
            start, count = ref.overrides[table].start, ref.overrides[table].count
            if not ctx.range_ok(table, start, count):
                yield Issue(
                    loc,
                    f"The step's rows {start}..{start + count} of /{table} are out "
                    f"of range (it has {ctx.length(table)} rows; at most "
                    f"{L.MAX_STEP_ROWS} per step).",
                )
                continue
            if count == 0:
                continue
            if start < end:
                yield Issue(
                    loc,
                    f"The step's rows {start}..{start + count} of /{table} overlap or "
                    f"precede step {previous}'s, which end at {end}.",
                )
            end, previous = max(end, start + count), ref.step


@rule("TF-OVERRIDE-002", "A step's override rows name ops and tensors of its graph, increasing")
def override_targets(ctx: FileContext) -> Iterator[Issue]:
    if not ctx.has_overrides:
        return
    for ref, view in ctx.step_graphs():
        for table, (field, what) in _TARGET.items():
            rows = ctx.override_rows(ref, table)
            if rows is None or not len(rows):
                continue
            start, n = _start(ref, table), _count(view, table)
            targets = rows[field].astype(np.int64)
            for k in np.flatnonzero(targets >= n).tolist():
                yield Issue(
                    ctx.loc(table, start + k, ref.step),
                    f"The row names {what} {targets[k]}; the step's graph has {n} {what}s.",
                )
            for k in (np.flatnonzero(np.diff(targets) <= 0) + 1).tolist():
                yield Issue(
                    ctx.loc(table, start + k, ref.step),
                    f"{what.capitalize()} {targets[k]} follows {what} {targets[k - 1]}; a "
                    f"step's /{table} rows name strictly increasing {what}s.",
                )


def _rows(ctx: FileContext, table: str) -> Iterator[tuple[int, int, int, int, int | None]]:
    """Every readable row of ``table`` (op_attrs or tensor_offsets): (global row, step, op or
    tensor, attrs string id or offset, the graph's base value, or None when the op or tensor is
    not in the graph)."""
    attrs = table == L.OP_ATTRS
    for ref, view in ctx.step_graphs():
        rows = ctx.override_rows(ref, table)
        if rows is None:
            continue
        start = _start(ref, table)
        # The graph's base value of each op's attrs, each tensor's storage offset.
        base = (
            [op.attrs for op in view.op_list] if attrs else [t.storage_offset for t in view.tensor_list]
        )
        field, _ = _TARGET[table]
        what = "attrs" if attrs else "storage_offset"
        pairs = zip(rows[field].tolist(), rows[what].tolist(), strict=True)
        for k, (index, value) in enumerate(pairs):
            yield start + k, ref.step, index, value, base[index] if index < len(base) else None


@rule(
    "TF-OVERRIDE-003", "A step's own op attributes are -1 or JSON objects; its storage offsets are >= 0"
)
def override_values(ctx: FileContext) -> Iterator[Issue]:
    if not ctx.has_overrides:
        return
    for row, step, op, sid, _ in _rows(ctx, L.OP_ATTRS):
        text = ctx.string(sid)
        if text is None:
            continue  # none, or a broken string (TF-STR-001, TF-STR-002)
        try:
            decode_attrs(text)
        except ValueError as e:
            yield Issue(
                ctx.loc(L.OP_ATTRS, row, step),
                f"The step's attributes of op {op} are not a JSON object in the tracefmt encoding: {e}.",
            )
    for row, step, t, offset, _ in _rows(ctx, L.TENSOR_OFFSETS):
        if offset < 0:
            yield Issue(
                ctx.loc(L.TENSOR_OFFSETS, row, step),
                f"The step gives tensor {t} storage offset {offset}; it must be >= 0.",
            )


def _text(ctx: FileContext, sid: int) -> tuple[bool, str | None]:
    """``(usable, text)`` of string id ``sid``: -1 is usable and has no text."""
    if sid == L.NO_STRING:
        return True, None
    try:
        if ctx.string_problem(sid) is not None:
            return False, None
    except Skip:
        return False, None
    return True, ctx.string(sid)


@rule("TF-OVERRIDE-004", "A step's own values differ from its graph's base values")
def override_differs(ctx: FileContext) -> Iterator[Issue]:
    if not ctx.has_overrides:
        return
    for row, step, op, sid, base in _rows(ctx, L.OP_ATTRS):
        if base is None:
            continue  # TF-OVERRIDE-002
        (own_ok, own), (base_ok, base_text) = _text(ctx, sid), _text(ctx, base)
        if own_ok and base_ok and own == base_text:
            what = "no attributes" if own is None else f"the attributes {own[:80]!r}"
            yield Issue(
                ctx.loc(L.OP_ATTRS, row, step),
                f"The row gives op {op} {what}, which its graph already has; a step "
                "lists only the ops whose attributes differ from the graph's.",
            )
    for row, step, t, offset, base_offset in _rows(ctx, L.TENSOR_OFFSETS):
        if offset == base_offset:
            yield Issue(
                ctx.loc(L.TENSOR_OFFSETS, row, step),
                f"The row gives tensor {t} storage offset {offset}, which its graph "
                "already has; a step lists only the tensors whose offsets differ from "
                "the graph's.",
            )
