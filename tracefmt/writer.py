"""Append-only, crash-safe writer of one rank's trace file.

Layout and filters come from :mod:`tracefmt._layout` and :mod:`tracefmt.filters`.  The file is
created with the HDF5 1.10 object formats (``libver=("v110", "latest")``: the oldest that support
SWMR) and switched to SWMR mode, so a reader can follow it live and a SIGKILL loses at most what was
not flushed.  A bare ``libver="latest"`` would let HDF5 2.0 write datatype messages that HDF5 1.x
tools (h5dump 1.10, 1.14) cannot decode.  Commit protocol (spec: "Commit protocol"): a step's
rows go to every table first; :meth:`TraceWriter.flush` flushes them, *then* appends the step's row
to ``steps`` and flushes again.  A step exists for readers only once its ``steps`` row does.

Graphs are deduplicated by structure, each step storing its own op attributes and storage
offsets apart (:class:`~tracefmt._graphstore.GraphStore`); light steps (format 1.4) go through
:mod:`tracefmt._lightstore`; every row goes through an :class:`~tracefmt._appender.Appender`.

Example::

    with TraceWriter("runs/exp1/rank-00000.tft.h5") as w:
        w.write_step(record)   # a tracefmt.records.StepRecord
        w.flush()              # returns when the step is on disk
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import socket
import sys
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from tracefmt import _layout as L
from tracefmt._appender import Appender
from tracefmt._graphstore import GraphStore
from tracefmt._h5create import fixed_utf8, fsync_dir
from tracefmt._lightstore import append_light_step
from tracefmt._modulestore import ModuleStore
from tracefmt._rngstore import RngStore
from tracefmt._rows import (
    DataRow,
    HistRow,
    LightStepRow,
    StepOverrideRow,
    StepRow,
    event_rows,
    scalar_rows,
)
from tracefmt.dtypes import DTYPE_INFO, fingerprint, heap_name
from tracefmt.errors import TraceError, WriterClosedError
from tracefmt.filters import get_filter
from tracefmt.light import LightStepRecord
from tracefmt.model import Provenance
from tracefmt.nonfinite import Counts, GraphFlow, classify_record, count_flags
from tracefmt.records import Graph, StepRecord
from tracefmt.version import __version__

# Oldest object formats that support SWMR; "latest" as the upper bound.  A lower bound of "latest"
# makes HDF5 2.0 write datatype message version 5, which HDF5 1.10-1.14 readers refuse.
_LIBVER = ("v110", "latest")


def rank_file_path(run_dir: str | os.PathLike[str], rank: int) -> Path:
    """Path of ``rank``'s file inside a run directory: ``run_dir/rank-00000.tft.h5``."""
    return Path(run_dir) / L.RANK_FILE_PATTERN.format(rank=rank)


def make_provenance(extra: Mapping[str, str] | None = None) -> Provenance:
    """Provenance of a file written now, by this process."""
    torch = sys.modules.get("torch")
    extra = dict(extra or {})
    torch_version = extra.pop("torch", None) or getattr(torch, "__version__", None)
    return Provenance(
        tracefmt=__version__,
        h5py=h5py.version.version,
        hdf5=h5py.version.hdf5_version,
        numpy=np.__version__,
        python=platform.python_version(),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        host=socket.gethostname(),
        torch=None if torch_version is None else str(torch_version),
        extra=extra,
    )


class TraceWriter:
    """Writes steps to one rank's trace file.  Not thread-safe: use it from one thread.

    ``values_filter`` names the filter of the value heaps (:data:`tracefmt.filters.FILTERS`;
    ``"fast"`` is Blosc2-LZ4 with bit shuffle).  ``hist_bins`` fixes the bins of every histogram in
    the file (0: none).  ``fsync`` makes :meth:`flush` wait for the disk, not only the page cache.
    ``provenance``, given, is written instead of this process's (``provenance_extra`` ignored).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        run_id: str | None = None,
        rank: int = 0,
        world_size: int = 1,
        values_filter: str = "none",
        hist_bins: int = 0,
        provenance_extra: Mapping[str, str] | None = None,
        overwrite: bool = False,
        fsync: bool = True,
        provenance: Provenance | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}.")
        if not 0 <= hist_bins <= L.MAX_HIST_BINS:
            raise ValueError(f"hist_bins must be in 0..{L.MAX_HIST_BINS}, not {hist_bins}.")
        self._filter = get_filter(values_filter)
        filter_kwargs = self._filter.h5py_kwargs()
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise TraceError(
                f"{str(self.path)!r} already exists; choose a new run directory or pass overwrite=True."
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._closed = True
        self._failure: str | None = None  # set by the first failed write; the writer is then dead
        # Built under a temporary name, renamed once in SWMR mode and flushed: a process killed
        # before that leaves no unopenable file under the trace's name (HDF5 cannot open it).
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self._file = h5py.File(tmp, "w", libver=_LIBVER, rdcc_nbytes=8 << 20, rdcc_nslots=10007)
        except OSError as e:
            raise TraceError(f"Cannot create trace file {str(self.path)!r}: {e}") from e
        self._closed = False
        f = self._file
        self._tables = Appender(f)
        self.run_id = run_id or uuid.uuid4().hex
        self.rank, self.world_size, self.hist_bins = rank, world_size, hist_bins
        tables = dict(L.TABLES)
        tables[L.HISTS] = (L.hist_dtype(max(hist_bins, 1)), L.HIST_ROWS_PER_CHUNK)
        try:
            f.attrs[L.ATTR_MAGIC] = fixed_utf8(L.FORMAT_MAGIC)
            f.attrs[L.ATTR_VERSION] = fixed_utf8(L.FORMAT_VERSION)
            prov = provenance or make_provenance(provenance_extra)
            f.attrs[L.ATTR_PROVENANCE] = fixed_utf8(prov.to_json())
            f.attrs[L.ATTR_RUN_ID] = fixed_utf8(self.run_id)
            f.attrs[L.ATTR_RANK] = np.int64(rank)
            f.attrs[L.ATTR_WORLD_SIZE] = np.int64(world_size)
            f.attrs[L.ATTR_VALUES_FILTER] = fixed_utf8(self._filter.name)
            f.attrs[L.ATTR_HIST_BINS] = np.int64(hist_bins)
            for name, (dtype, rows) in [*tables.items(), *L.HEAPS.items()]:
                self._create(name, dtype, rows, L.table_filters(name))
            for name in L.VALUE_HEAPS:
                dtype = np.dtype(name.rsplit("/", 1)[1])
                rows = L.VALUE_CHUNK_BYTES // dtype.itemsize
                self._create(name, dtype, rows, filter_kwargs)
            f.swmr_mode = True
            f.flush()
            if fsync:
                os.fsync(f.id.get_vfd_handle())
            os.replace(tmp, self.path)
            if fsync:
                fsync_dir(self.path.parent)
        except BaseException as e:
            self._failure = f"creating the file: {e}"
            self._abandon()
            with contextlib.suppress(OSError):
                tmp.unlink()
            if isinstance(e, (OSError, RuntimeError)):
                raise TraceError(f"Cannot create trace file {str(self.path)!r}: {e}") from e
            raise
        self._graphs = GraphStore(self._tables)
        self._modules = ModuleStore(self._tables, self._graphs.intern_all, self._graphs.intern)  # 1.5
        self._rng = RngStore(self._tables, self._graphs.intern)  # 1.6
        self._pending: list[StepRow] = []
        self._pending_overrides: list[StepOverrideRow] = []  # of each pending step
        self._last_step: int | None = None
        self._pending_light: list[LightStepRow] = []
        self._last_light: int | None = None
        self._flows: dict[bytes, GraphFlow] = {}  # per graph structure, for classify_record
        self.steps_written = 0

    def _create(self, name: str, dtype: np.dtype[Any], rows: int, kwargs: Mapping[str, Any]) -> None:
        self._tables.create(name, dtype, rows, kwargs)

    # -- context manager -------------------------------------------------------------------------
    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise WriterClosedError(
                f"The writer of {str(self.path)!r} is closed; open a new "
                "TraceWriter to write more steps."
            )
        if self._failure is not None:
            raise TraceError(
                f"The writer of {str(self.path)!r} failed earlier ({self._failure}); "
                "the steps flushed before that are intact, nothing more can be "
                "written to this file."
            )

    @contextlib.contextmanager
    def _io(self, what: str) -> Iterator[None]:
        """Turn a failed HDF5 write (disk full, I/O error) into a :class:`TraceError` and mark the
        writer failed: HDF5's in-memory state no longer matches the file after one."""
        try:
            yield
        except (OSError, RuntimeError) as e:
            self._failure = f"{what}: {e}".replace("\n", " ")
            raise TraceError(
                f"{what} to {str(self.path)!r} failed: {e}; the steps flushed "
                "before are intact (check free disk space and file size limits)."
            ) from e

    # -- steps -----------------------------------------------------------------------------------
    def write_step(self, record: StepRecord) -> None:
        """Write one step's rows.  The step becomes visible to readers at the next :meth:`flush`.

        Steps must be written in strictly increasing step order.
        """
        self._check_open()
        if self._last_step is not None and record.step <= self._last_step:
            raise ValueError(
                f"Step {record.step} was written after step {self._last_step}; steps "
                "must be written in increasing order."
            )
        record.check()
        with self._io(f"Writing step {record.step}"):
            self._write_step(record)

    def _write_step(self, record: StepRecord) -> None:
        graph = record.graph
        tables, intern = self._tables, self._graphs.intern
        graph_row = self._graphs.row(graph)
        overrides = self._graphs.overrides(graph, graph_row)
        # NaN/Inf seen, and (1.4) whether an op created them or the state holds them.
        flags = classify_record(record, self._flows).flags
        stats_start, stats_count = tables.length(L.STATS), 0
        if record.stats is not None:
            stats = np.asarray(record.stats, dtype=L.STATS_DTYPE)
            flags |= count_flags(Counts.of_stats(stats))
            stats_start, stats_count = tables.append(L.STATS, stats), len(stats)
        op_stats_start, op_stats_count = tables.length(L.OP_STATS), 0
        if record.op_stats is not None or record.op_starts is not None:
            op_stats, op_starts = record.op_tables()  # row r of op_starts is row r of op_stats's
            op_stats_start, op_stats_count = tables.append(L.OP_STATS, op_stats), len(op_stats)
            tables.append(L.OP_STARTS, op_starts)
        data_rows = np.array(
            [self._write_values(graph, t, a) for t, a in sorted(record.values.items())],
            dtype=L.DATA_INDEX_DTYPE,
        )
        hists = np.zeros(len(record.histograms), dtype=tables.dtype(L.HISTS))
        for i, (tensor, (lo, hi, counts)) in enumerate(sorted(record.histograms.items())):
            if len(counts) != self.hist_bins:
                raise ValueError(
                    f"Histogram of tensor {tensor} has {len(counts)} bins; this "
                    f"file was opened with hist_bins={self.hist_bins}."
                )
            hists[i] = HistRow(tensor=tensor, lo=lo, hi=hi, counts=counts)
        events, scalars = event_rows(record.events, intern), scalar_rows(record.scalars, intern)
        row = StepRow(
            step=record.step,
            graph=graph_row,
            stats_start=stats_start,
            stats_count=stats_count,
            op_stats_start=op_stats_start,
            op_stats_count=op_stats_count,
            data_start=tables.append(L.DATA_INDEX, data_rows),
            data_count=len(data_rows),
            hist_start=tables.append(L.HISTS, hists),
            hist_count=len(hists),
            event_start=tables.append(L.EVENTS, events),
            event_count=len(events),
            scalar_start=tables.append(L.SCALARS, scalars),
            scalar_count=len(scalars),
            wall_time=record.wall_time,
            duration=record.duration,
            flags=flags,
            dropped=record.dropped,
        )
        # The step's step_overrides row waits with its steps row and is appended at the next
        # flush, before phase 1.  The two tables are matched by row number: a record refused
        # half-way (a ValueError above) must leave a row in neither; likewise step_modules (1.5)
        # and step_rng_states (1.6, which refuses a device named twice before it queues a row).
        self._rng.pend(record.rng_states)
        self._modules.pend(record.modules)
        self._pending.append(row)
        self._pending_overrides.append(overrides)
        self._last_step = record.step

    def write_light_step(self, record: LightStepRecord) -> None:
        """Write one light step's rows (format 1.4); it becomes visible at the next :meth:`flush`.

        Light steps must be written in strictly increasing step order; a step number may also
        be written as a full step (:meth:`write_step`), before or after.
        """
        self._check_open()
        if record.step < 0 or (self._last_light is not None and record.step <= self._last_light):
            raise ValueError(
                f"Light step {record.step} was written after light step {self._last_light}; "
                "light steps must be written in increasing order, from 0."
            )
        record.check()
        with self._io(f"Writing light step {record.step}"):
            self._pending_light.append(append_light_step(self._tables, self._graphs.intern, record))
        self._last_light = record.step

    def _write_values(self, graph: Graph, tensor: int, array: np.ndarray) -> DataRow:
        spec = graph.tensors[tensor]
        info = DTYPE_INFO[spec.dtype]
        flat = np.ascontiguousarray(array).reshape(-1)
        storage = flat if flat.dtype == info.storage else flat.view(np.uint8).view(info.storage)
        offset = self._tables.append(f"{L.DATA_GROUP}/{heap_name(spec.dtype)}", storage)
        return DataRow(tensor, offset, storage.size, fingerprint(storage))

    def flush(self) -> None:
        """Commit every written step and return when it is on disk (page cache, then ``fsync``)."""
        self._check_open()
        committed = 0
        with self._io("Flushing"):
            if self._pending or self._pending_light:
                self._tables.append(
                    L.STEP_OVERRIDES, np.array(self._pending_overrides, dtype=L.STEP_OVERRIDE_DTYPE)
                )
                self._modules.commit()  # step_modules rows of the pending steps (format 1.5)
                self._rng.commit()  # step_rng_states rows of the pending steps (format 1.6)
                self._seal_filtered_heaps()
                self._file.flush()  # phase 1: every row the pending steps point at
                self._tables.append(L.STEPS, np.array(self._pending, dtype=L.STEP_DTYPE))
                light = np.array(self._pending_light, dtype=L.LIGHT_STEP_DTYPE)
                self._tables.append(L.LIGHT_STEPS, light)
                committed = len(self._pending)
                self._pending, self._pending_overrides, self._pending_light = [], [], []
            self._file.flush()  # phase 2: the commit rows
            if self._fsync:
                os.fsync(self._file.id.get_vfd_handle())
        self.steps_written += committed

    def _seal_filtered_heaps(self) -> None:
        """Pad filtered value heaps to a chunk boundary before a commit.

        A filtered chunk holding flushed values must never be written again: a checksum or
        compressor rewrites the whole chunk, and a SIGKILL during that rewrite would make values
        already committed unreadable.  The padding is never referenced (and compresses to almost
        nothing); the unfiltered default needs none, its rewrites repeat the same bytes.
        """
        if self._filter.name == "none":
            return
        for name in L.VALUE_HEAPS:
            self._tables.pad_to_chunk(name)

    def close(self) -> None:
        """Flush and close.  Idempotent.  After a failed write it only lets go of the file (see
        :meth:`_abandon`) and raises nothing more: the failure was raised when it happened."""
        if self._closed:
            return
        if self._failure is None:
            try:
                self.flush()
            except TraceError:
                self._abandon()
                raise
            try:
                with self._io("Closing"):
                    self._file.close()  # HDF5 may still write free-space and superblock data
            except TraceError:
                self._abandon()
                raise
            self._closed = True
        else:
            self._abandon()

    def _abandon(self) -> None:
        """Let go of a file whose writes failed, without closing it in HDF5.

        Closing it makes HDF5 flush again; that fails, leaves dataset handles whose memory it has
        already freed, and a later release of those handles (h5py, at the latest when the process
        exits) crashes the process with SIGSEGV.  Locked handles are never released by h5py, so the
        file stays open in HDF5 until the process ends: a leak of one file, in a process that was
        told its recording failed.  What was flushed before the failure is on disk already.
        """
        self._closed = True
        self._tables.lock()
        self._file.id.locked = True
