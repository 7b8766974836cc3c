"""Rules about collective and point-to-point ops (format 1.2): the ``"c10d"`` key of their attributes.

An op of the namespaces ``c10d`` and ``_c10d_functional`` carries its process group, kind and
sequence number in its attributes (:mod:`tracefmt.collective`, which parses them for readers too).
The attributes checked are each committed step's own: the graph's, replaced by the step's
``op_attrs`` rows (a collective's ``backend_seq`` changes every step).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

from tracefmt import _layout as L
from tracefmt._primitives import Problem
from tracefmt.attrcodec import decode_attrs
from tracefmt.collective import C10D_KEY, CollectiveInfo, is_c10d_op, is_wait, parse_collective
from tracefmt.rules._base import Issue, Skip, rule
from tracefmt.rules._context import FileContext
from tracefmt.rules._views import GraphView, StepRef


class _C10dOp(NamedTuple):
    """One c10d op of one step: where it is reported, its index, name and parsed key."""

    loc: str
    op: int
    name: str
    info: CollectiveInfo | Problem | None


def _decoded(ctx: FileContext, sid: int, cache: dict[int, Any]) -> Any:
    if sid not in cache:
        text = ctx.string(sid)
        try:
            cache[sid] = None if text is None else decode_attrs(text)
        except ValueError:
            cache[sid] = None  # TF-OP-003, TF-OVERRIDE-003
    return cache[sid]


def _step_ops(ctx: FileContext, ref: StepRef, view: GraphView, cache: dict[int, Any]) -> list[_C10dOp]:
    identity = ctx.identity()
    if identity is None or ctx.minor < 2:  # the key dates from 1.2; TF-FILE-005
        raise Skip
    names = {i: ctx.string(op.name) or "" for i, op in enumerate(view.op_list)}
    wanted = [i for i, name in names.items() if is_c10d_op(name)]
    if not wanted:
        return []
    own: dict[int, int] = {}
    rows = ctx.override_rows(ref, L.OP_ATTRS)
    if rows is not None:
        own = dict(zip(rows["op"].tolist(), rows["attrs"].tolist(), strict=True))
    op0 = int(ctx.table(L.GRAPHS)[view.index]["op_start"])
    out = []
    for i in wanted:
        sid = own.get(i, view.op_list[i].attrs)
        attrs = None if sid == L.NO_STRING else _decoded(ctx, sid, cache)
        info = None
        if isinstance(attrs, dict) and C10D_KEY in attrs:
            info = parse_collective(attrs[C10D_KEY], world_size=identity.world_size, rank=identity.rank)
        out.append(_C10dOp(ctx.loc(L.OPS, op0 + i, ref.step), i, names[i], info))
    return out


@rule("TF-COLL-001", "A c10d op's 'c10d' attribute has the fields and types of the spec")
def c10d_attrs(ctx: FileContext) -> Iterator[Issue]:
    cache: dict[int, Any] = {}
    for ref, view in ctx.step_graphs():
        for op in _step_ops(ctx, ref, view, cache):
            if op.info is None and not is_wait(op.name):
                yield Issue(op.loc, f"Op {op.op} ({op.name}) has no {C10D_KEY!r} attribute.")
            elif isinstance(op.info, Problem):
                yield Issue(op.loc, f"Op {op.op} ({op.name}): {op.info.message}")


@rule("TF-COLL-002", "A step numbers the c10d ops of each group and kind 0, 1, 2, ... in order")
def c10d_sequence(ctx: FileContext) -> Iterator[Issue]:
    cache: dict[int, Any] = {}
    for ref, view in ctx.step_graphs():
        last: dict[tuple[str, str], CollectiveInfo] = {}
        for op in _step_ops(ctx, ref, view, cache):
            info = op.info
            if not isinstance(info, CollectiveInfo) or is_wait(op.name):
                continue
            key = (info.group, info.kind)
            before = last.get(key)
            allowed = {0} if before is None else {before.seq + 1}
            if before is not None and before.coalesced is not None and info.coalesced is not None:
                allowed.add(before.seq)  # ops of one coalesced group may share a number
            if info.seq not in allowed:
                want = " or ".join(map(str, sorted(allowed)))
                yield Issue(
                    op.loc,
                    f"Op {op.op} ({op.name}) has {info.kind} seq {info.seq} in group "
                    f"{info.group!r}; the step's previous such op makes it {want}.",
                )
            last[key] = info
