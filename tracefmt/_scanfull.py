"""Full steps as columns: the ``steps``, ``ops``, ``tensors``, ``stats``, ``op_timings``,
``events`` and ``scalars`` tables of a batch of steps of one rank file (spec/parquet.md).

Each graph is decoded once by the reader's own checks (:meth:`RankFile._graph`) and turned into
columns once (:mod:`tracefmt._scangraph`); a batch's per-step tables are read span by span
(:func:`read_ranges`, its ranges checked first) and every reference a row makes is checked in
bulk, so a hostile row is a :class:`~tracefmt.errors.TraceFormatError` naming the file and step,
as with the reader.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tracefmt import _layout as L
from tracefmt._ranges import checked_graph_index, read_spans, segment_index
from tracefmt._rankfile import RankFile
from tracefmt._scangraph import (
    GraphColumns,
    concat_graphs,
    enum_labels,
    expand,
    graph_columns,
    positions,
    take,
)
from tracefmt._scantypes import Column, ColumnTable, LabelPool, Labels, Masked
from tracefmt.attrcodec import decode_attrs, encode_attrs
from tracefmt.dtypes import DType
from tracefmt.errors import TraceError, TraceFormatError
from tracefmt.model import Phase, Role

__all__ = ["FullScanner", "read_ranges"]

PHASES, ROLES, DTYPES = enum_labels(Phase), enum_labels(Role), enum_labels(DType)
#: ``step_kind`` labels (code 0: a full step, 1: a light step).
STEP_KINDS = ("full", "light")


def read_ranges(
    rf: RankFile, table: str, starts: np.ndarray, counts: np.ndarray, steps: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``table`` in ranges ``starts[k], counts[k]`` (of steps ``steps``), one after
    the other, and for each row its range ``k``; read by :func:`~tracefmt._ranges.read_spans`,
    which checks the ranges first."""
    rows, offsets = read_spans(rf, table, starts, counts, steps)
    counts = counts.astype(np.int64)
    return rows[segment_index(offsets, counts)], np.repeat(np.arange(len(counts)), counts)


def _increasing(index: np.ndarray, owner: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """Rows whose ``index`` is not below its step's ``limit`` or not above the row before it in
    the same step (a step's own op attributes and offsets name increasing ops and tensors)."""
    bad = index.astype(np.int64) >= limit[owner]
    same = owner[1:] == owner[:-1]
    bad[1:] |= same & (index[1:].astype(np.int64) <= index[:-1].astype(np.int64))
    return np.flatnonzero(bad)


def _nonneg(values: np.ndarray) -> Masked:
    return Masked(values.astype(np.int64), values >= 0)


class FullScanner:
    """Turns batches of rows of one rank file's step index into tables; graphs are decoded and
    turned into columns once per scanner."""

    def __init__(self, rf: RankFile, pool: LabelPool, graphs: np.ndarray) -> None:
        self._rf = rf
        self._pool = pool
        self._graph_rows = graphs
        self._graphs: dict[int, GraphColumns] = {}
        self._attrs_text: Callable[[str], str] = self._canonical_attrs

    def _where(self, step: int) -> str:
        return f"{self._rf.path}, step {step}"

    def _canonical_attrs(self, text: str) -> str:
        try:
            return encode_attrs(decode_attrs(text))
        except ValueError as e:
            if isinstance(e, TraceError):
                raise
            raise TraceFormatError(
                f"{self._rf.path}: op attributes {text[:80]!r} are malformed: {e}"
            ) from e

    def _graph(self, g: int, step: int) -> GraphColumns:
        cached = self._graphs.get(g)
        if cached is None:
            if len(self._graphs) >= 256:  # a run whose graph changes every step: keep memory flat
                self._graphs.clear()
            cached = self._graphs[g] = graph_columns(self._rf._graph(g, step), self._pool)
        return cached

    def tables(self, rows: np.ndarray, index: np.ndarray) -> dict[str, ColumnTable]:
        """The tables of the steps in ``rows``, which are rows ``index`` of the step index."""
        steps = rows["step"].astype(np.int64)
        g = checked_graph_index(self._rf, rows, len(self._graph_rows))
        n_ops = self._graph_rows["op_count"][g].astype(np.int64)
        n_tensors = self._graph_rows["tensor_count"][g].astype(np.int64)
        for field, n in (("stats_count", n_tensors), ("op_stats_count", n_ops)):
            bad = np.flatnonzero((rows[field] != 0) & (rows[field] != n))
            if len(bad):
                k = int(bad[0])
                raise TraceFormatError(
                    f"{self._where(int(steps[k]))}: {int(rows[field][k])} {field.split('_count')[0]} "
                    f"rows for a graph of {int(n_tensors[k])} tensors and {int(n_ops[k])} ops."
                )
        unique, first, local = np.unique(g, return_index=True, return_inverse=True)
        parts = [
            self._graph(gi, int(steps[k])) for gi, k in zip(unique.tolist(), first.tolist(), strict=True)
        ]
        cat = concat_graphs(parts)
        op_first = np.cumsum([0] + [p.num_ops for p in parts])
        tensor_first = np.cumsum([0] + [p.num_tensors for p in parts])
        local = local.reshape(-1)
        ex = expand(op_first[local], n_ops, tensor_first[local], n_tensors)
        ops = self._ops(rows, index, steps, n_ops, cat, ex.op_index, ex.op_step_start)
        tensors = self._tensors(
            rows, index, steps, n_tensors, cat, ex.tensor_index, ex.tensor_step_start
        )
        return {
            "steps": self._steps(rows, steps, n_ops, n_tensors),
            "ops": ops,
            "tensors": tensors,
            "stats": self._stats(rows, steps),
            "op_timings": self._timings(rows, steps),
            "events": self._events(rows, steps, n_ops, n_tensors),
            "scalars": self._scalars(rows, steps),
        }

    def _steps(
        self, rows: np.ndarray, steps: np.ndarray, n_ops: np.ndarray, n_tensors: np.ndarray
    ) -> ColumnTable:
        n = len(rows)
        flags = rows["flags"]
        everywhere = np.ones(n, dtype=bool)
        duration = rows["duration"].astype(np.float64)
        return ColumnTable(
            "steps",
            n,
            {
                "step": steps,
                "step_kind": Labels(np.zeros(n, dtype=np.int32), STEP_KINDS),
                "graph": Masked(rows["graph"].astype(np.int64), everywhere),
                "num_ops": Masked(n_ops, everywhere),
                "num_tensors": Masked(n_tensors, everywhere),
                "num_values": Masked(rows["data_count"].astype(np.int64), everywhere),
                "num_events": rows["event_count"].astype(np.int64),
                "num_scalars": rows["scalar_count"].astype(np.int64),
                "num_light_rows": Masked(np.zeros(n, dtype=np.int64), ~everywhere),
                "wall_time": rows["wall_time"].astype(np.float64),
                "duration": Masked(duration, np.isfinite(duration)),
                "has_nan": (flags & L.STEP_HAS_NAN) != 0,
                "has_inf": (flags & L.STEP_HAS_INF) != 0,
                "nonfinite_created": (flags & L.STEP_NONFINITE_CREATED) != 0,
                "nonfinite_state": (flags & L.STEP_NONFINITE_STATE) != 0,
                "dropped": Masked(rows["dropped"].astype(np.int64), everywhere),
            },
        )

    def _overrides(
        self, table: str, index: np.ndarray, steps: np.ndarray, limit: np.ndarray, what: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """A step's own ``op_attrs`` or ``tensor_offsets`` rows (format 1.1) and their steps."""
        if L.STEP_OVERRIDES not in self._rf._tables or not len(index):
            return np.zeros(0, dtype=L.TABLES[table][0]), np.zeros(0, dtype=np.int64)
        lo, hi = int(index.min()), int(index.max()) + 1
        over = self._rf._rows(L.STEP_OVERRIDES, lo, hi - lo, None, hi - lo)[index - lo]
        start, count = L.OVERRIDE_RANGES[table]
        got, owner = read_ranges(self._rf, table, over[start], over[count], steps)
        key = "op" if table == L.OP_ATTRS else "tensor"
        bad = _increasing(got[key], owner, limit)
        if len(bad):
            k = int(owner[bad[0]])
            raise TraceFormatError(
                f"{self._where(int(steps[k]))}: the step's own values name {what} "
                f"{int(got[key][bad[0]])} out of order or beyond the graph's {int(limit[k])}; "
                f"they must name increasing {what}s of the graph."
            )
        return got, owner

    def _ops(
        self,
        rows: np.ndarray,
        index: np.ndarray,
        steps: np.ndarray,
        n_ops: np.ndarray,
        cat: GraphColumns,
        at: np.ndarray,
        step_start: np.ndarray,
    ) -> ColumnTable:
        attrs = cat.op_attrs[at]
        own, owner = self._overrides(L.OP_ATTRS, index, steps, n_ops, "op")
        if len(own):
            sids = own["attrs"]
            codes = self._pool.sid_codes(sids, self._attrs_text)
            codes[sids == L.NO_STRING] = self._pool.code(encode_attrs({}))
            attrs[step_start[owner] + own["op"].astype(np.int64)] = codes
        pool = self._pool
        return ColumnTable(
            "ops",
            len(at),
            {
                "step": np.repeat(steps, n_ops),
                "op": positions(n_ops).astype(np.int32),
                "name": pool.labels(cat.op_name[at]),
                "phase": Labels(cat.op_phase[at].astype(np.int32), PHASES),
                "module": pool.labels(cat.op_module[at]),
                "attrs": pool.labels(attrs),
                "source": pool.labels(cat.op_source[at]),
                "inputs": take(cat, "op_inputs", at),
                "outputs": take(cat, "op_outputs", at),
            },
        )

    def _tensors(
        self,
        rows: np.ndarray,
        index: np.ndarray,
        steps: np.ndarray,
        n_tensors: np.ndarray,
        cat: GraphColumns,
        at: np.ndarray,
        step_start: np.ndarray,
    ) -> ColumnTable:
        offsets = cat.tensor_storage_offset[at]
        own, owner = self._overrides(L.TENSOR_OFFSETS, index, steps, n_tensors, "tensor")
        if len(own):
            offsets[step_start[owner] + own["tensor"].astype(np.int64)] = own["storage_offset"]
        producer = cat.tensor_producer[at]
        return ColumnTable(
            "tensors",
            len(at),
            {
                "step": np.repeat(steps, n_tensors),
                "tensor": positions(n_tensors).astype(np.int32),
                "name": self._pool.labels(cat.tensor_name[at]),
                "role": Labels(cat.tensor_role[at].astype(np.int32), ROLES),
                "dtype": Labels(cat.tensor_dtype[at].astype(np.int32), DTYPES),
                "shape": take(cat, "tensor_shape", at),
                "device": self._pool.labels(cat.tensor_device[at]),
                "producer": Masked(producer, producer >= 0),
                "producer_slot": cat.tensor_producer_slot[at],
                "version": cat.tensor_version[at],
                "storage_offset": offsets,
            },
        )

    def _stats(self, rows: np.ndarray, steps: np.ndarray) -> ColumnTable:
        got, owner = read_ranges(self._rf, L.STATS, rows["stats_start"], rows["stats_count"], steps)
        flags = got["flags"]
        moments = (flags & int(L.STAT_MOMENTS)) != 0
        counts = (flags & int(L.STAT_COUNTS)) != 0
        columns: dict[str, Column] = {
            "step": steps[owner],
            "tensor": positions(rows["stats_count"].astype(np.int64)).astype(np.int32),
        }
        for name in ("min", "max", "mean", "std", "norm"):
            columns[name] = Masked(got[name].astype(np.float64), moments)
        for name in ("nan", "inf", "zero"):
            columns[name] = Masked(got[name].astype(np.int64), counts)
        columns["fingerprint"] = Masked(got["fingerprint"], (flags & int(L.STAT_FINGERPRINT)) != 0)
        return ColumnTable("stats", len(got), columns)

    def _timings(self, rows: np.ndarray, steps: np.ndarray) -> ColumnTable:
        start, count = rows["op_stats_start"], rows["op_stats_count"]
        got, owner = read_ranges(self._rf, L.OP_STATS, start, count, steps)
        if L.OP_STARTS in self._rf._tables:  # format 1.3: read along op_stats
            starts = read_ranges(self._rf, L.OP_STARTS, start, count, steps)[0]["host_start_ns"]
        else:
            starts = np.full(len(got), -1, dtype=np.int64)
        return ColumnTable(
            "op_timings",
            len(got),
            {
                "step": steps[owner],
                "op": positions(count.astype(np.int64)).astype(np.int32),
                "host_ns": _nonneg(got["host_ns"]),
                "device_ns": _nonneg(got["device_ns"]),
                "mem_bytes": _nonneg(got["mem_bytes"]),
                "host_start_ns": _nonneg(starts),
            },
        )

    def _events(
        self, rows: np.ndarray, steps: np.ndarray, n_ops: np.ndarray, n_tensors: np.ndarray
    ) -> ColumnTable:
        got, owner = read_ranges(self._rf, L.EVENTS, rows["event_start"], rows["event_count"], steps)
        bad = np.flatnonzero((got["op"] >= n_ops[owner]) | (got["tensor"] >= n_tensors[owner]))
        if len(bad):
            raise TraceFormatError(
                f"{self._where(int(steps[owner[bad[0]]]))}: an event names an op or tensor out of range."
            )
        return event_table(got, steps[owner], rows["event_count"], 0, self._pool)

    def _scalars(self, rows: np.ndarray, steps: np.ndarray) -> ColumnTable:
        got, owner = read_ranges(self._rf, L.SCALARS, rows["scalar_start"], rows["scalar_count"], steps)
        return scalar_table(got, steps[owner], 0, self._pool)


def _texts(pool: LabelPool, sids: np.ndarray) -> np.ndarray:
    """Codes of string ids ``sids``, "" for none (the reader's text of an event or scalar)."""
    codes = pool.sid_codes(sids)
    codes[codes < 0] = pool.code("")
    return codes


def event_table(
    got: np.ndarray, steps: np.ndarray, counts: np.ndarray, kind: int, pool: LabelPool
) -> ColumnTable:
    """The ``events`` table of event rows ``got`` of steps ``steps`` (``counts`` per step),
    of step kind ``kind`` (0: full, 1: light)."""
    n = len(got)
    return ColumnTable(
        "events",
        n,
        {
            "step": steps,
            "step_kind": Labels(np.full(n, kind, dtype=np.int32), STEP_KINDS),
            "event": positions(counts.astype(np.int64)).astype(np.int32),
            "kind": pool.labels(_texts(pool, got["kind"])),
            "message": pool.labels(_texts(pool, got["message"])),
            "op": Masked(got["op"].astype(np.int32), got["op"] >= 0),
            "tensor": Masked(got["tensor"].astype(np.int32), got["tensor"] >= 0),
        },
    )


def scalar_table(got: np.ndarray, steps: np.ndarray, kind: int, pool: LabelPool) -> ColumnTable:
    """The ``scalars`` table of scalar rows ``got`` of steps ``steps``, of step kind ``kind``."""
    n = len(got)
    return ColumnTable(
        "scalars",
        n,
        {
            "step": steps,
            "step_kind": Labels(np.full(n, kind, dtype=np.int32), STEP_KINDS),
            "name": pool.labels(_texts(pool, got["name"])),
            "value": got["value"].astype(np.float64),
        },
    )
