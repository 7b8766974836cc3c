"""Read-only views of rank files for the validator's rules.

:class:`FileContext` opens one rank file with SWMR read access and loads what rules ask for, lazily
and with bounded memory: the step index, one graph at a time, and the rows of one step's ranges
through a sliding window.  Everything it returns has been checked just enough to be used safely;
what does not pass raises :class:`~tracefmt.rules._base.Skip` (another rule reports why).  A read
that fails inside HDF5 (a bad checksum, a missing filter) is remembered per dataset and reported
under TF-FILT-003.  Attributes, datasets, ranges and strings are checked by the primitives the
reader uses too (:mod:`tracefmt._primitives`): the validator reports what the reader refuses.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import h5py
import numpy as np

from tracefmt import _layout as L
from tracefmt._h5open import open_swmr
from tracefmt._primitives import (
    Problem,
    open_dataset,
    read_hist_bins,
    read_rank,
    read_run_id,
    read_values_filter,
    read_version,
    rows_in_range,
    string_text,
    trace_mark,
)
from tracefmt.dtypes import fingerprint
from tracefmt.manifest import RunManifest
from tracefmt.rules._base import Finding, Severity, Skip
from tracefmt.rules._views import GraphView, Span, StepRef

WINDOW_BYTES = 8 << 20  # rows of a per-step table read at once
LOAD_LIMIT_BYTES = 1 << 30  # largest table loaded whole (steps, graphs, strings/index)
VALUE_BLOCK_ITEMS = 1 << 20  # value heap items read at once when fingerprinting
GRAPH_CACHE = 16

T = TypeVar("T")


class Identity(NamedTuple):
    """Who wrote a rank file: its run, and which rank of how many."""

    run_id: str
    rank: int
    world_size: int


class _Window(NamedTuple):
    """Rows ``[start, stop)`` of a table, read at once."""

    start: int
    stop: int
    rows: np.ndarray


def _usable(value: T | Problem | None) -> T | None:
    """``value``, or None when it is a problem (a rule reports it) or was not read."""
    return None if isinstance(value, Problem) else value


class FileContext:
    """One rank file opened read-only for validation.  Close it (``contextlib.closing``)."""

    def __init__(self, path: Path, *, deep: bool = False) -> None:
        self.path, self.deep = path, deep
        self.file: h5py.File | None = None
        self.open_error: str | None = None
        self.read_failures: dict[str, str] = {}
        self.reported_failures: set[str] = set()
        self._lengths: dict[str, int] = {}
        self._problems: dict[str, str | None] = {}
        self._windows: dict[str, _Window] = {}
        self._tables: dict[str, np.ndarray] = {}
        self._graphs: OrderedDict[int, GraphView | None] = OrderedDict()
        self._strings: dict[int, str | Problem] = {}
        self._steps: list[StepRef] | None = None
        self._referenced: list[int] | None = None
        self._value_fps: dict[tuple[str, int, int], int] = {}
        self._open()
        f = self.file
        self.is_trace = f is not None and trace_mark(f) is None
        self.version = _usable(read_version(f) if f is not None and self.is_trace else None)
        self.supported = self.version is not None and self.version.major == L.FORMAT_MAJOR
        self.newer_minor = (
            self.supported and self.version is not None and self.version.minor > L.FORMAT_MINOR
        )
        #: The minor version whose rules apply: the file's, or this validator's for a newer one.
        self.minor = min(self.version.minor, L.FORMAT_MINOR) if self.version is not None else 0
        #: Whether the file's steps have their own op attributes and storage offsets (1.1 on).
        self.has_overrides = L.has_dataset(L.STEP_OVERRIDES, self.minor)
        self.hist_bins = _usable(read_hist_bins(f) if f is not None and self.is_trace else None)
        self.values_filter = _usable(read_values_filter(f) if f is not None and self.is_trace else None)

    def _open(self) -> None:
        try:
            self.file = open_swmr(self.path)
            return
        except RuntimeError:
            # Read attempts cannot be limited: a SWMR open of a damaged file could hang, so
            # prefer a plain open, which only fails for a file still marked open for writing.
            try:
                self.file = h5py.File(self.path, "r")
                return
            except Exception as e:
                self.open_error = str(e) or type(e).__name__
            try:
                self.file = h5py.File(self.path, "r", swmr=True)
                self.open_error = None
            except Exception:
                pass
        except Exception as e:  # not HDF5, truncated, damaged superblock, ...
            self.open_error = str(e) or type(e).__name__

    def close(self) -> None:
        if self.file is not None:
            with contextlib.suppress(Exception):  # closing a damaged file may fail
                self.file.close()
            self.file = None

    @property
    def unknown_severity(self) -> Severity:
        """Severity of an unknown code or flag bit: only a warning in a newer minor version."""
        return "warning" if self.newer_minor else "error"

    def loc(self, dataset: str | None = None, row: int | None = None, step: int | None = None) -> str:
        """A finding's location: ``file:/dataset[row] (step N)``."""
        text = f"{self.path}:/{dataset or ''}"
        if row is not None:
            text += f"[{row}]"
        return text if step is None else f"{text} (step {step})"

    # -- attributes ------------------------------------------------------------------------------
    @property
    def h5(self) -> h5py.File:
        """The open HDF5 file (raises Skip when it did not open: TF-FILE-001)."""
        if self.file is None:
            raise Skip
        return self.file

    def identity(self) -> Identity | None:
        """The file's run, rank and world size when all three are valid (TF-FILE-005)."""
        if not self.is_trace:
            return None
        run_id, rank = _usable(read_run_id(self.h5)), _usable(read_rank(self.h5))
        return None if run_id is None or rank is None else Identity(run_id, *rank)

    # -- datasets --------------------------------------------------------------------------------
    def layout_problem(self, name: str) -> str | None:
        """Why dataset ``name`` breaks TF-LAYOUT-001, or None when it is as the spec says."""
        if name in self._problems:
            return self._problems[name]
        problem = self._layout_problem(name)
        self._problems[name] = problem
        return problem

    def _layout_problem(self, name: str) -> str | None:
        # Unknown bins: only the shape is checked, TF-FILE-006 reports the attribute.
        unknown = name == L.HISTS and self.hist_bins is None
        obj = open_dataset(self.h5, name, None if unknown else self.expected_datasets().get(name))
        if isinstance(obj, Problem):
            return obj.message
        if obj.chunks is None:
            return f"/{name} is not chunked; the format wants a chunked, extendable dataset."
        if obj.maxshape != (None,):
            return f"/{name} has maximum shape {obj.maxshape}; the format wants (None,)."
        return None

    def expected_datasets(self) -> dict[str, np.dtype[Any]]:
        """The datasets (and row dtypes) the file's format version says it has."""
        return L.expected_datasets(self.hist_bins or 0, self.minor)

    def dataset(self, name: str) -> h5py.Dataset:
        """Dataset ``name``; raises Skip when it breaks TF-LAYOUT-001 (or its dtype is unknown)."""
        if self.layout_problem(name) is not None or (name == L.HISTS and self.hist_bins is None):
            raise Skip
        ds = self.h5[name]
        if not isinstance(ds, h5py.Dataset):
            raise Skip
        return ds

    def length(self, name: str) -> int:
        """Rows in dataset ``name`` when it was first asked (later appends are not seen)."""
        n = self._lengths.get(name)
        if n is None:
            n = self._lengths[name] = int(self.dataset(name).shape[0])
        return n

    def range_ok(self, name: str, start: int, count: int, limit: int = L.MAX_STEP_ROWS) -> bool:
        """Whether ``[start, start + count)`` lies in ``name`` and ``count <= limit``."""
        return rows_in_range(start, count, self.length(name), limit)

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)``; a failing read is remembered for TF-FILT-003 and raises Skip."""
        ds = self.dataset(name)
        try:
            return np.asarray(ds[start:stop])
        except Exception as e:
            self.read_failures.setdefault(name, f"reading rows {start}..{stop} failed ({e})")
            raise Skip from e

    def rows(self, name: str, start: int, count: int) -> np.ndarray:
        """Rows ``[start, start + count)`` through a sliding window (check the range first)."""
        window = self._windows.get(name)
        if window is not None and window.start <= start and start + count <= window.stop:
            at = start - window.start
            return window.rows[at : at + count]
        block = max(WINDOW_BYTES // max(self.dataset(name).dtype.itemsize, 1), 1)
        if count >= block:
            return self.read(name, start, start + count)
        stop = min(start + block, self.length(name))
        data = self.read(name, start, stop)
        self._windows[name] = _Window(start, stop, data)
        return data[:count]

    def table(self, name: str) -> np.ndarray:
        """The whole table ``name`` (for small tables: steps, graphs, strings/index)."""
        data = self._tables.get(name)
        if data is None:
            n = self.length(name)
            if n * self.dataset(name).dtype.itemsize > LOAD_LIMIT_BYTES:
                raise ValueError(f"/{name} has {n} rows, too many to load for validation.")
            data = self._tables[name] = self.read(name, 0, n)
        return data

    # -- steps and graphs ------------------------------------------------------------------------
    def steps(self) -> list[StepRef]:
        """Every committed step (raises Skip when ``steps`` is over the limit: TF-STEP-001)."""
        if self._steps is None:
            if self.length(L.STEPS) > L.MAX_STEP_COUNT_SCAN:
                raise Skip
            rows = self.table(L.STEPS)
            overrides = self._step_overrides(len(rows))
            self._steps = [
                StepRef(
                    i,
                    r["step"],
                    r["graph"],
                    r["flags"],
                    {t: Span(r[s], r[c]) for t, (s, c) in L.STEP_RANGES.items()},
                    overrides[i] if i < len(overrides) else None,
                    r["duration"],
                )
                for i, r in enumerate(_records(rows))
            ]
        return self._steps

    def _step_overrides(self, n_steps: int) -> list[dict[str, Span]]:
        """The ``step_overrides`` rows of the committed steps (fewer when the table is short or
        broken: TF-OVERRIDE-001, TF-LAYOUT-001); none in a file older than 1.1."""
        if not self.has_overrides:
            return []
        try:
            n = min(self.length(L.STEP_OVERRIDES), n_steps)
            if n * L.STEP_OVERRIDE_DTYPE.itemsize > LOAD_LIMIT_BYTES:
                return []
            rows = self.read(L.STEP_OVERRIDES, 0, n)
        except Skip:
            return []
        return [{t: Span(r[s], r[c]) for t, (s, c) in L.OVERRIDE_RANGES.items()} for r in _records(rows)]

    def override_rows(self, ref: StepRef, name: str) -> np.ndarray | None:
        """Step ``ref``'s rows of ``op_attrs`` or ``tensor_offsets``; None when it has none to
        read (before 1.1) or the range is invalid (TF-OVERRIDE-001)."""
        if ref.overrides is None:
            return None
        start, count = ref.overrides[name].start, ref.overrides[name].count
        try:
            if not self.range_ok(name, start, count):
                return None
        except Skip:
            return None
        return self.rows(name, start, count)

    def step_rows(self, ref: StepRef, name: str) -> np.ndarray | None:
        """Rows of table ``name`` in step ``ref``'s range; None when the range is invalid."""
        start, count = ref.ranges[name].start, ref.ranges[name].count
        if not self.range_ok(name, start, count):
            return None
        return self.rows(name, start, count)

    def graph(self, g: int) -> GraphView | None:
        """Graph row ``g``; None when it does not exist or its ranges are invalid (TF-GRAPH-001)."""
        if g in self._graphs:
            self._graphs.move_to_end(g)
            return self._graphs[g]
        graphs = self.table(L.GRAPHS)
        view = None
        if g < len(graphs):
            row = graphs[g]
            ranges = {t: (int(row[s]), int(row[c]), lim) for t, (s, c, lim) in L.GRAPH_RANGES.items()}
            if all(self.range_ok(t, s, c, lim) for t, (s, c, lim) in ranges.items()):
                parts = [self.read(t, s, s + c) for t, (s, c, _) in ranges.items()]
                view = GraphView(g, *parts)
        self._graphs[g] = view
        if len(self._graphs) > GRAPH_CACHE:
            self._graphs.popitem(last=False)
        return view

    def referenced_graphs(self) -> list[int]:
        """Rows of ``graphs`` that committed steps reference, ascending."""
        if self._referenced is None:
            self._referenced = sorted({ref.graph for ref in self.steps()})
        return self._referenced

    def graph_views(self) -> Iterator[GraphView]:
        """Every valid graph that committed steps reference."""
        for g in self.referenced_graphs():
            view = self.graph(g)
            if view is not None:
                yield view

    def step_graphs(self) -> Iterator[tuple[StepRef, GraphView]]:
        """Committed steps whose graph is valid, with the graph."""
        for ref in self.steps():
            view = self.graph(ref.graph)
            if view is not None:
                yield ref, view

    # -- strings ---------------------------------------------------------------------------------
    def string_problem(self, sid: int) -> Problem | None:
        """Why string ``sid`` (not -1) is unusable (TF-STR-001 / TF-STR-002), or None."""
        text = self._string(sid)
        return text if isinstance(text, Problem) else None

    def string(self, sid: int) -> str | None:
        """Text of string ``sid``; None for -1 and for strings that are unusable."""
        return None if sid == L.NO_STRING else _usable(self._string(sid))

    def _string(self, sid: int) -> str | Problem:
        cached = self._strings.get(sid)
        if cached is None:
            cached = self._strings[sid] = string_text(
                self.table(L.STRINGS_INDEX),
                sid,
                self.length(L.STRINGS_BYTES),
                lambda offset, length: self.rows(L.STRINGS_BYTES, offset, length).tobytes(),
            )
        return cached

    # -- values ----------------------------------------------------------------------------------
    def values_fingerprint(self, heap: str, offset: int, count: int) -> int:
        """Fingerprint of heap items ``[offset, offset + count)``, read in bounded blocks."""
        key = (heap, offset, count)
        fp = self._value_fps.get(key)
        if fp is None:
            total = 0
            for start in range(offset, offset + count, VALUE_BLOCK_ITEMS):
                stop = min(start + VALUE_BLOCK_ITEMS, offset + count)
                total += fingerprint(self.read(heap, start, stop))
            fp = self._value_fps[key] = total % (1 << 64)
        return fp

    def failure_findings(self) -> list[Finding]:
        """TF-FILT-003 findings for failed reads that no rule has reported yet."""
        out = []
        for name, message in self.read_failures.items():
            if name not in self.reported_failures:
                self.reported_failures.add(name)
                out.append(
                    Finding(
                        "TF-FILT-003",
                        "error",
                        self.loc(name),
                        f"Stored data of /{name} cannot be read: {message}; the file is "
                        "damaged or needs a filter that is not installed.",
                    )
                )
        return out


@dataclass(frozen=True)
class RunContext:
    """What run-level rules see: the path given and the identity of each rank file."""

    path: Path
    is_dir: bool
    files: tuple[tuple[Path, Identity | None], ...]
    #: The run manifest (``run.json``): None without one, a Problem when it cannot be used.
    manifest: RunManifest | Problem | None = None


def _records(rows: np.ndarray) -> list[dict[str, Any]]:
    """The rows of a table as {field: value} (Python values: one ``tolist`` for all rows)."""
    names = list(rows.dtype.names or ())
    return [dict(zip(names, values, strict=True)) for values in rows.tolist()]
