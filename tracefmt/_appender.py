"""The datasets of a rank file being written, appended to row by row through h5py's low-level API.

:class:`~tracefmt.writer.TraceWriter` creates each dataset here and appends every row through
:meth:`Appender.append`; it keeps the count of rows written per dataset, so no append asks HDF5
for an extent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np
from h5py import h5s, h5t


class Appender:
    """The append-only, 1-D datasets of the open file ``f``."""

    def __init__(self, f: h5py.File) -> None:
        self._file = f
        self._ds: dict[str, h5py.Dataset] = {}
        self._mtypes: dict[str, Any] = {}  # HDF5 memory type per dataset, for append
        self._len: dict[str, int] = {}

    def create(self, name: str, dtype: np.dtype[Any], rows: int, kwargs: Mapping[str, Any]) -> None:
        """An empty dataset ``name`` of ``dtype``, extendable, in chunks of ``rows`` rows, with the
        h5py filter arguments ``kwargs``."""
        self._ds[name] = self._file.create_dataset(
            name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(rows,), **kwargs
        )
        self._len[name] = 0

    def dtype(self, name: str) -> np.dtype[Any]:
        """The row dtype of ``name``."""
        dtype: np.dtype[Any] = self._ds[name].dtype
        return dtype

    def length(self, name: str) -> int:
        """Rows written to ``name`` so far."""
        return self._len[name]

    def append(self, name: str, rows: np.ndarray) -> int:
        """Append ``rows`` to dataset ``name``; return the index of the first appended row."""
        start = self._len[name]
        n = len(rows)
        if n:
            ds = self._ds[name]
            ds.id.set_extent((start + n,))
            if rows.dtype == ds.dtype and rows.flags.c_contiguous:
                # h5py's ``ds[a:b] = rows`` rebuilds the HDF5 type of a compound dtype on every
                # call (about 130 us); build it once per dataset and write through the low level.
                mtype = self._mtypes.get(name)
                if mtype is None:
                    mtype = self._mtypes[name] = h5t.py_create(ds.dtype)
                fspace = ds.id.get_space()
                fspace.select_hyperslab((start,), (n,))
                ds.id.write(h5s.create_simple((n,)), fspace, rows, mtype=mtype)
            else:
                ds[start : start + n] = rows
            self._len[name] = start + n
        return start

    def pad_to_chunk(self, name: str) -> None:
        """Extend ``name`` to a whole number of chunks (the padding is never referenced)."""
        n = self._len[name]
        chunk = self._ds[name].chunks[0]
        if n % chunk:
            self._ds[name].id.set_extent((n + chunk - n % chunk,))
            self._len[name] = n + chunk - n % chunk

    def lock(self) -> None:
        """Lock every dataset handle, so h5py never releases them (see ``TraceWriter._abandon``)."""
        for ds in self._ds.values():
            ds.id.locked = True
