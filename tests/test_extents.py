"""A dataset whose declared length its stored bytes cannot back is refused at open, not allocated."""

from __future__ import annotations

from pathlib import Path

import h5py
import pytest

import tracefmt
from tracefmt import TraceFormatError


@pytest.mark.parametrize("dataset", ["steps", "strings/bytes", "data/float32"])
def test_inflated_extent_is_refused(small_trace: Path, dataset: str) -> None:
    with h5py.File(small_trace, "r+") as f:
        f[dataset].resize((10**10,))
    with pytest.raises(TraceFormatError, match=f"/{dataset} declares"):
        tracefmt.open(small_trace)
