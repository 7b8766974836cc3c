"""Bounded, checked reads of an open rank file's datasets, for :class:`~tracefmt._rankfile.RankFile`.

A read of rows is checked three ways before anything is allocated: the rows exist, their count is
under the caller's limit, and the bytes they need are no more than the dataset's stored chunks can
back (an extent is only metadata: a hostile file can declare 10**12 rows with nothing stored).  A
failed read of a file a live writer has open is tried again (it may have caught a chunk the writer
was rewriting), and any HDF5 failure becomes a :class:`~tracefmt.errors.TraceError` naming the
dataset and step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from h5py import h5s, h5t

from tracefmt import _layout as L
from tracefmt._h5open import H5_ERRORS, REREAD_PAUSES, swmr_writer_flag
from tracefmt._primitives import open_dataset, require, rows_in_range
from tracefmt.errors import TraceCorruptError, TraceError, TraceFormatError


@dataclass(frozen=True)
class DatasetSize:
    """Rows, logical bytes and bytes on disk of one dataset (for ``tracefmt info``)."""

    path: str
    rows: int
    raw_bytes: int
    stored_bytes: int


class TableReader:
    """The datasets ``expected`` (path: row dtype) of the open file ``f``, each checked at open.

    ``values_filter`` is the file's: a compressed value heap's stored bytes do not bound its rows.
    :attr:`committed` counts the rows of the step index when it was opened or refreshed: it comes
    first in ``expected``, and a writer flushes a step's rows before its ``steps`` row, so every
    step counted has its rows in the datasets opened after it.

    ``lazy`` opens (and checks) the step index at once and each other dataset when it is first
    read: for a file opened again after it was checked whole (a run keeps few files open).
    """

    committed: int
    #: Rows of the light step index (format 1.4; 0 in an older file), counted like ``committed``.
    light_committed: int = 0

    def __init__(
        self,
        f: h5py.File,
        path: Path,
        expected: Mapping[str, np.dtype[Any]],
        values_filter: str,
        *,
        lazy: bool = False,
    ) -> None:
        self.path = path
        self._file = f
        self._expected = dict(expected)
        self._values_filter = values_filter
        self._mtypes: dict[str, Any] = {}  # HDF5 memory type per dataset, for _read
        self._ds: dict[str, h5py.Dataset] = {}
        indices = [n for n in (L.STEPS, L.LIGHT_STEPS) if n in expected]
        for name in indices if lazy else expected:  # the indices come first in ``expected``
            self._open(name)
            if name in indices:  # counted as opened, before the tables their rows point into
                self._count_committed()
        self._budgets: dict[str, int | None] = {}

    def _count_committed(self) -> None:
        """Count the rows of the step indices opened so far (0 for one not opened yet)."""
        self.committed = self.length(L.STEPS)
        self.light_committed = self.length(L.LIGHT_STEPS) if L.LIGHT_STEPS in self._ds else 0

    def _open(self, name: str) -> h5py.Dataset:
        ds = self._ds[name] = require(
            open_dataset(self._file, name, self._expected[name]), str(self.path)
        )
        return ds

    def _dataset(self, name: str) -> h5py.Dataset:
        ds = self._ds.get(name)
        return ds if ds is not None else self._open(name)

    def __contains__(self, name: str) -> bool:
        return name in self._expected

    def where(self, step: int | None) -> str:
        """The file, and the step when there is one: what an error names."""
        return f"{self.path}" + ("" if step is None else f", step {step}")

    def length(self, name: str) -> int:
        """Rows of ``name`` when the file was opened or last refreshed."""
        return int(self._dataset(name).shape[0])

    def refresh(self) -> None:
        """See rows a live writer appended since the file was opened (or last refreshed).

        The step indices are refreshed first: refreshed after the tables, they could show a step
        whose rows those tables do not show yet.
        """
        indices = [n for n in (L.STEPS, L.LIGHT_STEPS) if n in self._ds]
        try:
            for name in indices:
                self._ds[name].refresh()
            self._count_committed()
            for name, ds in self._ds.items():
                if name not in indices:
                    ds.refresh()
        except H5_ERRORS as e:
            if isinstance(e, TraceError):
                raise
            raise TraceCorruptError(f"{self.path}: refreshing failed ({e}); the file is damaged.") from e
        self._budgets = {}

    def _budget(self, name: str) -> int | None:
        """Bytes of ``name`` the stored chunks can back (``None``: no bound for a compressor).

        Deflated tables expand at most ~1032x and unfiltered value heaps store every chunk they
        cover.  Checked per read, not at open, so rows past what committed steps reference (a
        writer that hit a full disk) do not make the whole file unreadable.
        """
        if name in self._budgets:
            return self._budgets[name]
        ds = self._dataset(name)
        budget: int | None = None
        if not (name in L.VALUE_HEAPS and self._values_filter not in ("none", "fletcher32")):
            chunk = (ds.chunks or (1,))[0] * self._expected[name].itemsize
            stored = self._stored(name)
            budget = stored + chunk if name in L.VALUE_HEAPS else 1100 * stored + chunk
        self._budgets[name] = budget
        return budget

    def _stored(self, name: str) -> int:
        """Bytes ``name`` takes on disk."""
        try:
            return int(self._dataset(name).id.get_storage_size())
        except H5_ERRORS as e:
            raise TraceCorruptError(
                f"{self.path}: the storage of /{name} cannot be read ({e}); the file is damaged."
            ) from e

    def rows(
        self, name: str, start: int, count: int, step: int | None = None, limit: int = L.MAX_STEP_ROWS
    ) -> np.ndarray:
        """Rows ``[start, start+count)`` of ``name``, after checking they exist and ``count`` is at
        most ``limit``; ``step`` is named in errors."""
        n = self.length(name)
        if not rows_in_range(start, count, n, limit):
            raise TraceFormatError(
                f"{self.where(step)}: rows {start}..{start + count} of /{name} "
                f"are out of range (it has {n} rows)."
            )
        if count == 0:
            return np.zeros(0, dtype=self._expected[name])
        budget = self._budget(name)
        if budget is not None and (start + count) * self._expected[name].itemsize > budget:
            raise TraceFormatError(
                f"{self.where(step)}: rows {start}..{start + count} of /{name} "
                f"lie beyond the {budget} bytes the file stores; the file is "
                "damaged or truncated."
            )
        try:
            return self._read(name, start, count)
        except H5_ERRORS as e:
            error = e
        # A read torn by a writer that holds the file (its SWMR flag is set) heals when retried;
        # the flag is looked at only then, not before every read.
        for pause in REREAD_PAUSES if swmr_writer_flag(self.path) else ():
            time.sleep(pause)
            try:
                return self._read(name, start, count)
            except H5_ERRORS as e:
                error = e
        raise TraceCorruptError(
            f"{self.where(step)}: reading rows {start}..{start + count} of /{name} failed "
            f"({error}); the file is damaged."
        ) from error

    def _read(self, name: str, start: int, count: int) -> np.ndarray:
        """Rows ``[start, start+count)`` through h5py's low-level API, with the memory type built
        once per dataset: ``Dataset[a:b]`` rebuilds the HDF5 type of a compound dtype on every call
        (about 130 us, most of the cost of reading one row)."""
        ds = self._dataset(name)
        dtype = self._expected[name]  # what open_dataset checked ds has: h5py's ds.dtype costs ~50 us
        mtype = self._mtypes.get(name)
        if mtype is None:
            mtype = self._mtypes[name] = h5t.py_create(dtype)
        out = np.empty(count, dtype=dtype)
        fspace = ds.id.get_space()
        fspace.select_hyperslab((start,), (count,))
        ds.id.read(h5s.create_simple((count,)), fspace, out, mtype=mtype)
        return out

    def sizes(self) -> list[DatasetSize]:
        """Rows, logical bytes and bytes on disk of every dataset."""
        out = []
        for name in self._expected:
            ds = self._dataset(name)
            rows = int(ds.shape[0])
            itemsize = self._expected[name].itemsize
            out.append(DatasetSize(name, rows, rows * itemsize, self._stored(name)))
        return out


def search_index(step_number: Callable[[int], int], n: int, step: int) -> int | None:
    """The row of ``step`` in a step index of ``n`` rows whose row ``i`` has step number
    ``step_number(i)`` (one read each), or None.

    Interpolation search (one or two reads for a regular schedule) alternating with bisection,
    so an irregular or hostile index still costs O(log n) reads.  Terminates on unsorted rows.
    """
    lo, hi = 0, n - 1
    if hi < 0:
        return None
    s_lo, s_hi = step_number(lo), step_number(hi)
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
        s = step_number(guess)
        if s == step:
            return guess
        if s < step:
            lo, s_lo = guess, s
        else:
            hi, s_hi = guess, s
    return None


#: ``read(table, start, count, step)``: rows of a table, checked (the step is named in errors).
Read = Callable[[str, int, int, "int | None"], np.ndarray]
#: The most bytes :func:`ranges_rows` reads at once.
SPAN_BYTES = 64 << 20


def ranges_rows(
    rows: np.ndarray, ranges: Mapping[str, tuple[str, str]], read: Read
) -> list[dict[str, np.ndarray]]:
    """For each row of an index table (``steps``, ``light_steps``), its rows of each table of
    ``ranges`` (table -> start field, count field of ``rows``).

    A table is read once over the span of every range when that span is at most
    :data:`SPAN_BYTES` (append-only tables put a run of steps' rows next to each other), and range
    by range otherwise.  An empty range reads nothing: its start means nothing.
    """
    out: list[dict[str, np.ndarray]] = [{} for _ in range(len(rows))]
    steps = rows["step"].tolist()
    for table, (start_field, count_field) in ranges.items():
        dtype = L.TABLES[table][0]
        spans = list(zip(rows[start_field].tolist(), rows[count_field].tolist(), strict=True))
        used = [(s, c) for s, c in spans if c]
        lo = min((s for s, _ in used), default=0)
        hi = max((s + c for s, c in used), default=0)
        block = None
        if used and (hi - lo) * dtype.itemsize <= SPAN_BYTES:
            block = read(table, lo, hi - lo, None)
        for k, (start, count) in enumerate(spans):
            if not count:
                out[k][table] = np.zeros(0, dtype=dtype)
            elif block is not None:
                out[k][table] = block[start - lo : start - lo + count]
            else:
                out[k][table] = read(table, start, count, steps[k])
    return out
