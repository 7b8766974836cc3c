"""Read-only views of rank files for the validator's rules.

:class:`FileContext` opens one rank file with SWMR read access and loads what rules ask for, lazily
and with bounded memory: the step index, one graph at a time, and the rows of one step's ranges
through a sliding window.  Everything it returns has been checked just enough to be used safely;
what does not pass raises :class:`~tracefmt.rules._base.Skip` (another rule reports why).  A read
that fails inside HDF5 (a bad checksum, a missing filter) is remembered per dataset and reported
under TF-FILT-003.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np
from h5py import h5t

from tracefmt import _layout as L
from tracefmt._h5open import open_swmr
from tracefmt.dtypes import fingerprint
from tracefmt.filters import FILTERS
from tracefmt.rules._base import Finding, Severity, Skip
from tracefmt.rules._views import (
    GRAPH_RANGES,
    OVERRIDE_RANGES,
    STEP_RANGES,
    GraphView,
    StepRef,
    int_value,
    parse_version,
    text_value,
)
from tracefmt.schema import expected_datasets

WINDOW_BYTES = 8 << 20  # rows of a per-step table read at once
LOAD_LIMIT_BYTES = 1 << 30  # largest table loaded whole (steps, graphs, strings/index)
VALUE_BLOCK_ITEMS = 1 << 20  # value heap items read at once when fingerprinting
GRAPH_CACHE = 16


class FileContext:
    """One rank file opened read-only for validation.  Use as a context manager."""

    def __init__(self, path: Path, *, deep: bool = False) -> None:
        self.path, self.deep = path, deep
        self.file: h5py.File | None = None
        self.open_error: str | None = None
        self.read_failures: dict[str, str] = {}
        self.reported_failures: set[str] = set()
        self._lengths: dict[str, int] = {}
        self._problems: dict[str, str | None] = {}
        self._windows: dict[str, tuple[int, int, np.ndarray]] = {}
        self._tables: dict[str, np.ndarray] = {}
        self._graphs: OrderedDict[int, GraphView | None] = OrderedDict()
        self._strings: dict[int, tuple[str | None, str | None]] = {}
        self._steps: list[StepRef] | None = None
        self._referenced: list[int] | None = None
        self._value_fps: dict[tuple[str, int, int], int] = {}
        self._open()
        self.is_trace = self.file is not None and self._text_attr(L.ATTR_MAGIC) == L.FORMAT_MAGIC
        text = self._text_attr(L.ATTR_VERSION) if self.is_trace else None
        self.version = None if text is None else parse_version(text)
        self.supported = self.version is not None and self.version[0] == L.FORMAT_MAJOR
        self.newer_minor = (
            self.supported and self.version is not None and self.version[1] > L.FORMAT_MINOR
        )
        #: The minor version whose rules apply: the file's, or this validator's for a newer one.
        self.minor = min(self.version[1], L.FORMAT_MINOR) if self.version is not None else 0
        #: Whether the file's steps have their own op attributes and storage offsets (1.1 on).
        self.has_overrides = L.has_dataset(L.STEP_OVERRIDES, self.minor)
        bins = int_value(self._raw_attr(L.ATTR_HIST_BINS)) if self.is_trace else None
        self.hist_bins = bins if bins is not None and 0 <= bins <= L.MAX_HIST_BINS else None
        vf = self._text_attr(L.ATTR_VALUES_FILTER) if self.is_trace else None
        self.values_filter = vf if vf in FILTERS else None

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

    def __enter__(self) -> FileContext:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

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
    def attr(self, name: str) -> tuple[Any, str | None]:
        """``(value, None)``, or ``(None, problem)`` when the root attribute is missing or unreadable."""
        if self.file is None:
            raise Skip
        try:
            attrs = self.file.attrs
            if name not in attrs:
                return None, f"The root attribute {name!r} is missing."
            # Variable-length data is refused unread: HDF5 2.0 loops for ever decoding a damaged
            # global heap.  The format stores fixed-length strings.
            kind = attrs.get_id(name).get_type()
            if kind.get_class() == h5t.VLEN or (
                isinstance(kind, h5t.TypeStringID) and kind.is_variable_str()
            ):
                return None, (
                    f"The root attribute {name!r} is variable-length data; the format "
                    "stores fixed-length UTF-8 strings and integers."
                )
            return attrs[name], None
        except Exception as e:
            return None, f"The root attribute {name!r} cannot be read ({e})."

    def _raw_attr(self, name: str) -> Any:
        return self.attr(name)[0]

    def _text_attr(self, name: str) -> str | None:
        return text_value(self._raw_attr(name))

    def identity(self) -> tuple[str, int, int] | None:
        """``(run_id, rank, world_size)`` when all three are valid (TF-FILE-005)."""
        if not self.is_trace:
            return None
        run_id = self._text_attr(L.ATTR_RUN_ID)
        rank = int_value(self._raw_attr(L.ATTR_RANK))
        world = int_value(self._raw_attr(L.ATTR_WORLD_SIZE))
        if not run_id or rank is None or world is None or not 0 <= rank < world:
            return None
        return run_id, rank, world

    # -- datasets --------------------------------------------------------------------------------
    def layout_problem(self, name: str) -> str | None:
        """Why dataset ``name`` breaks TF-LAYOUT-001, or None when it is as the spec says."""
        if name in self._problems:
            return self._problems[name]
        problem = self._layout_problem(name)
        self._problems[name] = problem
        return problem

    def _layout_problem(self, name: str) -> str | None:
        if self.file is None:
            raise Skip
        try:
            obj = self.file.get(name)
        except Exception as e:
            return f"/{name} cannot be opened ({e})."
        if not isinstance(obj, h5py.Dataset):
            return f"The dataset /{name} is missing." if obj is None else f"/{name} is not a dataset."
        expected = self.expected_datasets().get(name)
        if obj.ndim != 1:
            return f"/{name} has {obj.ndim} dimensions; the format wants 1."
        if name == L.HISTS and self.hist_bins is None:
            expected = None  # unknown bins: TF-FILE-006 reports the attribute
        elif expected is not None and obj.dtype != expected:
            return f"/{name} has dtype {obj.dtype}; the format wants {expected}."
        if obj.chunks is None:
            return f"/{name} is not chunked; the format wants a chunked, extendable dataset."
        if obj.maxshape != (None,):
            return f"/{name} has maximum shape {obj.maxshape}; the format wants (None,)."
        return None

    def expected_datasets(self) -> dict[str, np.dtype[Any]]:
        """The datasets (and row dtypes) the file's format version says it has."""
        return expected_datasets(self.hist_bins or 0, self.minor)

    def dataset(self, name: str) -> h5py.Dataset:
        """Dataset ``name``; raises Skip when it breaks TF-LAYOUT-001 (or its dtype is unknown)."""
        if self.layout_problem(name) is not None or (name == L.HISTS and self.hist_bins is None):
            raise Skip
        if self.file is None:
            raise Skip
        ds = self.file[name]
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
        return start >= 0 and 0 <= count <= limit and start + count <= self.length(name)

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
        if window is not None and window[0] <= start and start + count <= window[1]:
            return window[2][start - window[0] : start - window[0] + count]
        block = max(WINDOW_BYTES // max(self.dataset(name).dtype.itemsize, 1), 1)
        if count >= block:
            return self.read(name, start, start + count)
        stop = min(start + block, self.length(name))
        data = self.read(name, start, stop)
        self._windows[name] = (start, stop, data)
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
            names = list(rows.dtype.names or ())
            overrides = self._step_overrides(len(rows))
            refs = []
            for i, values in enumerate(rows.tolist()):
                r = dict(zip(names, values, strict=True))
                refs.append(
                    StepRef(
                        i,
                        r["step"],
                        r["graph"],
                        r["flags"],
                        {t: (r[s], r[c]) for t, (s, c) in STEP_RANGES.items()},
                        overrides[i] if i < len(overrides) else None,
                    )
                )
            self._steps = refs
        return self._steps

    def _step_overrides(self, n_steps: int) -> list[dict[str, tuple[int, int]]]:
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
        names = list(L.STEP_OVERRIDE_DTYPE.names or ())
        return [
            {t: (r[s], r[c]) for t, (s, c) in OVERRIDE_RANGES.items()}
            for r in (dict(zip(names, values, strict=True)) for values in rows.tolist())
        ]

    def override_rows(self, ref: StepRef, name: str) -> np.ndarray | None:
        """Step ``ref``'s rows of ``op_attrs`` or ``tensor_offsets``; None when it has none to
        read (before 1.1) or the range is invalid (TF-OVERRIDE-001)."""
        if ref.overrides is None:
            return None
        start, count = ref.overrides[name]
        try:
            if not self.range_ok(name, start, count):
                return None
        except Skip:
            return None
        return self.rows(name, start, count)

    def step_rows(self, ref: StepRef, name: str) -> np.ndarray | None:
        """Rows of table ``name`` in step ``ref``'s range; None when the range is invalid."""
        start, count = ref.ranges[name]
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
            ranges = {t: (int(row[s]), int(row[c]), lim) for t, (s, c, lim) in GRAPH_RANGES.items()}
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
    def string_problem(self, sid: int) -> str | None:
        """Why string ``sid`` is unusable (TF-STR-001 / TF-STR-002), or None."""
        return self._string(sid)[1]

    def string(self, sid: int) -> str | None:
        """Text of string ``sid``; None for -1 and for strings that are unusable."""
        return None if sid == L.NO_STRING else self._string(sid)[0]

    def _string(self, sid: int) -> tuple[str | None, str | None]:
        cached = self._strings.get(sid)
        if cached is None:
            cached = self._strings[sid] = self._decode(sid)
        return cached

    def _decode(self, sid: int) -> tuple[str | None, str | None]:
        index = self.table(L.STRINGS_INDEX)
        if not 0 <= sid < len(index):
            return None, f"string id {sid} is not a row of /{L.STRINGS_INDEX} ({len(index)} rows)"
        offset, length = int(index[sid]["offset"]), int(index[sid]["length"])
        if length > L.MAX_STRING_BYTES:
            return None, f"string {sid} is {length} bytes long; the limit is {L.MAX_STRING_BYTES}"
        if not self.range_ok(L.STRINGS_BYTES, offset, length, L.MAX_STRING_BYTES):
            return (
                None,
                f"string {sid} (bytes {offset}..{offset + length}) lies outside /{L.STRINGS_BYTES}",
            )
        try:
            return self.rows(L.STRINGS_BYTES, offset, length).tobytes().decode("utf-8"), None
        except UnicodeDecodeError as e:
            return None, f"string {sid} is not valid UTF-8 ({e.reason} at byte {e.start})"

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
    files: tuple[tuple[Path, tuple[str, int, int] | None], ...]
