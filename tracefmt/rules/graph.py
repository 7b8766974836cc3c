"""Rules about what graphs hold: strings, graph rows, ops, edges and tensors.

Only graphs and strings that committed steps reach are checked: rows past the last commit belong to
a step that was never committed (a crash) and are not part of the trace.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from tracefmt import _layout as L
from tracefmt._primitives import Problem, tensor_dims
from tracefmt.attrcodec import decode_attrs
from tracefmt.dtypes import DType
from tracefmt.model import Phase, Role
from tracefmt.rules._base import Issue, rule
from tracefmt.rules._context import FileContext
from tracefmt.rules._views import GraphView, StringRef
from tracefmt.rules.lightsteps import light_rows, usable_light_refs
from tracefmt.rules.modulerows import module_string_refs
from tracefmt.rules.rngrows import rng_string_refs

_PHASES = frozenset(int(p) for p in Phase)
_DTYPES = frozenset(int(d) for d in DType)
_ROLES = frozenset(int(r) for r in Role)


def _graph_start(ctx: FileContext, view: GraphView, field: str) -> int:
    return int(ctx.table(L.GRAPHS)[view.index][field])


def _string_refs(ctx: FileContext) -> Iterator[StringRef]:
    """Every string reference that committed steps reach (locations are built only for issues)."""
    for view in ctx.graph_views():
        op0 = _graph_start(ctx, view, "op_start")
        for i, op in enumerate(view.op_list):
            yield StringRef(L.OPS, op0 + i, None, "name", op.name, True)
            yield StringRef(L.OPS, op0 + i, None, "module", op.module, False)
            yield StringRef(L.OPS, op0 + i, None, "attrs", op.attrs, False)
            yield StringRef(L.OPS, op0 + i, None, "source", op.source, False)
        t0 = _graph_start(ctx, view, "tensor_start")
        for j, t in enumerate(view.tensor_list):
            yield StringRef(L.TENSORS, t0 + j, None, "device", t.device, False)
            yield StringRef(L.TENSORS, t0 + j, None, "name", t.name, False)
    for ref in ctx.steps():
        op_attrs = ctx.override_rows(ref, L.OP_ATTRS)
        if op_attrs is not None and ref.overrides is not None:
            start = ref.overrides[L.OP_ATTRS].start
            for k, sid in enumerate(op_attrs["attrs"].tolist()):
                yield StringRef(L.OP_ATTRS, start + k, ref.step, "attrs", sid, False)
        for table, fields in (
            (L.EVENTS, (("kind", True), ("message", False))),
            (L.SCALARS, (("name", True),)),
        ):
            if not ref.ranges[table].count:
                continue
            rows = ctx.step_rows(ref, table)
            if rows is None:
                continue
            start = ref.ranges[table].start
            for field, required in fields:
                for k, sid in enumerate(rows[field].tolist()):
                    yield StringRef(table, start + k, ref.step, field, sid, required)
    for light in usable_light_refs(ctx):  # format 1.4
        for table, fields in _LIGHT_STRINGS:
            rows = light_rows(ctx, light, table) if light.ranges[table].count else None
            if rows is None:
                continue
            start = light.ranges[table].start
            for field, required in fields:
                for k, sid in enumerate(rows[field].tolist()):
                    yield StringRef(table, start + k, light.step, field, sid, required)
    yield from module_string_refs(ctx)  # format 1.5
    yield from rng_string_refs(ctx)  # format 1.6


#: The string fields of a light step's tables, and whether each is required.
_LIGHT_STRINGS = (
    (L.LIGHT_STATS, (("name", True),)),
    (L.LIGHT_EVENTS, (("kind", True), ("message", False))),
    (L.LIGHT_SCALARS, (("name", True),)),
)


def _ref_loc(ctx: FileContext, ref: StringRef) -> str:
    return f"{ctx.loc(ref.table, ref.row, ref.step)} {ref.field}"


@rule("TF-STR-001", "String ids are -1 or rows of strings/index; required strings are present")
def strings_ids(ctx: FileContext) -> Iterator[Issue]:
    n = ctx.length(L.STRINGS_INDEX)
    for ref in _string_refs(ctx):
        sid, required = ref.sid, ref.required
        if sid == L.NO_STRING and required:
            yield Issue(_ref_loc(ctx, ref), "This string is required but the id is -1 (none).")
        elif not L.NO_STRING <= sid < n:
            yield Issue(
                _ref_loc(ctx, ref), f"String id {sid} is not a row of /{L.STRINGS_INDEX} ({n} rows)."
            )


@rule("TF-STR-002", "Strings lie inside strings/bytes, are at most 1 MiB and valid UTF-8")
def strings_text(ctx: FileContext) -> Iterator[Issue]:
    n = ctx.length(L.STRINGS_INDEX)
    seen: set[int] = set()
    for ref in _string_refs(ctx):
        sid = ref.sid
        if 0 <= sid < n and sid not in seen:
            seen.add(sid)
            problem = ctx.string_problem(sid)
            if problem:
                yield Issue(_ref_loc(ctx, ref), problem.message)


@rule("TF-GRAPH-001", "A referenced graph's ranges lie inside ops, edges, tensors and dims")
def graph_ranges(ctx: FileContext) -> Iterator[Issue]:
    graphs = ctx.table(L.GRAPHS)
    for g in ctx.referenced_graphs():
        if g >= len(graphs):
            continue  # TF-STEP-002
        row = graphs[g]
        for table, (start_field, count_field, limit) in L.GRAPH_RANGES.items():
            start, count = int(row[start_field]), int(row[count_field])
            if not ctx.range_ok(table, start, count, limit):
                yield Issue(
                    ctx.loc(L.GRAPHS, g),
                    f"Graph {g}'s rows {start}..{start + count} of /{table} are out of "
                    f"range (/{table} has {ctx.length(table)} rows; at most {limit} per "
                    "graph).",
                )


@rule("TF-GRAPH-002", "Equal graphs are stored once (graph deduplication)")
def graph_dedupe(ctx: FileContext) -> Iterator[Issue]:
    # From 1.1 graphs are equal when all but their ops' attrs and tensors' storage offsets are:
    # those two are per step (op_attrs, tensor_offsets).
    what = "rows" if not ctx.has_overrides else "rows apart from attrs and storage offsets"
    seen: dict[bytes, int] = {}
    for view in ctx.graph_views():
        ops, tensors = view.ops, view.tensors
        if ctx.has_overrides:
            ops, tensors = ops.copy(), tensors.copy()
            ops["attrs"] = 0
            tensors["storage_offset"] = 0
        h = hashlib.blake2b(digest_size=16)
        for part in (ops, view.edges, tensors, view.dims):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part.tobytes())
        key = h.digest()
        if key in seen:
            yield Issue(
                ctx.loc(L.GRAPHS, view.index),
                f"Graph {view.index} has the same {what} as graph {seen[key]}; a step "
                "whose graph equals an earlier one must reference the earlier graph row.",
            )
        else:
            seen[key] = view.index


@rule("TF-OP-001", "Op phases are codes of the Phase table")
def op_phase(ctx: FileContext) -> Iterator[Issue]:
    for view in ctx.graph_views():
        op0 = _graph_start(ctx, view, "op_start")
        for i, op in enumerate(view.op_list):
            if op.phase not in _PHASES:
                yield Issue(
                    ctx.loc(L.OPS, op0 + i),
                    f"Phase code {op.phase} is not in the Phase table.",
                    ctx.unknown_severity,
                )


@rule("TF-OP-002", "Op edge ranges lie in the graph; edges name tensors; arg/item are valid")
def op_edges(ctx: FileContext) -> Iterator[Issue]:
    for view in ctx.graph_views():
        op0 = _graph_start(ctx, view, "op_start")
        for i, op in enumerate(view.op_list):
            loc = ctx.loc(L.OPS, op0 + i)
            for kind, start, count in (
                ("input", op.in_start, op.in_count),
                ("output", op.out_start, op.out_count),
            ):
                if start + count > view.n_edges:
                    yield Issue(
                        loc,
                        f"Op {i}'s {kind} edges {start}..{start + count} lie outside "
                        f"its graph's {view.n_edges} edges.",
                    )
                    continue
                for k, e in enumerate(view.edge_list[start : start + count]):
                    if e.tensor >= view.n_tensors:
                        yield Issue(
                            loc,
                            f"Op {i}'s {kind} {k} names tensor {e.tensor}; the graph "
                            f"has {view.n_tensors}.",
                        )
                    if kind == "input" and (e.arg < 0 or e.item < -1):
                        yield Issue(
                            loc,
                            f"Op {i}'s input {k} has arg {e.arg}, item {e.item}; inputs "
                            "need arg >= 0 and item >= -1.",
                        )
                    if kind == "output" and (e.arg != k or e.item != -1):
                        yield Issue(
                            loc,
                            f"Op {i}'s output {k} has arg {e.arg}, item {e.item}; output "
                            f"k needs arg k and item -1.",
                        )


@rule("TF-OP-003", "Op attributes are a JSON object in the tracefmt encoding")
def op_attrs(ctx: FileContext) -> Iterator[Issue]:
    for view in ctx.graph_views():
        op0 = _graph_start(ctx, view, "op_start")
        for i, op in enumerate(view.op_list):
            text = ctx.string(op.attrs)
            if text is None:
                continue  # none, or a broken string (TF-STR-001, TF-STR-002)
            try:
                decode_attrs(text)
            except ValueError as e:
                yield Issue(
                    ctx.loc(L.OPS, op0 + i),
                    f"Op {i}'s attributes are not a JSON object in the tracefmt encoding: {e}.",
                )


@rule("TF-TENSOR-001", "Tensor dtypes and roles are codes of their tables")
def tensor_codes(ctx: FileContext) -> Iterator[Issue]:
    for view in ctx.graph_views():
        t0 = _graph_start(ctx, view, "tensor_start")
        for j, t in enumerate(view.tensor_list):
            for code, table, name in ((t.dtype, _DTYPES, "DType"), (t.role, _ROLES, "Role")):
                if code not in table:
                    yield Issue(
                        ctx.loc(L.TENSORS, t0 + j),
                        f"Tensor {j}'s {name.lower()} code {code} is not in the {name} table.",
                        ctx.unknown_severity,
                    )


@rule("TF-TENSOR-002", "Tensor shapes and strides lie in dims and are valid")
def tensor_dims_valid(ctx: FileContext) -> Iterator[Issue]:
    for view in ctx.graph_views():
        t0 = _graph_start(ctx, view, "tensor_start")
        dims = view.dims.tolist()
        for j, t in enumerate(view.tensor_list):
            loc = ctx.loc(L.TENSORS, t0 + j)
            decoded = tensor_dims(j, t, dims)
            if isinstance(decoded, Problem):
                yield Issue(loc, decoded.message)
            elif not (all(s == -1 for s in decoded.strides) or all(s >= 0 for s in decoded.strides)):
                yield Issue(
                    loc,
                    f"Tensor {j} has strides {decoded.strides}; strides are all -1 "
                    "(not recorded) or all >= 0.",
                )
            if t.version < 0 or t.storage_offset < 0:
                yield Issue(
                    loc,
                    f"Tensor {j} has version {t.version} and storage offset {t.storage_offset}; "
                    "both must be >= 0.",
                )


@rule("TF-TENSOR-003", "Producers and op outputs agree")
def tensor_producer(ctx: FileContext) -> Iterator[Issue]:
    for view in ctx.graph_views():
        t0 = _graph_start(ctx, view, "tensor_start")
        for j, t in enumerate(view.tensor_list):
            producer, slot = t.producer, t.producer_slot
            if not -1 <= producer < view.n_ops:
                yield Issue(
                    ctx.loc(L.TENSORS, t0 + j),
                    f"Tensor {j} names producer op {producer}; the graph has {view.n_ops}.",
                )
            elif producer >= 0:
                outs = view.op_tensors(producer, outputs=True)
                if outs is not None and not (0 <= slot < len(outs) and outs[slot] == j):
                    yield Issue(
                        ctx.loc(L.TENSORS, t0 + j),
                        f"Tensor {j} says it is output {slot} of op {producer}, but that "
                        f"op's outputs are {outs}.",
                    )
        op0 = _graph_start(ctx, view, "op_start")
        for i in range(view.n_ops):
            for k, tensor in enumerate(view.op_tensors(i, outputs=True) or ()):
                producer = view.tensor_list[tensor].producer
                if producer not in (-1, i):
                    yield Issue(
                        ctx.loc(L.OPS, op0 + i),
                        f"Op {i}'s output {k} is tensor {tensor}, whose producer is op {producer}.",
                    )


@rule("TF-TENSOR-004", "A producer runs before its consumers")
def tensor_order(ctx: FileContext) -> Iterator[Issue]:
    for view in ctx.graph_views():
        op0 = _graph_start(ctx, view, "op_start")
        for i in range(view.n_ops):
            for tensor in view.op_tensors(i, outputs=False) or ():
                producer = view.tensor_list[tensor].producer
                if i <= producer < view.n_ops:
                    yield Issue(
                        ctx.loc(L.OPS, op0 + i),
                        f"Op {i} reads tensor {tensor}, which op {producer} produces at or after it.",
                    )
