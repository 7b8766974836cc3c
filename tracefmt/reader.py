"""Reading traces: :func:`open` a rank file or a run directory, get :class:`Step` objects.

Every file is treated as hostile: each row is range-checked against the tables it points into,
every size is checked before anything is allocated, and any HDF5 failure becomes a
:class:`~tracefmt.errors.TraceError` naming the dataset and step.  Loading a step reads that step's
rows (and its graph, once), never the whole file.

Example::

    with tracefmt.open("runs/exp1") as trace:
        step = trace.step(41207)
        for op in step.ops:
            print(op.index, op.phase.label, op.module, op.name)
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np
from h5py import h5s, h5t

from tracefmt import _layout as L
from tracefmt._h5open import (
    H5_ERRORS,
    REREAD_PAUSES,
    int_root_attr,
    open_swmr,
    root_attr,
    swmr_writer_flag,
)
from tracefmt.dtypes import DTYPE_INFO, DType, fingerprint, heap_name, logical_view
from tracefmt.errors import (
    TraceCorruptError,
    TraceError,
    TraceFormatError,
    TraceNotFoundError,
    UnsupportedVersionError,
)
from tracefmt.filters import FILTERS, ensure_readable
from tracefmt.model import (
    Event,
    Histogram,
    OpNode,
    Phase,
    Provenance,
    Role,
    TensorMeta,
    TensorRecord,
    TensorStats,
)
from tracefmt.records import decode_attrs


@dataclass(frozen=True)
class StepSummary:
    """One row of ``tracefmt ls``: what a step holds, read from the step index alone."""

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
    """One recorded step of one rank, with its graph, statistics and (lazily) values."""

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
class _GraphData:
    ops: tuple[tuple[Any, ...], ...]
    metas: tuple[TensorMeta, ...]


@dataclass(frozen=True)
class DatasetSize:
    """Rows, logical bytes and bytes on disk of one dataset (for ``tracefmt info``)."""

    path: str
    rows: int
    raw_bytes: int
    stored_bytes: int


def parse_version(text: object, where: str) -> tuple[int, int]:
    """Parse ``"major.minor"``; refuse an unknown major version."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    parts = str(text).split(".")
    if len(parts) != 2 or not all(p.isdigit() and len(p) < 6 for p in parts):
        raise TraceFormatError(f"{where}: format_version {text!r} is not 'major.minor'.")
    major, minor = int(parts[0]), int(parts[1])
    if major != L.FORMAT_MAJOR:
        raise UnsupportedVersionError(
            f"{where} has format version {major}.{minor}; this tracefmt reads major version "
            f"{L.FORMAT_MAJOR} only. Install a tracefmt release that supports version {major}.")
    return major, minor


class RankFile:
    """One open rank file.  Use through :class:`Trace`; public methods return plain data."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtypes: dict[str, Any] = {}  # HDF5 memory type per dataset, for _read
        where = str(path)
        try:
            self._file = open_swmr(path)
        except FileNotFoundError as e:
            raise TraceNotFoundError(f"No trace file at {where!r}.") from e
        except H5_ERRORS as e:  # OSError mostly; RuntimeError for a damaged superblock
            raise TraceFormatError(f"{where!r} is not a readable HDF5 file: {e}") from e
        try:
            self._init(where)
        except BaseException as e:
            self._file.close()
            if isinstance(e, H5_ERRORS) and not isinstance(e, TraceError):
                raise TraceCorruptError(f"{where}: HDF5 cannot read the file's structure ({e}); "
                                        "the file is damaged.") from e
            raise

    def _init(self, where: str) -> None:
        f = self._file
        magic = root_attr(f, L.ATTR_MAGIC, where, missing=None)
        if not isinstance(magic, str) or magic != L.FORMAT_MAGIC:
            raise TraceFormatError(f"{where!r} is an HDF5 file but not a tracefmt trace (root "
                                   f"attribute {L.ATTR_MAGIC!r} is {magic!r}).")
        self.version = parse_version(root_attr(f, L.ATTR_VERSION, where), where)
        try:
            self.provenance = Provenance.from_json(str(root_attr(f, L.ATTR_PROVENANCE, where)))
        except ValueError as e:
            raise TraceFormatError(f"{where}: the provenance attribute is malformed: {e}") from e
        self.run_id = str(root_attr(f, L.ATTR_RUN_ID, where))
        self.rank = int_root_attr(f, L.ATTR_RANK, where)
        self.world_size = int_root_attr(f, L.ATTR_WORLD_SIZE, where)
        if not 0 <= self.rank < self.world_size:
            raise TraceFormatError(f"{where}: rank {self.rank} is outside world_size "
                                   f"{self.world_size}.")
        self.values_filter = str(root_attr(f, L.ATTR_VALUES_FILTER, where))
        if self.values_filter not in FILTERS:
            raise TraceFormatError(f"{where}: unknown values filter {self.values_filter!r}.")
        self.hist_bins = int_root_attr(f, L.ATTR_HIST_BINS, where)
        if not 0 <= self.hist_bins <= L.MAX_HIST_BINS:
            raise TraceFormatError(f"{where}: hist_bins {self.hist_bins} is out of range.")
        # The step index first: a writer flushes a step's rows before its steps row, so every step
        # counted here has its rows in the datasets opened after it (see refresh()).
        expected = {L.STEPS: L.STEP_DTYPE,
                    **{k: v[0] for k, v in L.TABLES.items()},
                    **{k: v[0] for k, v in L.HEAPS.items()},
                    L.HISTS: L.hist_dtype(max(self.hist_bins, 1))}
        expected.update({h: np.dtype(h.rsplit("/", 1)[1]) for h in L.VALUE_HEAPS})
        self._ds: dict[str, h5py.Dataset] = {}
        for name, dtype in expected.items():
            ds = None
            try:
                if name in f:  # not f.get(), which would call a damaged header "missing"
                    ds = f[name]
            except H5_ERRORS as e:  # the link is there, the object header is damaged
                raise TraceCorruptError(f"{where}: dataset /{name} cannot be opened ({e}); the "
                                        "file is damaged.") from e
            if not isinstance(ds, h5py.Dataset):
                raise TraceFormatError(f"{where}: dataset /{name} is missing.")
            if ds.ndim != 1 or ds.dtype != dtype:
                raise TraceFormatError(f"{where}: dataset /{name} has dtype {ds.dtype} and "
                                       f"{ds.ndim} dimensions; the format wants 1-D {dtype}.")
            self._ds[name] = ds
            if name == L.STEPS:
                self._committed = int(ds.shape[0])
        self._reset_budgets()
        self._graph_cache: dict[int, _GraphData] = {}
        self._string_cache: dict[int, str] = {}
        self._strings_loaded: tuple[np.ndarray, np.ndarray] | None = None

    def close(self) -> None:
        self._file.close()

    def _reset_budgets(self) -> None:
        """Forget the read budgets; :meth:`_budget` recomputes them when a read needs one."""
        self._budgets: dict[str, int | None] = {}

    def _budget(self, name: str) -> int | None:
        """Bytes of ``name`` the stored chunks can back (``None``: no bound for a compressor).

        An extent is only metadata: a hostile file can declare 10**12 rows with nothing stored,
        and reading them would allocate it all.  Deflated tables expand at most ~1032x and
        unfiltered value heaps store every chunk they cover.  Checked per read, not at open, so
        rows past what committed steps reference (a writer that hit a full disk) do not make the
        whole file unreadable.
        """
        if name in self._budgets:
            return self._budgets[name]
        ds = self._ds[name]
        budget: int | None = None
        if not (name in L.VALUE_HEAPS and self.values_filter not in ("none", "fletcher32")):
            try:
                stored = int(ds.id.get_storage_size())
            except H5_ERRORS as e:
                raise TraceCorruptError(f"{self.path}: the storage of /{name} cannot be read "
                                        f"({e}); the file is damaged.") from e
            chunk = (ds.chunks or (1,))[0] * ds.dtype.itemsize
            budget = stored + chunk if name in L.VALUE_HEAPS else 1100 * stored + chunk
        self._budgets[name] = budget
        return budget

    def refresh(self) -> None:
        """See rows a live writer committed since the file was opened (or last refreshed).

        The step index is refreshed first and its length kept as the committed count: refreshed
        after the tables, it could show a step whose rows those tables do not show yet.
        """
        try:
            steps = self._ds[L.STEPS]
            steps.refresh()
            self._committed = int(steps.shape[0])
            for name, ds in self._ds.items():
                if name != L.STEPS:
                    ds.refresh()
            self._reset_budgets()
        except H5_ERRORS as e:
            if isinstance(e, TraceError):
                raise
            raise TraceCorruptError(f"{self.path}: refreshing failed ({e}); the file is "
                                    "damaged.") from e
        self._strings_loaded = None

    # -- checked reads ---------------------------------------------------------------------------
    def length(self, name: str) -> int:
        return int(self._ds[name].shape[0])

    def _where(self, step: int | None) -> str:
        return f"{self.path}" + ("" if step is None else f", step {step}")

    def _rows(self, name: str, start: int, count: int, step: int | None = None,
              limit: int = L.MAX_STEP_ROWS) -> np.ndarray:
        """Rows ``[start, start+count)`` of ``name``, after checking they exist."""
        n = self.length(name)
        if count < 0 or count > limit or start < 0 or start + count > n:
            raise TraceFormatError(f"{self._where(step)}: rows {start}..{start + count} of /{name} "
                                   f"are out of range (it has {n} rows).")
        if count == 0:
            return np.zeros(0, dtype=self._ds[name].dtype)
        budget = self._budget(name)
        if budget is not None and (start + count) * self._ds[name].dtype.itemsize > budget:
            raise TraceFormatError(f"{self._where(step)}: rows {start}..{start + count} of /{name} "
                                   f"lie beyond the {budget} bytes the file stores; the file is "
                                   "damaged or truncated.")
        pauses = REREAD_PAUSES if swmr_writer_flag(self.path) else ()
        for pause in (*pauses, None):
            try:
                return self._read(name, start, count)
            except H5_ERRORS as e:
                if pause is None:
                    raise TraceCorruptError(f"{self._where(step)}: reading rows {start}.."
                                            f"{start + count} of /{name} failed ({e}); the file "
                                            "is damaged.") from e
                time.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover

    def _read(self, name: str, start: int, count: int) -> np.ndarray:
        """Rows ``[start, start+count)`` through h5py's low-level API, with the memory type built
        once per dataset: ``Dataset[a:b]`` rebuilds the HDF5 type of a compound dtype on every call
        (about 130 us, most of the cost of reading one row)."""
        ds = self._ds[name]
        mtype = self._mtypes.get(name)
        if mtype is None:
            mtype = self._mtypes[name] = h5t.py_create(ds.dtype)
        out = np.empty(count, dtype=ds.dtype)
        fspace = ds.id.get_space()
        fspace.select_hyperslab((start,), (count,))
        ds.id.read(h5s.create_simple((count,)), fspace, out, mtype=mtype)
        return out

    def string(self, sid: int, step: int | None = None) -> str | None:
        """Interned string ``sid`` (``None`` for -1)."""
        if sid == L.NO_STRING:
            return None
        cached = self._string_cache.get(sid)
        if cached is not None:
            return cached
        if self._strings_loaded is None:
            nbytes = self.length(L.STRINGS_BYTES)
            index = self._rows(L.STRINGS_INDEX, 0, self.length(L.STRINGS_INDEX))
            data = self._rows(L.STRINGS_BYTES, 0, nbytes, limit=1 << 31)
            self._strings_loaded = (index, data)
        index, data = self._strings_loaded
        if not 0 <= sid < len(index):
            raise TraceFormatError(f"{self._where(step)}: string id {sid} is out of range "
                                   f"(/{L.STRINGS_INDEX} has {len(index)} rows).")
        offset, length = int(index[sid]["offset"]), int(index[sid]["length"])
        if length > L.MAX_STRING_BYTES or offset + length > len(data):
            raise TraceFormatError(f"{self._where(step)}: string {sid} points outside "
                                   f"/{L.STRINGS_BYTES}.")
        try:
            text = data[offset:offset + length].tobytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise TraceFormatError(f"{self._where(step)}: string {sid} is not UTF-8.") from e
        self._string_cache[sid] = text
        return text

    def _text(self, sid: int, step: int | None = None) -> str:
        return self.string(sid, step) or ""

    # -- steps -----------------------------------------------------------------------------------
    def num_steps(self) -> int:
        """Steps committed when the file was opened or last refreshed."""
        return self._committed

    def step_rows(self) -> np.ndarray:
        """The whole step index (one row per committed step)."""
        return self._rows(L.STEPS, 0, self.num_steps(), limit=L.MAX_STEP_COUNT_SCAN)

    def _step_number(self, i: int) -> int:
        return int(self._rows(L.STEPS, i, 1)[0]["step"])

    def find(self, step: int) -> int:
        """Row index of ``step`` in the step index.

        Interpolation search (one or two reads for a regular schedule) alternating with bisection,
        so an irregular or hostile index still costs O(log n) reads.  Terminates on unsorted rows.
        """
        lo, hi = 0, self.num_steps() - 1
        if hi < 0:
            raise TraceError(f"{self.path} has no committed steps yet.")
        s_lo, s_hi = self._step_number(lo), self._step_number(hi)
        bisect = False
        while lo <= hi and s_lo <= step <= s_hi:
            if step == s_lo:
                return lo
            if step == s_hi:
                return hi
            if hi - lo < 2:
                break
            if bisect or s_hi == s_lo:
                guess = (lo + hi) // 2
            else:
                guess = lo + (step - s_lo) * (hi - lo) // (s_hi - s_lo)
            guess = min(max(guess, lo + 1), hi - 1)
            bisect = not bisect
            s = self._step_number(guess)
            if s == step:
                return guess
            if s < step:
                lo, s_lo = guess, s
            else:
                hi, s_hi = guess, s
        raise TraceError(f"Step {step} is not in {self.path} (rank {self.rank}); "
                         "'tracefmt ls' lists the recorded steps.")

    def summaries(self) -> list[StepSummary]:
        rows = self.step_rows()
        graphs = self._rows(L.GRAPHS, 0, self.length(L.GRAPHS))
        # Column-wise: per-row numpy scalar access costs ~10 us a step (1 s at 100,000 steps).
        g = rows["graph"]
        bad = np.flatnonzero(g >= len(graphs))
        if bad.size:
            i = int(bad[0])
            raise TraceFormatError(f"{self._where(int(rows['step'][i]))}: graph {int(g[i])} is "
                                   "out of range.")
        flags = rows["flags"]
        columns = zip(rows["step"].tolist(), g.tolist(), graphs["op_count"][g].tolist(),
                      graphs["tensor_count"][g].tolist(), rows["data_count"].tolist(),
                      rows["event_count"].tolist(), ((flags & L.STEP_HAS_NAN) != 0).tolist(),
                      ((flags & L.STEP_HAS_INF) != 0).tolist(), rows["dropped"].tolist(),
                      rows["wall_time"].tolist(), rows["duration"].tolist(), strict=True)
        rank = self.rank
        return [StepSummary(step=s, rank=rank, graph=gi, num_ops=n_ops, num_tensors=n_tensors,
                            num_values=n_values, num_events=n_events, has_nan=nan, has_inf=inf,
                            dropped=dropped, wall_time=wall, duration=dur)
                for s, gi, n_ops, n_tensors, n_values, n_events, nan, inf, dropped, wall, dur
                in columns]

    def _graph(self, g: int, step: int) -> _GraphData:
        cached = self._graph_cache.get(g)
        if cached is not None:
            return cached
        row = self._rows(L.GRAPHS, g, 1, step)[0]
        n_ops, n_edges = int(row["op_count"]), int(row["edge_count"])
        n_tensors, n_dims = int(row["tensor_count"]), int(row["dim_count"])
        ops = self._rows(L.OPS, int(row["op_start"]), n_ops, step, L.MAX_GRAPH_OPS)
        edges = self._rows(L.EDGES, int(row["edge_start"]), n_edges, step, L.MAX_STEP_ROWS)
        tensors = self._rows(L.TENSORS, int(row["tensor_start"]), n_tensors, step, L.MAX_STEP_ROWS)
        # A list: slicing it per tensor is ~10x cheaper than slicing an array into numpy scalars.
        dims = self._rows(L.DIMS, int(row["dim_start"]), n_dims, step, L.MAX_STEP_ROWS).tolist()
        where = self._where(step)
        text = functools.partial(self._text, step=step)
        try:
            metas = tuple(self._meta(t, dims, n_ops, where, text) for t in tensors.tolist())
            parsed = []
            edge_list = edges.tolist()
            for i, (name, phase, module, attrs, source, i0, ni, o0, no) in enumerate(ops.tolist()):
                if i0 + ni > n_edges or o0 + no > n_edges:
                    raise TraceFormatError(f"{where}: op {i} has edges outside its graph.")
                ins = edge_list[i0:i0 + ni]
                outs = edge_list[o0:o0 + no]
                for t, _, _ in ins + outs:
                    if t >= n_tensors:
                        raise TraceFormatError(f"{where}: op {i} names tensor {t}, but the graph "
                                               f"has {n_tensors}.")
                attr_text = self.string(attrs, step)
                parsed.append((i, text(name), Phase(phase), text(module),
                               tuple(e[0] for e in ins), tuple(e[0] for e in outs),
                               tuple((e[1], e[2]) for e in ins),
                               {} if attr_text is None else decode_attrs(attr_text),
                               self.string(source, step)))
        except ValueError as e:  # bad enum code, bad JSON
            if isinstance(e, TraceError):
                raise
            raise TraceFormatError(f"{where}: graph {g} is malformed: {e}") from e
        data = _GraphData(tuple(parsed), metas)
        if len(self._graph_cache) > 64:
            self._graph_cache.clear()
        self._graph_cache[g] = data
        return data

    @staticmethod
    def _meta(t: tuple[Any, ...], dims: list[int], n_ops: int, where: str,
              text: Any) -> TensorMeta:
        dtype, role, ndim, d0, device, name, producer, slot, version, offset = t
        if ndim > L.MAX_NDIM or d0 + 2 * ndim > len(dims):
            raise TraceFormatError(f"{where}: a tensor's dimensions lie outside /{L.DIMS}.")
        shape = tuple(dims[d0:d0 + ndim])
        strides = tuple(dims[d0 + ndim:d0 + 2 * ndim])
        if any(d < 0 for d in shape):
            raise TraceFormatError(f"{where}: a tensor has a negative dimension {shape}.")
        if not -1 <= producer < n_ops:
            raise TraceFormatError(f"{where}: a tensor names producer op {producer}, but the "
                                   f"graph has {n_ops} ops.")
        return TensorMeta(dtype=DType(dtype), shape=shape,
                          strides=None if ndim and all(s == -1 for s in strides) else strides,
                          device=text(device), role=Role(role), name=text(name) or None,
                          producer=None if producer < 0 else producer, producer_slot=slot,
                          version=version, storage_offset=offset)

    def load(self, index: int) -> Step:
        """Load the step in row ``index`` of the step index."""
        r = self._rows(L.STEPS, index, 1)[0]
        step = int(r["step"])
        g = int(r["graph"])
        graph = self._graph(g, step)
        n_ops, n_tensors = len(graph.ops), len(graph.metas)
        stats_count, op_count = int(r["stats_count"]), int(r["op_stats_count"])
        if stats_count not in (0, n_tensors) or op_count not in (0, n_ops):
            raise TraceFormatError(f"{self._where(step)}: {stats_count} stats rows and {op_count} "
                                   f"op rows for a graph of {n_tensors} tensors and {n_ops} ops.")
        stats = self._rows(L.STATS, int(r["stats_start"]), stats_count, step)
        op_stats = self._rows(L.OP_STATS, int(r["op_stats_start"]), op_count, step)
        data = self._rows(L.DATA_INDEX, int(r["data_start"]), int(r["data_count"]), step)
        hists = self._rows(L.HISTS, int(r["hist_start"]), int(r["hist_count"]), step)
        events = self._rows(L.EVENTS, int(r["event_start"]), int(r["event_count"]), step)
        scalars = self._rows(L.SCALARS, int(r["scalar_start"]), int(r["scalar_count"]), step)
        where = self._where(step)
        values: dict[int, tuple[int, int, int]] = {}
        for t, offset, count, fp in data.tolist():
            if t >= n_tensors:
                raise TraceFormatError(f"{where}: values recorded for tensor {t}, but the graph "
                                       f"has {n_tensors}.")
            values[t] = (offset, count, fp)
        histograms: dict[int, Histogram] = {}
        for h in hists:
            t = int(h["tensor"])
            if t >= n_tensors:
                raise TraceFormatError(f"{where}: histogram for tensor {t} is out of range.")
            histograms[t] = Histogram(float(h["lo"]), float(h["hi"]),
                                      tuple(int(c) for c in h["counts"][:self.hist_bins]))
        stat_list = stats.tolist()
        tensors = tuple(
            TensorRecord(index=i, meta=meta, stats=_stats(stat_list[i]) if stats_count else None,
                         histogram=histograms.get(i), has_values=i in values,
                         _load=None if i not in values else
                         functools.partial(self._values, step, i, meta, *values[i]))
            for i, meta in enumerate(graph.metas))
        timing = op_stats.tolist()
        ops = tuple(
            OpNode(index=i, name=name, phase=phase, module=module, inputs=ins, outputs=outs,
                   input_args=args, attrs=attrs, source=source,
                   host_ns=_opt(timing[i][0]) if op_count else None,
                   device_ns=_opt(timing[i][1]) if op_count else None,
                   mem_bytes=_opt(timing[i][2]) if op_count else None)
            for i, name, phase, module, ins, outs, args, attrs, source in graph.ops)
        event_list = []
        for kind, op, tensor, message in events.tolist():
            if op >= n_ops or tensor >= n_tensors:
                raise TraceFormatError(f"{where}: an event names an op or tensor out of range.")
            event_list.append(Event(self._text(kind, step), self._text(message, step),
                                    None if op < 0 else op, None if tensor < 0 else tensor))
        return Step(step=step, rank=self.rank, graph=g, ops=ops, tensors=tensors,
                    events=tuple(event_list),
                    scalars={self._text(n, step): float(v) for n, v in scalars.tolist()},
                    wall_time=float(r["wall_time"]), duration=float(r["duration"]),
                    dropped=int(r["dropped"]), has_nan=bool(r["flags"] & L.STEP_HAS_NAN),
                    has_inf=bool(r["flags"] & L.STEP_HAS_INF))

    def _values(self, step: int, tensor: int, meta: TensorMeta, offset: int, count: int,
                fp: int) -> np.ndarray:
        info = DTYPE_INFO[meta.dtype]
        heap = f"{L.DATA_GROUP}/{heap_name(meta.dtype)}"
        numel = meta.numel  # Python ints: no overflow
        label = f"tensor {tensor} ({meta.name or 'unnamed'})"
        if numel * info.itemsize > L.MAX_VALUE_BYTES:
            raise TraceFormatError(f"{self._where(step)}: {label} declares shape {meta.shape}, "
                                   f"{numel * info.itemsize} bytes; the reader's limit is "
                                   f"{L.MAX_VALUE_BYTES}.")
        if count != numel * info.per_element:
            raise TraceFormatError(f"{self._where(step)}: {label} has {count} stored items; its "
                                   f"shape {meta.shape} of {meta.dtype.label} needs "
                                   f"{numel * info.per_element}.")
        ensure_readable(self.values_filter)
        storage = self._rows(heap, offset, count, step, limit=L.MAX_VALUE_BYTES)
        if fingerprint(storage) != fp:
            raise TraceCorruptError(f"{self._where(step)}: the values of {label} (/{heap}, items "
                                    f"{offset}..{offset + count}) do not match their fingerprint; "
                                    "the file is damaged.")
        try:
            return logical_view(storage, meta.dtype, meta.shape)
        except ValueError as e:  # e.g. (0, 2**40, 2**40): empty, but too big a shape for numpy
            raise TraceFormatError(f"{self._where(step)}: {label} has shape {meta.shape}, which "
                                   f"no numpy array can take ({e}).") from e

    def dataset_sizes(self) -> list[DatasetSize]:
        """Rows, logical bytes and bytes on disk of every dataset in the file."""
        out = []
        for name, ds in self._ds.items():
            rows = int(ds.shape[0])
            try:
                stored = int(ds.id.get_storage_size())
            except H5_ERRORS as e:
                raise TraceCorruptError(f"{self.path}: the size of /{name} cannot be read ({e}); "
                                        "the file is damaged.") from e
            out.append(DatasetSize(name, rows, rows * ds.dtype.itemsize, stored))
        return out


def _opt(x: int) -> int | None:
    return None if x < 0 else int(x)


def _stats(row: tuple[Any, ...]) -> TensorStats:
    flags, mn, mx, mean, std, norm, nan, inf, zero, fp = row
    moments, counts = flags & L.STAT_MOMENTS, flags & L.STAT_COUNTS
    return TensorStats(
        min=mn if moments else None, max=mx if moments else None, mean=mean if moments else None,
        std=std if moments else None, norm=norm if moments else None,
        nan=nan if counts else None, inf=inf if counts else None, zero=zero if counts else None,
        fingerprint=fp if flags & L.STAT_FINGERPRINT else None)


class Trace:
    """A run: one or more rank files.  Close it (or use ``with``) to release the files."""

    def __init__(self, files: dict[int, RankFile], path: Path) -> None:
        self._files = files
        self.path = path
        first = files[min(files)]
        self.run_id = first.run_id
        self.world_size = first.world_size
        self.provenance: Provenance = first.provenance

    def __enter__(self) -> Trace:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for f in self._files.values():
            f.close()

    @property
    def ranks(self) -> tuple[int, ...]:
        """Ranks with a file in this trace, ascending."""
        return tuple(sorted(self._files))

    def rank_file(self, rank: int | None = None) -> RankFile:
        """The file of ``rank`` (default: the lowest rank present)."""
        if rank is None:
            rank = min(self._files)
        try:
            return self._files[rank]
        except KeyError:
            raise TraceError(f"Rank {rank} is not in {self.path}; it has ranks "
                             f"{', '.join(map(str, self.ranks))}.") from None

    def steps(self, rank: int | None = None) -> list[int]:
        """Step numbers committed by ``rank``."""
        return [int(s) for s in self.rank_file(rank).step_rows()["step"]]

    def summaries(self, rank: int | None = None) -> list[StepSummary]:
        return self.rank_file(rank).summaries()

    def step(self, step: int, rank: int | None = None) -> Step:
        """Load one step (its ops, tensors and statistics; values stay on disk until asked)."""
        f = self.rank_file(rank)
        return f.load(f.find(step))

    def iter_steps(self, rank: int | None = None) -> Iterator[Step]:
        f = self.rank_file(rank)
        for i in range(f.num_steps()):
            yield f.load(i)

    def refresh(self) -> None:
        """Pick up steps a live writer committed since opening."""
        for f in self._files.values():
            f.refresh()


def open(path: str | os.PathLike[str]) -> Trace:
    """Open a rank file or a run directory (which holds ``rank-NNNNN.tft.h5`` files)."""
    p = Path(path)
    if p.is_dir():
        candidates = sorted(p.glob(L.RANK_FILE_GLOB))
        if not candidates:
            raise TraceNotFoundError(f"{str(p)!r} is a directory with no rank files "
                                     f"({L.RANK_FILE_GLOB}); is it a tracefmt run directory?")
    elif p.exists():
        candidates = [p]
    else:
        raise TraceNotFoundError(f"No trace file or run directory at {str(p)!r}.")
    files: dict[int, RankFile] = {}
    try:
        for c in candidates:
            rf = RankFile(c)
            if rf.rank in files:
                rf.close()
                raise TraceFormatError(f"{str(c)!r} and {str(files[rf.rank].path)!r} both claim "
                                       f"rank {rf.rank}.")
            if files and (rf.run_id, rf.world_size) != (next(iter(files.values())).run_id,
                                                        next(iter(files.values())).world_size):
                rf.close()
                raise TraceFormatError(f"{str(c)!r} belongs to another run (run_id or world_size "
                                       "differ from the other rank files in the directory).")
            files[rf.rank] = rf
    except BaseException:
        for rf in files.values():
            rf.close()
        raise
    return Trace(files, p)


