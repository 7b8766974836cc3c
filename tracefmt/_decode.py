"""From checked rows to the domain: :class:`Step`, :class:`StepSummary`, graphs and strings.

:class:`~tracefmt._rankfile.RankFile` owns the HDF5 side (which rows exist, how many bytes the file
can back, reading a torn chunk again); this module owns what the rows mean.  It checks every
reference from one table into another (an op's edges, an edge's tensor, a tensor's producer and
dimensions, a value row's tensor, an event's op and tensor, a string's bytes) and decodes enum
codes, UTF-8 and op attributes, so a hostile row becomes a :class:`~tracefmt.errors.TraceFormatError`
naming the file and step.  It reads nothing itself: strings and values come through callables.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tracefmt import _layout as L
from tracefmt.dtypes import DType
from tracefmt.errors import TraceError, TraceFormatError
from tracefmt.model import (
    Event,
    Histogram,
    OpNode,
    Phase,
    Role,
    TensorMeta,
    TensorRecord,
    TensorStats,
)
from tracefmt.records import decode_attrs

#: ``load_values(tensor, meta, offset, count, fingerprint)``: one tensor's values of one step.
ValuesLoader = Callable[[int, TensorMeta, int, int, int], np.ndarray]


@dataclass(frozen=True)
class StepSummary:
    """One row of ``tracefmt ls``: what a step holds, read from the step index alone.

    ``graph`` is the step's row of ``graphs``: steps that share it have the same ops, tensors and
    edges, though (format 1.1) their ops' attributes and tensors' storage offsets may differ.
    """

    step: int
    rank: int
    graph: int
    num_ops: int
    num_tensors: int
    num_values: int
    num_events: int
    has_nan: bool
    has_inf: bool
    dropped: int
    wall_time: float
    duration: float


@dataclass(frozen=True)
class Step:
    """One recorded step of one rank, with its graph, statistics and (lazily) values.

    ``ops`` and ``tensors`` carry this step's op attributes and storage offsets.  ``graph`` is the
    row of ``graphs`` the step uses; two steps with the same ``graph`` have the same structure but
    may differ in op attributes (an optimizer's step size, a data loader's slice bounds) and in
    storage offsets (the views it slices), so compare ``ops`` and ``tensors``, not ``graph``.
    """

    step: int
    rank: int
    graph: int
    ops: tuple[OpNode, ...]
    tensors: tuple[TensorRecord, ...]
    events: tuple[Event, ...]
    scalars: dict[str, float]
    wall_time: float
    duration: float
    dropped: int
    has_nan: bool
    has_inf: bool


@dataclass(frozen=True)
class GraphData:
    """A decoded graph, shared by every step that uses it: op tuples and tensor metadata.

    The ops and tensors carry the graph's *base* attributes and storage offsets, those stored in
    its ``ops`` and ``tensors`` rows (the first step that used the graph had them);
    :func:`decode_step` puts a step's own in their place.
    """

    ops: tuple[tuple[Any, ...], ...]
    metas: tuple[TensorMeta, ...]


@dataclass(frozen=True)
class StepRows:
    """The rows of one step, each table's slice already read and bounds-checked."""

    step: np.void  # its row of the step index
    stats: np.ndarray
    op_stats: np.ndarray
    data: np.ndarray
    hists: np.ndarray
    events: np.ndarray
    scalars: np.ndarray
    #: The step's ``op_attrs`` and ``tensor_offsets`` rows: its values that differ from the
    #: graph's (none before format 1.1).
    overrides: tuple[np.ndarray, np.ndarray]


def decode_summaries(
    rows: np.ndarray, graphs: np.ndarray, rank: int, where: Callable[[int], str]
) -> list[StepSummary]:
    """One :class:`StepSummary` per row of the step index ``rows``.

    ``graphs`` is the whole graphs table; ``where(step)`` names the file and step in errors.
    """
    # Column-wise: per-row numpy scalar access costs ~10 us a step (1 s at 100,000 steps).
    g = rows["graph"]
    bad = np.flatnonzero(g >= len(graphs))
    if bad.size:
        i = int(bad[0])
        raise TraceFormatError(f"{where(int(rows['step'][i]))}: graph {int(g[i])} is out of range.")
    flags = rows["flags"]
    columns = zip(
        rows["step"].tolist(),
        g.tolist(),
        graphs["op_count"][g].tolist(),
        graphs["tensor_count"][g].tolist(),
        rows["data_count"].tolist(),
        rows["event_count"].tolist(),
        ((flags & L.STEP_HAS_NAN) != 0).tolist(),
        ((flags & L.STEP_HAS_INF) != 0).tolist(),
        rows["dropped"].tolist(),
        rows["wall_time"].tolist(),
        rows["duration"].tolist(),
        strict=True,
    )
    return [
        StepSummary(
            step=s,
            rank=rank,
            graph=gi,
            num_ops=n_ops,
            num_tensors=n_tensors,
            num_values=n_values,
            num_events=n_events,
            has_nan=nan,
            has_inf=inf,
            dropped=dropped,
            wall_time=wall,
            duration=dur,
        )
        for s, gi, n_ops, n_tensors, n_values, n_events, nan, inf, dropped, wall, dur in columns
    ]


def decode_graph(
    g: int,
    ops: np.ndarray,
    edges: np.ndarray,
    tensors: np.ndarray,
    dims: list[int],
    where: str,
    string: Callable[[int], str | None],
) -> GraphData:
    """Graph ``g`` from its rows of the ops, edges and tensors tables and its dimensions.

    ``string(sid)`` resolves an interned string (``None`` for "no string").
    """
    n_ops, n_edges, n_tensors = len(ops), len(edges), len(tensors)

    def text(sid: int) -> str:
        return string(sid) or ""

    try:
        metas = tuple(_meta(t, dims, n_ops, where, text) for t in tensors.tolist())
        parsed = []
        edge_list = edges.tolist()
        for i, (name, phase, module, attrs, source, i0, ni, o0, no) in enumerate(ops.tolist()):
            if i0 + ni > n_edges or o0 + no > n_edges:
                raise TraceFormatError(f"{where}: op {i} has edges outside its graph.")
            ins = edge_list[i0 : i0 + ni]
            outs = edge_list[o0 : o0 + no]
            for t, _, _ in ins + outs:
                if t >= n_tensors:
                    raise TraceFormatError(
                        f"{where}: op {i} names tensor {t}, but the graph has {n_tensors}."
                    )
            attr_text = string(attrs)
            parsed.append(
                (
                    i,
                    text(name),
                    Phase(phase),
                    text(module),
                    tuple(e[0] for e in ins),
                    tuple(e[0] for e in outs),
                    tuple((e[1], e[2]) for e in ins),
                    {} if attr_text is None else decode_attrs(attr_text),
                    string(source),
                )
            )
    except ValueError as e:  # bad enum code, bad JSON
        if isinstance(e, TraceError):
            raise
        raise TraceFormatError(f"{where}: graph {g} is malformed: {e}") from e
    return GraphData(tuple(parsed), metas)


def _meta(
    t: tuple[Any, ...], dims: list[int], n_ops: int, where: str, text: Callable[[int], str]
) -> TensorMeta:
    dtype, role, ndim, d0, device, name, producer, slot, version, offset = t
    if ndim > L.MAX_NDIM or d0 + 2 * ndim > len(dims):
        raise TraceFormatError(f"{where}: a tensor's dimensions lie outside /{L.DIMS}.")
    shape = tuple(dims[d0 : d0 + ndim])
    strides = tuple(dims[d0 + ndim : d0 + 2 * ndim])
    if any(d < 0 for d in shape):
        raise TraceFormatError(f"{where}: a tensor has a negative dimension {shape}.")
    if not -1 <= producer < n_ops:
        raise TraceFormatError(
            f"{where}: a tensor names producer op {producer}, but the graph has {n_ops} ops."
        )
    return TensorMeta(
        dtype=DType(dtype),
        shape=shape,
        strides=None if ndim and all(s == -1 for s in strides) else strides,
        device=text(device),
        role=Role(role),
        name=text(name) or None,
        producer=None if producer < 0 else producer,
        producer_slot=slot,
        version=version,
        storage_offset=offset,
    )


def decode_step(
    rows: StepRows,
    graph: GraphData,
    *,
    rank: int,
    hist_bins: int,
    where: str,
    text: Callable[[int], str],
    load_values: ValuesLoader,
) -> Step:
    """The :class:`Step` of ``rows`` over ``graph``; its values stay on disk until asked.

    Each op's attributes and each tensor's storage offset are the graph's, or the step's own
    from its ``op_attrs`` and ``tensor_offsets`` rows.

    The caller has checked that the stats and op-stats rows are absent or one per tensor and op.
    ``text(sid)`` resolves an interned string ("" for none); ``load_values`` reads one tensor's
    values when :meth:`~tracefmt.model.TensorRecord.values` asks.
    """
    r = rows.step
    n_ops, n_tensors = len(graph.ops), len(graph.metas)
    stats_count, op_count = len(rows.stats), len(rows.op_stats)
    values: dict[int, tuple[int, int, int]] = {}
    for t, offset, count, fp in rows.data.tolist():
        if t >= n_tensors:
            raise TraceFormatError(
                f"{where}: values recorded for tensor {t}, but the graph has {n_tensors}."
            )
        values[t] = (offset, count, fp)
    histograms: dict[int, Histogram] = {}
    for h in rows.hists:
        t = int(h["tensor"])
        if t >= n_tensors:
            raise TraceFormatError(f"{where}: histogram for tensor {t} is out of range.")
        histograms[t] = Histogram(
            float(h["lo"]), float(h["hi"]), tuple(int(c) for c in h["counts"][:hist_bins])
        )
    stat_list = rows.stats.tolist()
    metas = _step_metas(graph.metas, rows.overrides[1], where)
    tensors = tuple(
        TensorRecord(
            index=i,
            meta=meta,
            stats=_stats(stat_list[i]) if stats_count else None,
            histogram=histograms.get(i),
            has_values=i in values,
            _load=None if i not in values else functools.partial(load_values, i, meta, *values[i]),
        )
        for i, meta in enumerate(metas)
    )
    timing = rows.op_stats.tolist()
    own = _step_attrs(rows.overrides[0], n_ops, where, text)
    ops = tuple(
        OpNode(
            index=i,
            name=name,
            phase=phase,
            module=module,
            inputs=ins,
            outputs=outs,
            input_args=args,
            attrs=own.get(i, attrs),
            source=source,
            host_ns=_opt(timing[i][0]) if op_count else None,
            device_ns=_opt(timing[i][1]) if op_count else None,
            mem_bytes=_opt(timing[i][2]) if op_count else None,
        )
        for i, name, phase, module, ins, outs, args, attrs, source in graph.ops
    )
    event_list = []
    for kind, op, tensor, message in rows.events.tolist():
        if op >= n_ops or tensor >= n_tensors:
            raise TraceFormatError(f"{where}: an event names an op or tensor out of range.")
        event_list.append(
            Event(text(kind), text(message), None if op < 0 else op, None if tensor < 0 else tensor)
        )
    return Step(
        step=int(r["step"]),
        rank=rank,
        graph=int(r["graph"]),
        ops=ops,
        tensors=tensors,
        events=tuple(event_list),
        scalars={text(n): float(v) for n, v in rows.scalars.tolist()},
        wall_time=float(r["wall_time"]),
        duration=float(r["duration"]),
        dropped=int(r["dropped"]),
        has_nan=bool(r["flags"] & L.STEP_HAS_NAN),
        has_inf=bool(r["flags"] & L.STEP_HAS_INF),
    )


def _increasing(indices: list[int], n: int, what: str, where: str) -> None:
    """Check that a step's override rows name strictly increasing ``what``s below ``n``."""
    previous = -1
    for i in indices:
        if not previous < i < n:
            raise TraceFormatError(
                f"{where}: the step's own values name {what} {i} after "
                f"{previous}; they must name increasing {what}s of the graph's "
                f"{n}."
            )
        previous = i


def _step_metas(metas: tuple[TensorMeta, ...], rows: np.ndarray, where: str) -> tuple[TensorMeta, ...]:
    """The graph's tensor metadata with the step's ``tensor_offsets`` rows applied."""
    if not len(rows):
        return metas
    pairs = rows.tolist()
    _increasing([t for t, _ in pairs], len(metas), "tensor", where)
    out = list(metas)
    for t, offset in pairs:
        out[t] = dataclasses.replace(out[t], storage_offset=offset)
    return tuple(out)


def _step_attrs(
    rows: np.ndarray, n_ops: int, where: str, text: Callable[[int], str]
) -> dict[int, dict[str, Any]]:
    """A step's ``op_attrs`` rows as {op index: attributes}."""
    out: dict[int, dict[str, Any]] = {}
    pairs = rows.tolist()
    _increasing([op for op, _ in pairs], n_ops, "op", where)
    for op, sid in pairs:
        if sid == L.NO_STRING:
            out[op] = {}
            continue
        try:
            out[op] = decode_attrs(text(sid))
        except ValueError as e:
            if isinstance(e, TraceError):
                raise
            raise TraceFormatError(
                f"{where}: the step's attributes of op {op} are malformed: {e}"
            ) from e
    return out


def decode_string(index: np.ndarray, data: np.ndarray, sid: int, where: str) -> str:
    """Interned string ``sid`` from the whole ``strings/index`` and ``strings/bytes`` tables."""
    if not 0 <= sid < len(index):
        raise TraceFormatError(
            f"{where}: string id {sid} is out of range (/{L.STRINGS_INDEX} has {len(index)} rows)."
        )
    offset, length = int(index[sid]["offset"]), int(index[sid]["length"])
    if length > L.MAX_STRING_BYTES or offset + length > len(data):
        raise TraceFormatError(f"{where}: string {sid} points outside /{L.STRINGS_BYTES}.")
    try:
        return data[offset : offset + length].tobytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise TraceFormatError(f"{where}: string {sid} is not UTF-8.") from e


def _opt(x: int) -> int | None:
    return None if x < 0 else int(x)


def _stats(row: tuple[Any, ...]) -> TensorStats:
    flags, mn, mx, mean, std, norm, nan, inf, zero, fp = row
    moments, counts = flags & L.STAT_MOMENTS, flags & L.STAT_COUNTS
    return TensorStats(
        min=mn if moments else None,
        max=mx if moments else None,
        mean=mean if moments else None,
        std=std if moments else None,
        norm=norm if moments else None,
        nan=nan if counts else None,
        inf=inf if counts else None,
        zero=zero if counts else None,
        fingerprint=fp if flags & L.STAT_FINGERPRINT else None,
    )
