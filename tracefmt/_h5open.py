"""Opening HDF5 files that may be damaged or still being written, without hanging or leaking
h5py's exception zoo: bounded SWMR metadata retries and torn-read detection.

Used by the reader and the validator; the HDF5 details of safe opening live here and nowhere else
(what is read once a file is open: :mod:`tracefmt._primitives`).
"""

from __future__ import annotations

import builtins
import ctypes
import os
from pathlib import Path
from typing import Any

import h5py

#: What h5py raises when HDF5 cannot decode a damaged file's structures (KeyError for an object
#: header it cannot open, RuntimeError for a bad checksum, OSError for a failed read).
H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)

# A live writer rewrites a table's last, partial chunk in place; a reader that reads it at that
# moment sees a torn chunk (fletcher32 fails).  That is transient, so a failed read is tried again
# after these pauses (seconds) before the file is called damaged.
REREAD_PAUSES = (0.001, 0.01, 0.05)


def swmr_writer_flag(path: Path) -> bool:
    """Whether the superblock (version 2 or 3, at offset 0) says a SWMR writer has the file open,
    or had it when it was killed.  Only then can a failed read be a torn one."""
    try:
        with builtins.open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return (
        len(head) == 12
        and head.startswith(b"\x89HDF\r\n\x1a\n")
        and head[8] >= 2
        and bool(head[11] & 0x04)
    )


# A reader in SWMR mode retries a metadata read that fails its checksum, assuming it caught the
# writer mid-write, sleeping 1 ns, 2 ns, 4 ns, ... between tries: HDF5's default of 100 tries makes
# one damaged byte hang the reader for ever (2**100 ns).  24 tries wait at most ~17 ms in all.
SWMR_READ_ATTEMPTS = 24


def _set_read_attempts() -> Any:
    """``H5Pset_metadata_read_attempts`` from the HDF5 library h5py uses (h5py does not wrap it)."""
    try:
        fn = ctypes.CDLL(h5py.h5p.__file__).H5Pset_metadata_read_attempts
    except (OSError, AttributeError):  # pragma: no cover - an HDF5 build without the symbol
        return None
    fn.argtypes = [ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SET_READ_ATTEMPTS = _set_read_attempts()


def open_swmr(path: Path) -> h5py.File:
    """Open ``path`` read-only in SWMR mode (a live or killed writer's file opens too), with a
    bounded number of metadata read attempts."""
    if _SET_READ_ATTEMPTS is None:  # pragma: no cover
        return h5py.File(path, "r", swmr=True)
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)  # as h5py.File makes it, plus the attempts
    fapl.set_libver_bounds(h5py.h5f.LIBVER_EARLIEST, h5py.h5f.LIBVER_LATEST)
    if _SET_READ_ATTEMPTS(fapl.id, SWMR_READ_ATTEMPTS) < 0:  # pragma: no cover
        return h5py.File(path, "r", swmr=True)
    if not path.exists():
        raise FileNotFoundError(str(path))
    fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ, fapl=fapl)
    return h5py.File(fid)
