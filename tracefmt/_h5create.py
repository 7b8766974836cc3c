"""Two things a writer needs when it creates a file: fixed-length string attributes, and renames
that survive a crash.  (The run manifest, :mod:`tracefmt.manifest`, renames the same way.)"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fixed_utf8(text: str) -> np.ndarray:
    """``text`` as a fixed-length UTF-8 string attribute value.

    Not h5py's default variable-length string: that lives in a global heap, and HDF5 2.0 hangs
    decoding a damaged one, so readers refuse variable-length attributes.
    """
    data = text.encode("utf-8")
    return np.array(data, dtype=h5py.string_dtype("utf-8", max(len(data), 1)))
