"""Open a rank file for SWMR reading without hanging on damaged metadata.

A SWMR reader retries a metadata read whose checksum fails, because a live writer may be half-way
through updating it; HDF5's default of 100 tries, with a doubling sleep between them, made a read of
a truncated trace (``f["steps"][:]``) hang for hours.  h5py does not wrap
``H5Pset_metadata_read_attempts``, so :func:`open_swmr` calls it through the HDF5 library h5py's
own extension module links (as the reader does), and allows as many tries as the reader.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path
from typing import Any

import h5py

READ_ATTEMPTS = 24  # the reader's tracefmt.reader.SWMR_READ_ATTEMPTS: ~17 ms of back-off in all


@functools.cache
def _set_read_attempts() -> Any:
    """``H5Pset_metadata_read_attempts`` of the HDF5 library h5py uses, or None."""
    try:
        fn = ctypes.CDLL(h5py.h5p.__file__).H5Pset_metadata_read_attempts
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def open_swmr(path: Path) -> h5py.File:
    """Open ``path`` read-only with SWMR access and at most :data:`READ_ATTEMPTS` metadata reads.

    Raises ``OSError`` (or another h5py error) when the file does not open, and ``RuntimeError``
    when the attempts cannot be limited: then a SWMR open of a damaged file could hang.
    """
    set_attempts = _set_read_attempts()
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_EARLIEST, h5py.h5f.LIBVER_LATEST)
    if set_attempts is None or set_attempts(fapl.id, READ_ATTEMPTS) < 0:
        raise RuntimeError("The HDF5 library h5py uses cannot limit metadata read attempts.")
    fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ,
                        fapl=fapl)
    return h5py.File(fid)
