"""One open rank file: :class:`RankFile` checks the header at open and reads table rows safely.

It owns the HDF5 side of reading: the magic, version, root attributes and dataset dtypes at open;
reads bounded by the rows a dataset has and by the bytes its stored chunks can back (a hostile
extent must not make a read allocate 10**12 rows); reading a live writer's torn chunk again; the
interned strings; finding a step in the step index.  Any HDF5 failure becomes a
:class:`~tracefmt.errors.TraceError` naming the dataset and step.  What the rows mean is
:mod:`tracefmt._decode`'s business; :mod:`tracefmt.reader` puts the ranks of a run together.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from h5py import h5s, h5t

from tracefmt import _layout as L
from tracefmt._decode import (
    GraphData,
    Step,
    StepRows,
    StepSummary,
    decode_graph,
    decode_step,
    decode_string,
    decode_summaries,
)
from tracefmt._h5open import (
    H5_ERRORS,
    REREAD_PAUSES,
    int_root_attr,
    open_swmr,
    root_attr,
    swmr_writer_flag,
)
from tracefmt.dtypes import DTYPE_INFO, fingerprint, heap_name, logical_view
from tracefmt.errors import (
    TraceCorruptError,
    TraceError,
    TraceFormatError,
    TraceNotFoundError,
    UnsupportedVersionError,
)
from tracefmt.filters import FILTERS, ensure_readable
from tracefmt.model import Provenance, TensorMeta


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
            f"{L.FORMAT_MAJOR} only. Install a tracefmt release that supports version {major}."
        )
    return major, minor


class RankFile:
    """One open rank file, used through :class:`~tracefmt.reader.Trace`; methods return plain data."""

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
                raise TraceCorruptError(
                    f"{where}: HDF5 cannot read the file's structure ({e}); the file is damaged."
                ) from e
            raise

    def _init(self, where: str) -> None:
        f = self._file
        magic = root_attr(f, L.ATTR_MAGIC, where, missing=None)
        if not isinstance(magic, str) or magic != L.FORMAT_MAGIC:
            raise TraceFormatError(
                f"{where!r} is an HDF5 file but not a tracefmt trace (root "
                f"attribute {L.ATTR_MAGIC!r} is {magic!r})."
            )
        self.version = parse_version(root_attr(f, L.ATTR_VERSION, where), where)
        try:
            self.provenance = Provenance.from_json(str(root_attr(f, L.ATTR_PROVENANCE, where)))
        except ValueError as e:
            raise TraceFormatError(f"{where}: the provenance attribute is malformed: {e}") from e
        self.run_id = str(root_attr(f, L.ATTR_RUN_ID, where))
        self.rank = int_root_attr(f, L.ATTR_RANK, where)
        self.world_size = int_root_attr(f, L.ATTR_WORLD_SIZE, where)
        if not 0 <= self.rank < self.world_size:
            raise TraceFormatError(f"{where}: rank {self.rank} is outside world_size {self.world_size}.")
        self.values_filter = str(root_attr(f, L.ATTR_VALUES_FILTER, where))
        if self.values_filter not in FILTERS:
            raise TraceFormatError(f"{where}: unknown values filter {self.values_filter!r}.")
        self.hist_bins = int_root_attr(f, L.ATTR_HIST_BINS, where)
        if not 0 <= self.hist_bins <= L.MAX_HIST_BINS:
            raise TraceFormatError(f"{where}: hist_bins {self.hist_bins} is out of range.")
        # The step index first: a writer flushes a step's rows before its steps row, so every step
        # counted here has its rows in the datasets opened after it (see refresh()).
        # Datasets a later minor version added are required from that version on; in an older
        # file they are absent, or ignored (1.0: no op_attrs, every op has its graph's attrs).
        minor = self.version[1]
        expected = {
            L.STEPS: L.STEP_DTYPE,
            **{k: v[0] for k, v in L.TABLES.items() if L.has_dataset(k, minor)},
            **{k: v[0] for k, v in L.HEAPS.items()},
            L.HISTS: L.hist_dtype(max(self.hist_bins, 1)),
        }
        expected.update({h: np.dtype(h.rsplit("/", 1)[1]) for h in L.VALUE_HEAPS})
        self._ds: dict[str, h5py.Dataset] = {}
        for name, dtype in expected.items():
            ds = None
            try:
                if name in f:  # not f.get(), which would call a damaged header "missing"
                    ds = f[name]
            except H5_ERRORS as e:  # the link is there, the object header is damaged
                raise TraceCorruptError(
                    f"{where}: dataset /{name} cannot be opened ({e}); the file is damaged."
                ) from e
            if not isinstance(ds, h5py.Dataset):
                raise TraceFormatError(f"{where}: dataset /{name} is missing.")
            if ds.ndim != 1 or ds.dtype != dtype:
                raise TraceFormatError(
                    f"{where}: dataset /{name} has dtype {ds.dtype} and "
                    f"{ds.ndim} dimensions; the format wants 1-D {dtype}."
                )
            self._ds[name] = ds
            if name == L.STEPS:
                self._committed = int(ds.shape[0])
        self._reset_budgets()
        self._graph_cache: dict[int, GraphData] = {}
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
                raise TraceCorruptError(
                    f"{self.path}: the storage of /{name} cannot be read ({e}); the file is damaged."
                ) from e
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
            raise TraceCorruptError(f"{self.path}: refreshing failed ({e}); the file is damaged.") from e
        self._strings_loaded = None

    # -- checked reads ---------------------------------------------------------------------------
    def length(self, name: str) -> int:
        return int(self._ds[name].shape[0])

    def _where(self, step: int | None) -> str:
        return f"{self.path}" + ("" if step is None else f", step {step}")

    def _rows(
        self, name: str, start: int, count: int, step: int | None = None, limit: int = L.MAX_STEP_ROWS
    ) -> np.ndarray:
        """Rows ``[start, start+count)`` of ``name``, after checking they exist."""
        n = self.length(name)
        if count < 0 or count > limit or start < 0 or start + count > n:
            raise TraceFormatError(
                f"{self._where(step)}: rows {start}..{start + count} of /{name} "
                f"are out of range (it has {n} rows)."
            )
        if count == 0:
            return np.zeros(0, dtype=self._ds[name].dtype)
        budget = self._budget(name)
        if budget is not None and (start + count) * self._ds[name].dtype.itemsize > budget:
            raise TraceFormatError(
                f"{self._where(step)}: rows {start}..{start + count} of /{name} "
                f"lie beyond the {budget} bytes the file stores; the file is "
                "damaged or truncated."
            )
        pauses = REREAD_PAUSES if swmr_writer_flag(self.path) else ()
        for pause in (*pauses, None):
            try:
                return self._read(name, start, count)
            except H5_ERRORS as e:
                if pause is None:
                    raise TraceCorruptError(
                        f"{self._where(step)}: reading rows {start}.."
                        f"{start + count} of /{name} failed ({e}); the file "
                        "is damaged."
                    ) from e
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
        text = decode_string(*self._strings_loaded, sid, self._where(step))
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
        raise TraceError(
            f"Step {step} is not in {self.path} (rank {self.rank}); "
            "'tracefmt ls' lists the recorded steps."
        )

    def summaries(self) -> list[StepSummary]:
        """One summary per committed step, from the step index and graphs table alone."""
        return decode_summaries(
            self.step_rows(), self._rows(L.GRAPHS, 0, self.length(L.GRAPHS)), self.rank, self._where
        )

    def _graph(self, g: int, step: int) -> GraphData:
        """Graph row ``g``, decoded once and shared by the steps that use it.  Its ops and
        tensors carry the graph's base attributes and storage offsets (those of the first step
        written with it); :meth:`load` applies a step's own."""
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
        data = decode_graph(
            g, ops, edges, tensors, dims, self._where(step), functools.partial(self.string, step=step)
        )
        if len(self._graph_cache) > 64:
            self._graph_cache.clear()
        self._graph_cache[g] = data
        return data

    def _overrides(
        self, index: int, step: int, n_ops: int, n_tensors: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``op_attrs`` and ``tensor_offsets`` rows of the step in row ``index`` of the step
        index (none before format 1.1)."""
        if L.STEP_OVERRIDES not in self._ds:
            return (np.zeros(0, dtype=L.OP_ATTRS_DTYPE), np.zeros(0, dtype=L.TENSOR_OFFSET_DTYPE))
        r = self._rows(L.STEP_OVERRIDES, index, 1, step)[0]
        return (
            self._rows(
                L.OP_ATTRS, int(r["op_attrs_start"]), int(r["op_attrs_count"]), step, limit=n_ops
            ),
            self._rows(
                L.TENSOR_OFFSETS,
                int(r["tensor_offset_start"]),
                int(r["tensor_offset_count"]),
                step,
                limit=n_tensors,
            ),
        )

    def load(self, index: int) -> Step:
        """Load the step in row ``index`` of the step index.

        Its ops and tensors carry the step's attributes and storage offsets: the graph's,
        replaced by the step's rows of ``op_attrs`` and ``tensor_offsets`` (format 1.1).
        """
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
        rows = StepRows(
            step=r,
            stats=self._rows(L.STATS, int(r["stats_start"]), stats_count, step),
            op_stats=self._rows(L.OP_STATS, int(r["op_stats_start"]), op_count, step),
            data=self._rows(L.DATA_INDEX, int(r["data_start"]), int(r["data_count"]), step),
            hists=self._rows(L.HISTS, int(r["hist_start"]), int(r["hist_count"]), step),
            events=self._rows(L.EVENTS, int(r["event_start"]), int(r["event_count"]), step),
            scalars=self._rows(L.SCALARS, int(r["scalar_start"]), int(r["scalar_count"]), step),
            overrides=self._overrides(index, step, n_ops, n_tensors),
        )
        return decode_step(
            rows,
            graph,
            rank=self.rank,
            hist_bins=self.hist_bins,
            where=self._where(step),
            text=functools.partial(self._text, step=step),
            load_values=functools.partial(self._values, step),
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
        out = []
        for name, ds in self._ds.items():
            rows = int(ds.shape[0])
            try:
                stored = int(ds.id.get_storage_size())
            except H5_ERRORS as e:
                raise TraceCorruptError(
                    f"{self.path}: the size of /{name} cannot be read ({e}); the file is damaged."
                ) from e
            out.append(DatasetSize(name, rows, rows * ds.dtype.itemsize, stored))
        return out
