"""One open rank file: :class:`RankFile` checks the header at open and turns rows into steps.

It reads the root attributes and opens the datasets through the primitives the validator uses too
(:mod:`tracefmt._primitives`), raising at the first problem; its rows come through a
:class:`~tracefmt._tableread.TableReader` (bounded, checked, read again when a live writer tore a
chunk).  It owns the interned strings, finding a step in the step index, the graphs (decoded once
by :mod:`tracefmt._graphdecode`), a step's rows (decoded by :mod:`tracefmt._decode`) and a light
step's (:mod:`tracefmt._lightread`).  A run's ranks are :mod:`tracefmt.reader`'s business.

The files of a run share an :class:`~tracefmt._openfiles.OpenFiles` budget: past it, the least
recently read file is closed (its header stays parsed, its caches are dropped) and opened again,
its datasets checked as they are first read, when it is next read.  A file opened again shows the
steps it showed before, until :meth:`RankFile.refresh`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import h5py
import numpy as np

from tracefmt import _layout as L
from tracefmt import _primitives as P
from tracefmt._decode import Step, StepRows, StepSummary, decode_step, decode_summaries
from tracefmt._graphdecode import GraphData, decode_graph, paused_gc
from tracefmt._h5open import H5_ERRORS, open_swmr
from tracefmt._lightread import decode_light_step, decode_light_summaries
from tracefmt._openfiles import OpenFiles
from tracefmt._primitives import require
from tracefmt._rngread import read_rng_states
from tracefmt._tableread import DatasetSize, TableReader, ranges_rows, search_index
from tracefmt.dtypes import DTYPE_INFO, fingerprint, heap_name, logical_view
from tracefmt.errors import TraceCorruptError, TraceError, TraceFormatError, TraceNotFoundError
from tracefmt.filters import ensure_readable
from tracefmt.light import LightStep, LightStepSummary
from tracefmt.model import TensorMeta
from tracefmt.rankinfo import parse_distributed

__all__ = ["DatasetSize", "OpenFiles", "RankFile"]


def _open_file(path: Path) -> h5py.File:
    where = str(path)
    try:
        return open_swmr(path)
    except FileNotFoundError as e:
        raise TraceNotFoundError(f"No trace file at {where!r}.") from e
    except H5_ERRORS as e:  # OSError mostly; RuntimeError for a damaged superblock
        raise TraceFormatError(f"{where!r} is not a readable HDF5 file: {e}") from e


def _damaged(where: str, e: BaseException) -> TraceError:
    return TraceCorruptError(
        f"{where}: HDF5 cannot read the file's structure ({e}); the file is damaged."
    )


class RankFile:
    """One rank file, used through :class:`~tracefmt.reader.Trace`; methods return plain data.

    With ``pool``, the file is one of a run's :class:`OpenFiles` and may be closed and opened
    again between reads; without, it stays open until :meth:`close`.
    """

    _reader: TableReader | None
    _graph_cache: dict[int, GraphData]
    _string_cache: dict[int, str]
    _strings_loaded: tuple[np.ndarray, np.ndarray] | None

    def __init__(self, path: Path, *, pool: OpenFiles | None = None) -> None:
        self.path = path
        self._pool = pool
        self._closed = False
        self._committed: int | None = None  # steps shown after opening again (None: all)
        self._light_committed: int | None = None  # light steps likewise (format 1.4)
        where = str(path)
        f = _open_file(path)
        self._file: h5py.File | None = f
        try:
            self._init(f, where)
        except BaseException as e:
            f.close()
            if isinstance(e, H5_ERRORS) and not isinstance(e, TraceError):
                raise _damaged(where, e) from e
            raise
        if pool is not None:
            pool.opened(self)

    @property
    def _tables(self) -> TableReader:
        """The file's tables, opening the file again if its run's budget closed it."""
        reader = self._reader
        if reader is None:
            reader = self._reopen()
        elif self._pool is not None:
            self._pool.touch(self)
        return reader

    def _reopen(self) -> TableReader:
        if self._closed:
            raise TraceError(f"{str(self.path)!r} was closed; open the trace again to read it.")
        f = _open_file(self.path)
        try:
            reader = TableReader(f, self.path, self._expected, self.values_filter, lazy=True)
        except BaseException as e:
            f.close()
            if isinstance(e, H5_ERRORS) and not isinstance(e, TraceError):
                raise _damaged(str(self.path), e) from e
            raise
        if self._committed is not None:
            reader.committed = min(reader.committed, self._committed)
        if self._light_committed is not None:
            reader.light_committed = min(reader.light_committed, self._light_committed)
        self._file, self._reader = f, reader
        if self._pool is not None:
            self._pool.opened(self)
        return reader

    def _suspend(self) -> None:
        """Close the HDF5 file and drop the caches; the next read opens it again."""
        if self._reader is not None:
            self._committed = self._reader.committed
            self._light_committed = self._reader.light_committed
        self._reader = None
        if self._file is not None:
            f, self._file = self._file, None
            f.close()
        self._graph_cache.clear()
        self._string_cache.clear()
        self._strings_loaded = None

    def _init(self, f: h5py.File, where: str) -> None:
        P.refuse(P.trace_mark(f), where)
        self.version = require(P.read_version(f), where)
        P.refuse(P.unsupported(self.version), where)
        self.provenance = require(P.read_provenance(f), where)
        #: Where the rank ran (provenance ``distributed``, format 1.2); None when not recorded.
        self.distributed = require(parse_distributed(self.provenance.extra), where)
        self.run_id = require(P.read_run_id(f), where)
        self.rank, self.world_size = require(P.read_rank(f), where)
        self.values_filter = require(P.read_values_filter(f), where)
        self.hist_bins = require(P.read_hist_bins(f), where)
        # Datasets a later minor version added are required from that version on; in an older
        # file they are absent, or ignored (1.0: no op_attrs, every op has its graph's attrs).
        self._expected = L.expected_datasets(self.hist_bins, self.version.minor)
        self._reader = TableReader(f, self.path, self._expected, self.values_filter)
        self._graph_cache, self._string_cache, self._strings_loaded = {}, {}, None

    def close(self) -> None:
        """Close the file for good (idempotent)."""
        self._suspend()
        self._closed = True
        if self._pool is not None:
            self._pool.closed(self)

    def refresh(self) -> None:
        """See steps a live writer committed since the file was opened (or last refreshed)."""
        self._strings_loaded = None
        self._committed = self._light_committed = None
        if self._reader is not None:
            self._reader.refresh()

    def length(self, name: str) -> int:
        """Rows of dataset ``name`` (as of opening or the last refresh)."""
        return self._tables.length(name)

    def _where(self, step: int | None) -> str:
        """The file, and the step when there is one: what an error names."""
        return f"{self.path}" + ("" if step is None else f", step {step}")

    def _rows(
        self, name: str, start: int, count: int, step: int | None = None, limit: int = L.MAX_STEP_ROWS
    ) -> np.ndarray:
        return self._tables.rows(name, start, count, step, limit)

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
        text = require(
            P.string_text(index, sid, len(data), lambda at, n: data[at : at + n].tobytes()),
            self._where(step),
        )
        self._string_cache[sid] = text
        return text

    def _text(self, sid: int, step: int | None = None) -> str:
        return self.string(sid, step) or ""

    # -- steps -----------------------------------------------------------------------------------
    def num_steps(self) -> int:
        """Steps committed when the file was opened or last refreshed."""
        if self._reader is None and self._committed is not None and not self._closed:
            return self._committed
        return self._tables.committed

    def step_rows(self) -> np.ndarray:
        """The whole step index (one row per committed step)."""
        return self._rows(L.STEPS, 0, self.num_steps(), limit=L.MAX_STEP_COUNT_SCAN)

    def _step_number(self, i: int, index: str = L.STEPS) -> int:
        return int(self._rows(index, i, 1)[0]["step"])

    def step_range(self) -> tuple[int, int] | None:
        """The first and the last committed step number (two reads), or None when there is none."""
        n = self.num_steps()
        return None if n == 0 else (self._step_number(0), self._step_number(n - 1))

    def find(self, step: int, *, light: bool = False) -> int:
        """Row index of ``step`` in the step index (``light``: in the light step index), found
        in O(log n) reads however irregular or hostile the index (:func:`search_index`)."""
        index, what = (L.LIGHT_STEPS, "light steps") if light else (L.STEPS, "steps")
        n = self.num_light_steps() if light else self.num_steps()
        if n == 0:
            raise TraceError(f"{self.path} has no committed {what} yet.")
        found = search_index(lambda i: self._step_number(i, index), n, step)
        if found is None:
            raise TraceError(
                f"{'Light step' if light else 'Step'} {step} is not in {self.path} (rank "
                f"{self.rank}); 'tracefmt ls' lists the recorded {what}."
            )
        return found

    def summaries(self) -> list[StepSummary]:
        """One summary per committed step, from the step index and graphs table alone."""
        return decode_summaries(
            self.step_rows(), self._rows(L.GRAPHS, 0, self.length(L.GRAPHS)), self.rank, self._where
        )

    # -- light steps (format 1.4) ----------------------------------------------------------------
    def num_light_steps(self) -> int:
        """Light steps committed when the file was opened or last refreshed (0 before 1.4)."""
        if self._reader is None and self._light_committed is not None and not self._closed:
            return self._light_committed
        return self._tables.light_committed

    def light_rows(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``[start, stop)`` of the light step index (default: all committed)."""
        n = self.num_light_steps()
        stop = n if stop is None else min(stop, n)
        if stop <= start:
            return np.zeros(0, dtype=L.LIGHT_STEP_DTYPE)
        return self._rows(L.LIGHT_STEPS, start, stop - start, limit=L.MAX_STEP_COUNT_SCAN)

    def light_summaries(self) -> list[LightStepSummary]:
        """One summary per committed light step, from the light step index alone."""
        return decode_light_summaries(self.light_rows(), self.rank)

    def load_lights(self, start: int, stop: int) -> list[LightStep]:
        """The light steps in rows ``[start, stop)`` of the light step index; each table's rows
        of them are read at once where they are few enough (:func:`ranges_rows`)."""
        rows = self.light_rows(start, stop)
        return [
            decode_light_step(
                r, tables, rank=self.rank, where=self._where(int(r["step"])), text=self.string
            )
            for r, tables in zip(rows, ranges_rows(rows, L.LIGHT_RANGES, self._rows), strict=True)
        ]

    def event_kinds(self, *, light: bool = False) -> list[tuple[str, ...]]:
        """The kinds of each committed step's events (``light``: each light step's), in the
        order of the step index; the events of many steps are read at once."""
        rows = self.light_rows() if light else self.step_rows()
        table, ranges = (L.LIGHT_EVENTS, L.LIGHT_RANGES) if light else (L.EVENTS, L.STEP_RANGES)
        read = ranges_rows(rows, {table: ranges[table]}, self._rows)
        kinds = [t[table]["kind"].tolist() for t in read]
        steps = rows["step"].tolist()
        return [tuple(self._text(k, s) for k in ks) for s, ks in zip(steps, kinds, strict=True)]

    def _graph(self, g: int, step: int) -> GraphData:
        """Graph row ``g``, decoded once and shared by the steps that use it.  Its ops and
        tensors carry the graph's base attributes and storage offsets (those of the first step
        written with it); :meth:`load` applies a step's own."""
        cached = self._graph_cache.get(g)
        if cached is not None:
            return cached
        row = self._rows(L.GRAPHS, g, 1, step)[0]
        parts = {
            table: self._rows(table, int(row[start]), int(row[count]), step, limit)
            for table, (start, count, limit) in L.GRAPH_RANGES.items()
        }
        tables = (parts[L.OPS], parts[L.EDGES], parts[L.TENSORS], parts[L.DIMS])
        data = decode_graph(g, *tables, self._where(step), functools.partial(self.string, step=step))
        if len(self._graph_cache) > 64:
            self._graph_cache.clear()
        self._graph_cache[g] = data
        return data

    @staticmethod
    def _empty(table: str) -> np.ndarray:
        """No rows of ``table``: what a step has of a table its file's version predates."""
        return np.zeros(0, dtype=L.TABLES[table][0])

    def _overrides(self, index: int, step: int, n_ops: int, n_tensors: int) -> dict[str, np.ndarray]:
        """The ``op_attrs`` and ``tensor_offsets`` rows of the step in row ``index`` of the step
        index (none before format 1.1)."""
        if L.STEP_OVERRIDES not in self._tables:
            return {table: self._empty(table) for table in L.OVERRIDE_RANGES}
        r = self._rows(L.STEP_OVERRIDES, index, 1, step)[0]
        limits = {L.OP_ATTRS: n_ops, L.TENSOR_OFFSETS: n_tensors}
        return {
            table: self._rows(table, int(r[start]), int(r[count]), step, limits[table])
            for table, (start, count) in L.OVERRIDE_RANGES.items()
        }

    def load(self, index: int) -> Step:
        """Load the step in row ``index`` of the step index.

        Its ops and tensors carry the step's attributes and storage offsets: the graph's,
        replaced by the step's rows of ``op_attrs`` and ``tensor_offsets`` (format 1.1), and its
        ops their start times from ``op_starts`` (format 1.3); its RNG states (1.6).
        """
        with paused_gc():
            return self._load(index)

    def _load(self, index: int) -> Step:
        r = self._rows(L.STEPS, index, 1)[0]
        step = int(r["step"])
        graph = self._graph(int(r["graph"]), step)
        n_ops, n_tensors = len(graph.ops), len(graph.metas)
        stats_count, op_count = int(r["stats_count"]), int(r["op_stats_count"])
        if stats_count not in (0, n_tensors) or op_count not in (0, n_ops):
            raise TraceFormatError(
                f"{self._where(step)}: {stats_count} stats rows and {op_count} "
                f"op rows for a graph of {n_tensors} tensors and {n_ops} ops."
            )
        tables = {
            table: self._rows(table, int(r[start]), int(r[count]), step)
            for table, (start, count) in L.STEP_RANGES.items()
        }
        tables.update(self._overrides(index, step, n_ops, n_tensors))
        for table, of in L.PARALLEL_TABLES.items():  # format 1.3: op_starts, read along op_stats
            start, count = (int(r[field]) for field in L.STEP_RANGES[of])
            read = count and table in self._tables  # an empty range's start means nothing
            tables[table] = self._rows(table, start, count, step) if read else self._empty(table)
        return decode_step(
            StepRows(r, tables),
            graph,
            rank=self.rank,
            hist_bins=self.hist_bins,
            where=self._where(step),
            text=functools.partial(self._text, step=step),
            load_values=functools.partial(self._values, step),
            rng_states=read_rng_states(self, index, step),  # format 1.6
        )

    def _values(
        self, step: int, tensor: int, meta: TensorMeta, offset: int, count: int, fp: int
    ) -> np.ndarray:
        info = DTYPE_INFO[meta.dtype]
        heap = f"{L.DATA_GROUP}/{heap_name(meta.dtype)}"
        numel = meta.numel  # Python ints: no overflow
        label = f"tensor {tensor} ({meta.name or 'unnamed'})"
        if numel * info.itemsize > L.MAX_VALUE_BYTES:
            raise TraceFormatError(
                f"{self._where(step)}: {label} declares shape {meta.shape}, "
                f"{numel * info.itemsize} bytes; the reader's limit is "
                f"{L.MAX_VALUE_BYTES}."
            )
        if count != numel * info.per_element:
            raise TraceFormatError(
                f"{self._where(step)}: {label} has {count} stored items; its "
                f"shape {meta.shape} of {meta.dtype.label} needs "
                f"{numel * info.per_element}."
            )
        ensure_readable(self.values_filter)
        storage = self._rows(heap, offset, count, step, limit=L.MAX_VALUE_BYTES)
        if fingerprint(storage) != fp:
            raise TraceCorruptError(
                f"{self._where(step)}: the values of {label} (/{heap}, items "
                f"{offset}..{offset + count}) do not match their fingerprint; "
                "the file is damaged."
            )
        try:
            return logical_view(storage, meta.dtype, meta.shape)
        except ValueError as e:  # e.g. (0, 2**40, 2**40): empty, but too big a shape for numpy
            raise TraceFormatError(
                f"{self._where(step)}: {label} has shape {meta.shape}, which "
                f"no numpy array can take ({e})."
            ) from e

    def dataset_sizes(self) -> list[DatasetSize]:
        """Rows, logical bytes and bytes on disk of every dataset in the file."""
        return self._tables.sizes()
