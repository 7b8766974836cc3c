"""tracefmt._ranges, the span reading both bulk readers share (tablescan for the exports,
columns for the plots): a hostile graph index or range in a step row is refused by both with a
TraceFormatError naming the file and the step, before it is cast or used."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

import tracefmt
from tests.synth import mlp_graph, synthetic_step
from tracefmt import TraceWriter
from tracefmt._ranges import segment_index
from tracefmt.columns import read_histograms, read_series
from tracefmt.tablescan import RankScan

HIST_BINS = 4


def _scan(trace: tracefmt.Trace) -> None:
    for _ in RankScan(trace).batches():
        pass


READERS: dict[str, Callable[[tracefmt.Trace], object]] = {
    "tablescan": _scan,
    "columns.read_series": lambda t: read_series(t, "norm"),
    "columns.read_histograms": read_histograms,
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six full steps with statistics and histograms."""
    path = tmp_path_factory.mktemp("ranges") / "rank-00000.tft.h5"
    rng = np.random.default_rng(5)
    with TraceWriter(path, hist_bins=HIST_BINS) as w:
        for s in range(6):
            w.write_step(synthetic_step(s, mlp_graph(), rng, hist_bins=HIST_BINS, with_values=False))
        w.flush()
    return path


def _damaged(run: Path, tmp_path: Path, field: str, row: int, value: int) -> Path:
    bad = tmp_path / "bad.tft.h5"
    bad.write_bytes(run.read_bytes())
    with h5py.File(bad, "r+") as f:
        rows = f["steps"][...]
        rows[field][row] = value
        f["steps"][...] = rows
    return bad


def test_the_readers_read_the_intact_file(run: Path) -> None:
    with tracefmt.open(run) as trace:
        for read in READERS.values():
            read(trace)


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("graph", [2**63, 2**63 + 1, 2**64 - 1])
def test_a_uint64_graph_index_past_int64_is_refused_naming_the_path_and_step(
    run: Path, tmp_path: Path, reader: str, graph: int
) -> None:
    bad = _damaged(run, tmp_path, "graph", 2, graph)
    with tracefmt.open(bad) as trace, pytest.raises(tracefmt.TraceFormatError) as e:
        READERS[reader](trace)
    message = str(e.value)
    assert str(bad) in message
    assert f"step 2: graph {graph} is out of range (the file has 1 graphs)" in message


@pytest.mark.parametrize(
    ("reader", "field", "table"),
    [
        ("tablescan", "stats_start", "stats"),
        ("tablescan", "op_stats_start", "op_stats"),
        ("columns.read_series", "stats_start", "stats"),
        ("columns.read_histograms", "hist_start", "hists"),
    ],
)
@pytest.mark.parametrize("start", [10**12, 2**64 - 1])
def test_a_range_past_its_table_is_refused_naming_the_step(
    run: Path, tmp_path: Path, reader: str, field: str, table: str, start: int
) -> None:
    bad = _damaged(run, tmp_path, field, 3, start)
    with tracefmt.open(bad) as trace, pytest.raises(tracefmt.TraceFormatError) as e:
        READERS[reader](trace)
    message = str(e.value)
    assert f"{bad}, step 3: rows {start}.." in message
    assert f"of /{table} are out of range" in message


def test_segment_index_equals_the_loop() -> None:
    rng = np.random.default_rng(0)
    starts = rng.integers(0, 1000, 50).astype(np.uint64)
    counts = rng.integers(0, 5, 50).astype(np.uint32)
    loop = [np.arange(int(s), int(s) + int(c)) for s, c in zip(starts, counts, strict=True)]
    assert segment_index(starts, counts).tolist() == np.concatenate(loop).tolist()
    assert segment_index(starts[:0], counts[:0]).tolist() == []
