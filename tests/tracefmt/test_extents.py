"""A declared length the stored bytes cannot back is refused when read, never allocated; rows no
committed step references (a writer that hit a full disk) do not make the file unreadable."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

import tracefmt
from tracefmt import TraceFormatError


def test_inflated_step_index_is_refused_on_read(small_trace: Path) -> None:
    with h5py.File(small_trace, "r+") as f:
        f["steps"].resize((10**7,))  # under the row limit: the stored-bytes check refuses it
    with tracefmt.open(small_trace) as trace, pytest.raises(TraceFormatError, match="beyond"):
        trace.steps()


def test_inflated_string_heap_is_refused_on_read(small_trace: Path) -> None:
    with h5py.File(small_trace, "r+") as f:
        f["strings/bytes"].resize((10**8,))
    with tracefmt.open(small_trace) as trace, pytest.raises(TraceFormatError, match="beyond"):
        trace.step(1)


def test_values_pointing_past_the_stored_heap_are_refused(small_trace: Path) -> None:
    with h5py.File(small_trace, "r+") as f:
        heap = f["data/float32"]
        heap.resize((10**10,))
        index = f["data_index"]
        row = index[0]
        row["offset"] = 10**10 - int(row["count"])
        index[0] = row
    with tracefmt.open(small_trace) as trace:
        tensor = trace.step(0).tensors[int(row["tensor"])]
        with pytest.raises(TraceFormatError, match="beyond"):
            tensor.values()


def test_unreferenced_rows_past_the_stored_bytes_do_not_block_reading(small_trace: Path) -> None:
    with h5py.File(small_trace, "r+") as f:
        f["data/float32"].resize((10**10,))  # as if a full disk stopped the writer mid-append
    with tracefmt.open(small_trace) as trace:
        step = trace.step(4)
        assert all(t.values().size == int(np.prod(t.shape)) for t in step.tensors if t.has_values)
