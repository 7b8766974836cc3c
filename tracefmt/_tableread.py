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
from collections.abc import Mapping
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
        for name in [L.STEPS] if lazy else expected:
            self._open(name)
            if name == L.STEPS:
                self.committed = self.length(name)
        self._budgets: dict[str, int | None] = {}

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

        The step index is refreshed first: refreshed after the tables, it could show a step whose
        rows those tables do not show yet.
        """
        try:
            self._ds[L.STEPS].refresh()
            self.committed = self.length(L.STEPS)
            for name, ds in self._ds.items():
                if name != L.STEPS:
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
