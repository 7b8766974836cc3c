"""From a step's checked rows to the domain: :class:`Step` and :class:`StepSummary`.

:class:`~tracefmt._rankfile.RankFile` owns the HDF5 side (which rows exist, how many bytes the file
can back, reading a torn chunk again) and :mod:`tracefmt._graphdecode` a step's graph; this module
owns what a step's own rows mean.  It checks every reference they make into the graph (a value
row's tensor, a histogram's, an event's op and tensor, the op and tensor of a step's own attributes
and storage offsets) and decodes statistics and op attributes (:mod:`tracefmt._stepparts`), so a
hostile row becomes a :class:`~tracefmt.errors.TraceFormatError` naming the file and step.  It
reads nothing itself: strings and values come through callables.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from tracefmt import _layout as L
from tracefmt._graphdecode import GraphData
from tracefmt._rows import DataRow, EventRow, HistRow, ScalarRow, named
from tracefmt._stepparts import FALSES, NONES, stats_rows, step_attrs, step_metas, step_ops
from tracefmt.errors import TraceFormatError
from tracefmt.model import Event, Histogram, OpNode, TensorMeta, TensorRecord
from tracefmt.rngstate import RngState

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
    #: format 1.4 (section 6.5): an op created NaN/Inf; the loss or the state holds NaN/Inf
    nonfinite_created: bool = False
    nonfinite_state: bool = False
    #: the kinds of the step's events (filled in by :func:`tracefmt.summary.run_summaries`)
    event_kinds: tuple[str, ...] = ()
    kind: str = "full"


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
    #: format 1.4 (section 6.5; :func:`tracefmt.nonfinite.classify_step` says which ops and
    #: tensors): an op created NaN/Inf; the loss, a parameter, gradient or optimizer state holds it
    nonfinite_created: bool = False
    nonfinite_state: bool = False
    #: format 1.6: each generator's state at the step's start (CPU, then each CUDA device), so
    #: that its random draws (dropout masks) can be drawn again; empty: not recorded
    rng_states: tuple[RngState, ...] = ()

    def rng_state(self, device: str = "cpu") -> RngState | None:
        """The state of ``device``'s generator at the step's start (format 1.6), or None."""
        return next((s for s in self.rng_states if s.device == device), None)


@dataclass(frozen=True)
class StepRows:
    """The rows of one step: its row of the step index, and its rows of each per-step table.

    ``tables`` maps each table of :data:`~tracefmt._layout.STEP_RANGES`,
    :data:`~tracefmt._layout.OVERRIDE_RANGES` and :data:`~tracefmt._layout.PARALLEL_TABLES` to
    the step's slice of it, read and bounds-checked (the override tables are empty before format
    1.1: every op and tensor has the graph's values; ``op_starts`` is empty before 1.3).
    """

    step: np.void
    tables: Mapping[str, np.ndarray]


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
        ((flags & L.STEP_NONFINITE_CREATED) != 0).tolist(),
        ((flags & L.STEP_NONFINITE_STATE) != 0).tolist(),
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
            nonfinite_created=created,
            nonfinite_state=state,
        )
        for (
            s,
            gi,
            n_ops,
            n_tensors,
            n_values,
            n_events,
            nan,
            inf,
            created,
            state,
            dropped,
            wall,
            dur,
        ) in columns
    ]


def decode_step(
    rows: StepRows,
    graph: GraphData,
    *,
    rank: int,
    hist_bins: int,
    where: str,
    text: Callable[[int], str],
    load_values: ValuesLoader,
    rng_states: tuple[RngState, ...] = (),
) -> Step:
    """The :class:`Step` of ``rows`` over ``graph``; its values stay on disk until asked.

    Each op's attributes and each tensor's storage offset are the graph's, or the step's own
    from its ``op_attrs`` and ``tensor_offsets`` rows.

    The caller has checked that the stats and op-stats rows are absent or one per tensor and op.
    ``text(sid)`` resolves an interned string ("" for none); ``load_values`` reads one tensor's
    values when :meth:`~tracefmt.model.TensorRecord.values` asks.  ``rng_states`` (format 1.6)
    are read by the caller (:mod:`tracefmt._rngread`).
    """
    r, tables = rows.step, rows.tables
    n_ops, n_tensors = len(graph.ops), len(graph.metas)
    data, hists = tables[L.DATA_INDEX], tables[L.HISTS]
    bad = np.flatnonzero(data["tensor"] >= n_tensors)
    if bad.size:
        tensor = int(data["tensor"][bad[0]])
        raise TraceFormatError(
            f"{where}: values recorded for tensor {tensor}, but the graph has {n_tensors}."
        )
    values = {d.tensor: d for d in named(data, DataRow)}
    bad = np.flatnonzero(hists["tensor"] >= n_tensors)
    if bad.size:
        tensor = int(hists["tensor"][bad[0]])
        raise TraceFormatError(f"{where}: histogram for tensor {tensor} is out of range.")
    histograms = {
        h.tensor: Histogram(h.lo, h.hi, tuple(h.counts[:hist_bins])) for h in named(hists, HistRow)
    }
    stats = stats_rows(tables[L.STATS])
    metas = step_metas(graph.metas, tables[L.TENSOR_OFFSETS], where)
    each_stats = stats if stats else itertools.repeat(None, len(metas))
    tensors: tuple[TensorRecord, ...]
    if values or histograms:
        tensors = tuple(
            TensorRecord(
                i,
                meta,
                s,
                histograms.get(i),
                i in values,
                None if i not in values else _loader(load_values, i, meta, values[i]),
            )
            for i, meta, s in zip(itertools.count(), metas, each_stats)
        )
    else:  # stats only: positional arguments, nothing to look up per tensor
        tensors = tuple(map(TensorRecord, itertools.count(), metas, each_stats, NONES, FALSES))
    own = step_attrs(tables[L.OP_ATTRS], n_ops, where, text)
    # A step with no timing and no attributes of its own shares its graph's ops.
    ops = graph.ops if not own and not len(tables[L.OP_STATS]) else step_ops(graph, own, tables)
    event_list = []
    for e in named(tables[L.EVENTS], EventRow):
        if e.op >= n_ops or e.tensor >= n_tensors:
            raise TraceFormatError(f"{where}: an event names an op or tensor out of range.")
        event_list.append(
            Event(
                text(e.kind),
                text(e.message),
                None if e.op < 0 else e.op,
                None if e.tensor < 0 else e.tensor,
            )
        )
    return Step(
        step=int(r["step"]),
        rank=rank,
        graph=int(r["graph"]),
        ops=ops,
        tensors=tensors,
        events=tuple(event_list),
        scalars={text(sc.name): sc.value for sc in named(tables[L.SCALARS], ScalarRow)},
        wall_time=float(r["wall_time"]),
        duration=float(r["duration"]),
        dropped=int(r["dropped"]),
        has_nan=bool(r["flags"] & L.STEP_HAS_NAN),
        has_inf=bool(r["flags"] & L.STEP_HAS_INF),
        nonfinite_created=bool(r["flags"] & L.STEP_NONFINITE_CREATED),
        nonfinite_state=bool(r["flags"] & L.STEP_NONFINITE_STATE),
        rng_states=rng_states,
    )


def _loader(
    load_values: ValuesLoader, tensor: int, meta: TensorMeta, d: DataRow
) -> Callable[[], np.ndarray]:
    """What :meth:`~tracefmt.model.TensorRecord.values` calls to read tensor ``tensor``'s values."""
    return functools.partial(load_values, tensor, meta, d.offset, d.count, d.fingerprint)
