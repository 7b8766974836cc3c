"""Shared fixtures: small synthetic traces written with the tracefmt writer."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.synth import write_synthetic


@pytest.fixture
def small_trace(tmp_path: Path) -> Path:
    """A 5-step trace with values, stats, histograms, events and scalars."""
    path = tmp_path / "small.tft.h5"
    write_synthetic(path, steps=5, hist_bins=8)
    return path
