"""From a captured step to its record: the graph (a variant of the last step's where it repeats),
op timings, statistics, values and scalars.

Runs on the writer thread (:mod:`recorder.pipeline`), so none of it is on the training path.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from recorder.captured import OpRow, RawStep, TensorRow
from recorder.convert import to_numpy
from tracefmt.errors import TraceError
from tracefmt.events import NONFINITE_CREATED, message_fields
from tracefmt.model import Event, Role
from tracefmt.nonfinite import classify_record
from tracefmt.records import Graph, GraphBuilder, StepRecord, empty_op_stats

__all__ = ["GraphCache", "build_graph", "build_record"]


def _scalar(value: float | torch.Tensor) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TraceError(
                f"A step scalar must have one element, got a tensor of shape {tuple(value.shape)}."
            )
        return float(value.detach().cpu().item())
    return float(value)


def build_graph(raw: RawStep) -> Graph:
    """The graph of ``raw``, built from scratch."""
    g = GraphBuilder()
    for row, role, name in zip(raw.tensors, raw.roles, raw.names, strict=True):
        g.add_tensor(
            row.dtype,
            row.shape,
            strides=row.strides,
            device=row.device,
            role=role,
            name=name,
            producer=None if row.producer < 0 else row.producer,
            producer_slot=row.producer_slot,
            version=row.version,
            storage_offset=row.storage_offset,
        )
    for op in raw.ops:
        g.add_op(
            op.name,
            phase=op.phase,
            module=op.module,
            inputs=op.inputs,
            outputs=op.outputs,
            attrs=op.attrs,
            source=op.source,
        )
    return g.finish()


class GraphCache:
    """The last step's raw rows and graph, so that a step repeating its structure gets its graph as
    a :meth:`Graph.variant` of the last one: only the ops whose arguments changed are encoded
    again, and the digest is carried over (on the FACTS GPT step, 13 + 4 ms of the writer
    thread's CPU become about 3).

    Arguments count as unchanged only when their ``repr`` is equal too: ``1 == 1.0 == True``, but
    the trace must keep which one the op was given.
    """

    def __init__(self) -> None:
        # The last step's rows only (never the RawStep: it holds value copies).
        self._tensors: list[TensorRow] = []
        self._roles: list[Role] = []
        self._names: list[str | None] = []
        self._ops: list[OpRow] = []
        self._reprs: list[str] = []
        self._graph: Graph | None = None

    def graph(self, raw: RawStep) -> Graph:
        """The graph of ``raw``: a variant of the last step's when only arguments and storage
        offsets differ, else built from scratch; either way what :class:`GraphBuilder` builds."""
        reprs = [repr(op.attrs) if op.attrs else "" for op in raw.ops]
        graph = self._variant(raw, reprs)
        if graph is None:
            graph = build_graph(raw)
        self._tensors, self._roles, self._names = raw.tensors, raw.roles, raw.names
        self._ops, self._reprs, self._graph = raw.ops, reprs, graph
        return graph

    def _variant(self, raw: RawStep, reprs: list[str]) -> Graph | None:
        graph = self._graph
        if (
            graph is None
            or len(raw.ops) != len(self._ops)
            or len(raw.tensors) != len(self._tensors)
            or raw.roles != self._roles
            or raw.names != self._names
        ):
            return None
        offsets: dict[int, int] = {}
        for i, (new, old) in enumerate(zip(raw.tensors, self._tensors, strict=True)):
            if new != old:
                if not new.same_but_offset(old):
                    return None
                offsets[i] = new.storage_offset
        attrs: dict[int, dict[str, Any] | None] = {}
        for i, (new_op, old_op) in enumerate(zip(raw.ops, self._ops, strict=True)):
            if new_op != old_op:
                if not new_op.same_but_attrs(old_op):
                    return None
                attrs[i] = new_op.attrs
            elif reprs[i] != self._reprs[i]:
                attrs[i] = new_op.attrs
        return graph.variant(attrs, offsets)


def build_record(raw: RawStep, graphs: GraphCache | None = None) -> StepRecord:
    """Build the :class:`StepRecord` of a captured step (waits for its device results).

    ``graphs``: the cache of one recording's writer thread (see :class:`GraphCache`)."""
    raw.materialize()
    graph = build_graph(raw) if graphs is None else graphs.graph(raw)
    op_stats = empty_op_stats(len(raw.ops))
    op_stats["host_ns"] = np.asarray(raw.host_ns, dtype=np.int64)
    if raw.mem_bytes:  # off CUDA: bytes of fresh output storage (CUDA ops' deltas come below)
        op_stats["mem_bytes"] = np.asarray(raw.mem_bytes, dtype=np.int64)
    for timing in raw.cuda_times:
        timing.end.synchronize()
        op_stats["device_ns"][timing.op] = int(timing.start.elapsed_time(timing.end) * 1e6)
        op_stats["mem_bytes"][timing.op] = timing.mem_bytes
    stats, hists = (None, {}) if raw.stats is None else raw.stats.resolve()
    if raw.values_ready is not None:
        raw.values_ready.synchronize()
    values = {i: to_numpy(t) for i, t in raw.values.items()}
    scalars = {k: _scalar(v) for k, v in raw.scalars.items()}
    record = StepRecord(
        step=raw.step,
        graph=graph,
        stats=stats,
        op_stats=op_stats,
        values=values,
        histograms=hists,
        events=tuple(raw.events),
        scalars=scalars,
        wall_time=raw.wall_time,
        duration=raw.duration,
        dropped=raw.dropped,
        op_starts=raw.host_start_ns or None,
        rng_states=raw.rng_states,
    )
    if stats is not None and any(e.kind == NONFINITE_CREATED and e.op is None for e in record.events):
        record.events = _name_created_ops(record)
    return record


def _name_created_ops(record: StepRecord) -> tuple[Event, ...]:
    """A ``nonfinite_created`` event from light capture names a module; in a full step it also
    names the op (and its output) that created the NaN/Inf inside that module, when the step's
    statistics show one (spec 5.11).  A module whose NaN/Inf came from its parameters has none."""
    report = classify_record(record)
    ops = record.graph.ops
    events = []
    for e in record.events:
        module = message_fields(e).get("module")
        if e.kind == NONFINITE_CREATED and e.op is None and isinstance(module, str):
            inside = (
                o
                for o in report.created
                if ops[o.op].module == module or ops[o.op].module.startswith(module + ".") or not module
            )
            first = next(inside, None)
            if first is not None:
                e = replace(e, op=first.op, tensor=first.outputs[0] if first.outputs else None)
        events.append(e)
    return tuple(events)
