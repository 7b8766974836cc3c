"""A step read from a trace, turned back into a :class:`~tracefmt.records.StepRecord` to write again.

:func:`step_record` is the inverse of what a :class:`~tracefmt.writer.TraceWriter` followed by a
reader does: its record, written to a new file and read back, gives the same :class:`Step`, field
by field and bit for bit (statistics and scalars are float64 in both, values are copied as bytes).
``tracefmt extract`` copies steps this way.  A :class:`GraphCache` rebuilds each stored graph once:
the later steps that share it in the source get a :meth:`~tracefmt.records.Graph.variant` with
their own op attributes and storage offsets, so they share one stored graph in the copy too.

Example::

    graphs = GraphCache()
    with tracefmt.open("runs/big") as src, TraceWriter("small/rank-00000.tft.h5") as w:
        w.write_step(step_record(src.step(41207), graphs))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tracefmt import _layout as L
from tracefmt._decode import Step
from tracefmt.attrcodec import encode_attrs
from tracefmt.light import LightFlags, LightStep, LightStepRecord, empty_light_rows
from tracefmt.model import TensorStats
from tracefmt.records import Graph, GraphBuilder, StepRecord, empty_op_stats, empty_stats

__all__ = ["GraphCache", "light_record", "step_graph", "step_record"]

_MOMENTS = ("min", "max", "mean", "std", "norm")
_COUNTS = ("nan", "inf", "zero")
_TIMING = ("host_ns", "device_ns", "mem_bytes")


def _attrs_text(attrs: Mapping[str, Any]) -> str | None:
    """An op's attributes as the writer stores them (``None`` for none)."""
    return None if not attrs else encode_attrs(attrs)


def step_graph(step: Step) -> Graph:
    """The graph of ``step`` (its ops and tensors, with this step's attributes and offsets)."""
    g = GraphBuilder()
    for t in step.tensors:
        m = t.meta
        g.add_tensor(
            m.dtype,
            m.shape,
            strides=m.strides,
            device=m.device,
            role=m.role,
            name=m.name,
            producer=m.producer,
            producer_slot=m.producer_slot,
            version=m.version,
            storage_offset=m.storage_offset,
        )
    for op in step.ops:
        g.add_op(
            op.name,
            phase=op.phase,
            module=op.module,
            inputs=[(t, arg, item) for t, (arg, item) in zip(op.inputs, op.input_args, strict=True)],
            outputs=op.outputs,
            attrs=op.attrs,
            source=op.source,
        )
    return g.finish()


class GraphCache:
    """Rebuilds each graph of one source file once (keyed by the steps' ``graph`` row).

    A later step on the same graph row gets the cached graph's :meth:`~Graph.variant` with the
    ops and tensors whose attributes or offsets differ, so it keeps the cached digest (and the
    writer stores the graph once).  Use one cache per source rank file: graph rows are per file.
    """

    def __init__(self) -> None:
        self._graphs: dict[int, tuple[Graph, tuple[str | None, ...], tuple[int, ...]]] = {}

    def graph(self, step: Step) -> Graph:
        """The graph of ``step``, from the cache when its graph row was seen before."""
        attrs = tuple(_attrs_text(op.attrs) for op in step.ops)
        offsets = tuple(t.meta.storage_offset for t in step.tensors)
        cached = self._graphs.get(step.graph)
        if cached is None or len(cached[1]) != len(attrs) or len(cached[2]) != len(offsets):
            graph = step_graph(step)
            self._graphs[step.graph] = (graph, attrs, offsets)
            return graph
        base, base_attrs, base_offsets = cached
        own_attrs = {
            i: step.ops[i].attrs
            for i, (a, b) in enumerate(zip(attrs, base_attrs, strict=True))
            if a != b
        }
        own_offsets = {
            i: o for i, (o, b) in enumerate(zip(offsets, base_offsets, strict=True)) if o != b
        }
        if not own_attrs and not own_offsets:
            return base
        return base.variant(attrs=own_attrs, storage_offsets=own_offsets)


def _stats(stats: list[TensorStats | None]) -> np.ndarray | None:
    """The ``stats`` rows of a step's tensors' statistics (None when the step has none)."""
    if all(s is None for s in stats):
        return None
    rows = empty_stats(len(stats))
    for i, s in enumerate(stats):
        if s is None:
            continue
        flags = 0
        if s.min is not None:
            flags |= L.STAT_MOMENTS
            for name in _MOMENTS:
                value = getattr(s, name)
                rows[name][i] = np.nan if value is None else value
        if s.nan is not None:
            flags |= L.STAT_COUNTS
            for name in _COUNTS:
                rows[name][i] = getattr(s, name) or 0
        if s.fingerprint is not None:
            flags |= L.STAT_FINGERPRINT
            rows["fingerprint"][i] = s.fingerprint
        rows["flags"][i] = flags
    return rows


def _op_stats(step: Step) -> np.ndarray | None:
    """The ``op_stats`` rows of a step's op timings (None when nothing was measured)."""
    if not any(getattr(op, f) is not None for op in step.ops for f in _TIMING):
        return None
    rows = empty_op_stats(len(step.ops))
    for name in _TIMING:
        rows[name] = [-1 if (v := getattr(op, name)) is None else v for op in step.ops]
    return rows


def _op_starts(step: Step) -> list[int] | None:
    """Each op's host start (-1: not measured); None when no op has one."""
    starts = [-1 if op.host_start_ns is None else op.host_start_ns for op in step.ops]
    return starts if any(s >= 0 for s in starts) else None


def step_record(step: Step, graphs: GraphCache | None = None) -> StepRecord:
    """``step`` as a :class:`StepRecord`: its graph, statistics, op timings and start times,
    histograms, recorded values (read now), events, scalars, wall time, duration, dropped count and
    (format 1.6) RNG states.

    ``graphs`` (one per source file) lets steps that share a graph share it in the record too.
    """
    graph = (graphs or GraphCache()).graph(step)
    return StepRecord(
        step=step.step,
        graph=graph,
        stats=_stats([t.stats for t in step.tensors]) if step.tensors else None,
        op_stats=_op_stats(step),
        op_starts=_op_starts(step),
        values={t.index: t.values() for t in step.tensors if t.has_values},
        histograms={
            t.index: (t.histogram.lo, t.histogram.hi, np.array(t.histogram.counts, dtype=np.uint64))
            for t in step.tensors
            if t.histogram is not None
        },
        events=step.events,
        scalars=dict(step.scalars),
        wall_time=step.wall_time,
        duration=step.duration,
        dropped=step.dropped,
        rng_states=step.rng_states,  # format 1.6
    )


def light_record(light: LightStep) -> LightStepRecord:
    """The record of a light step read from a trace (format 1.4): written again and read back,
    it gives the same :class:`~tracefmt.light.LightStep`."""
    names = list(dict.fromkeys(r.name for r in light.rows))
    index = {name: i for i, name in enumerate(names)}
    rows = empty_light_rows(len(light.rows))
    for i, r in enumerate(light.rows):
        flags = LightFlags.INPUTS_NONFINITE if r.inputs_nonfinite else LightFlags(0)
        row = rows[i]
        row["name"], row["kind"], row["numel"] = index[r.name], int(r.kind), r.numel
        if r.min is not None:
            flags |= LightFlags.MOMENTS
            row["min"], row["max"], row["mean"], row["std"], row["norm"] = (
                r.min,
                r.max,
                r.mean,
                r.std,
                r.norm,
            )
        if r.nan is not None:
            flags |= LightFlags.COUNTS
            row["nan"], row["inf"] = r.nan, r.inf
        row["flags"] = int(flags)
    return LightStepRecord(
        step=light.step,
        names=names,
        rows=rows,
        scalars=dict(light.scalars),
        events=light.events,
        wall_time=light.wall_time,
        duration=light.duration,
    )
