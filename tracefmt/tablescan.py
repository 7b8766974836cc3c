"""Bulk, columnar reads of a run: many steps' ops, tensors, statistics, op timings, events, scalars
and light rows as numpy columns, for exports and plots over whole runs.

:func:`tracefmt.open` gives :class:`~tracefmt.Step` objects, a Python object per op and tensor:
right for looking at a step, too slow for a run (100,000 steps of 1,000 ops are 10^8 objects).
:class:`RankScan` reads one rank's steps in batches instead and gives each batch as tables of
columns (:class:`ColumnTable`), built the way the trace stores them: each graph is decoded once
(with the reader's checks) and its rows are repeated for the steps that use it by numpy gathers;
a batch's rows of each per-step table are read in one span.  Strings come resolved (as codes into
labels, :class:`Labels`), missing values masked (:class:`Masked`), lists ragged (:class:`Ragged`).

The tables and columns are those of the Parquet export, described in ``spec/parquet.md``
(:data:`TABLES`); a batch never holds steps of two step blocks (``step // block_steps``), the
export's partitions.  Full steps come first, then light steps (format 1.4).

Example::

    with tracefmt.open("runs/exp1") as trace:
        scan = RankScan(trace, rank=0, steps=range(100, 200))
        for batch in scan.batches():
            stats = batch.tables.get("stats")
            if stats is not None:
                norm = stats.columns["norm"]        # Masked: norm.values where norm.valid
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from tracefmt import _layout as L
from tracefmt._ranges import checked_graph_index
from tracefmt._scanfull import FullScanner
from tracefmt._scanlight import light_tables
from tracefmt._scantypes import Column, ColumnTable, LabelPool, Labels, Masked, Ragged
from tracefmt.errors import TraceError
from tracefmt.reader import Trace

__all__ = [
    "DEFAULT_BATCH_ROWS",
    "DEFAULT_BLOCK_STEPS",
    "FULL_TABLES",
    "LIGHT_TABLES",
    "TABLES",
    "Column",
    "ColumnTable",
    "Labels",
    "Masked",
    "Ragged",
    "RankScan",
    "ScanBatch",
    "count_steps",
]

#: Every table a scan gives, in the order of spec/parquet.md.
TABLES = ("steps", "ops", "tensors", "stats", "op_timings", "events", "scalars", "light_stats")
#: The tables of a batch of full steps, and of a batch of light steps.
FULL_TABLES = ("steps", "ops", "tensors", "stats", "op_timings", "events", "scalars")
LIGHT_TABLES = ("steps", "light_stats", "events", "scalars")
#: Steps per step block (the export's ``step_block`` partition): block ``b`` holds steps
#: ``b * 10000`` to ``b * 10000 + 9999``.
DEFAULT_BLOCK_STEPS = 10_000
#: About how many rows (of all tables together) a batch holds; a step larger than that is a
#: batch of its own.
DEFAULT_BATCH_ROWS = 1 << 20


@dataclass(frozen=True)
class ScanBatch:
    """Consecutive steps of one kind (``"full"`` or ``"light"``) of one rank, all in step block
    ``block``: their :data:`FULL_TABLES` or :data:`LIGHT_TABLES`."""

    rank: int
    kind: str
    block: int
    steps: int
    tables: Mapping[str, ColumnTable]


def _selected(step_numbers: np.ndarray, steps: range | None) -> np.ndarray:
    """Rows of a step index whose step is in ``steps`` (all rows for None)."""
    if steps is None:
        return np.arange(len(step_numbers), dtype=np.int64)
    inside = (step_numbers >= steps.start) & (step_numbers < steps.stop)
    return np.flatnonzero(inside).astype(np.int64)


def _split(
    step_numbers: np.ndarray, weights: np.ndarray, block_steps: int, batch_rows: int
) -> list[tuple[int, int, int]]:
    """``(begin, end, block)`` of each batch of the selected rows: a step block split where the
    rows' ``weights`` add up past ``batch_rows``."""
    n = len(step_numbers)
    if n == 0:
        return []
    blocks = step_numbers // block_steps
    bounds = [0, *(np.flatnonzero(np.diff(blocks)) + 1).tolist(), n]
    out: list[tuple[int, int, int]] = []
    for a, b in itertools.pairwise(bounds):
        chunk = (np.cumsum(weights[a:b]) - 1) // batch_rows
        cuts = [a, *(np.flatnonzero(np.diff(chunk)) + 1 + a).tolist(), b]
        out.extend((c, d, int(blocks[a])) for c, d in itertools.pairwise(cuts))
    return out


def count_steps(trace: Trace, rank: int | None = None, steps: range | None = None) -> tuple[int, int]:
    """How many full and light steps of ``rank`` are in ``steps`` (default all): what a
    :class:`RankScan` would give, counted without keeping the step indices (for a progress
    total over many ranks before scanning them one at a time)."""
    rf = trace.rank_file(rank)
    if steps is None:
        return rf.num_steps(), rf.num_light_steps()
    full = len(_selected(rf.step_rows()["step"].astype(np.int64), steps))
    return full, len(_selected(rf.light_rows()["step"].astype(np.int64), steps))


class RankScan:
    """One rank's steps (``steps``: a range of step numbers, default all), scanned in batches.

    Opening reads the rank's step indices and graph table; :attr:`full_steps` and
    :attr:`light_steps` count what :meth:`batches` will give.
    """

    def __init__(
        self,
        trace: Trace,
        rank: int | None = None,
        *,
        steps: range | None = None,
        block_steps: int = DEFAULT_BLOCK_STEPS,
        batch_rows: int = DEFAULT_BATCH_ROWS,
    ) -> None:
        if block_steps < 1 or batch_rows < 1:
            raise TraceError(
                f"block_steps and batch_rows must be at least 1, not {block_steps} and {batch_rows}."
            )
        if steps is not None and steps.step != 1:
            raise TraceError(f"A step selection is a range of consecutive steps, not {steps}.")
        rf = self._rf = trace.rank_file(rank)
        self.rank = rf.rank
        self.path = rf.path
        #: The rank file's format version, ``"MAJOR.MINOR"``.
        self.format_version = f"{rf.version.major}.{rf.version.minor}"
        self._block_steps, self._batch_rows = block_steps, batch_rows
        self._index = rf.step_rows()
        self._graphs = rf._rows(L.GRAPHS, 0, rf.length(L.GRAPHS))
        self._full = _selected(self._index["step"].astype(np.int64), steps)
        self._graph_index = checked_graph_index(rf, self._index[self._full], len(self._graphs))
        self._light_index = rf.light_rows()
        self._light = _selected(self._light_index["step"].astype(np.int64), steps)

    @property
    def full_steps(self) -> int:
        """Full steps selected (rows of ``steps``)."""
        return len(self._full)

    @property
    def light_steps(self) -> int:
        """Light steps selected (rows of ``light_steps``; none before format 1.4)."""
        return len(self._light)

    def batches(self) -> Iterator[ScanBatch]:
        """The selected full steps in batches, then the light steps, in step-index order."""
        pool = LabelPool(self._rf.string)
        rows = self._index[self._full]
        g = self._graph_index
        weights = (
            2 * (self._graphs["op_count"][g].astype(np.int64) + self._graphs["tensor_count"][g])
            + rows["event_count"]
            + rows["scalar_count"]
            + 1
        )
        full = FullScanner(self._rf, pool, self._graphs)
        split = _split(rows["step"].astype(np.int64), weights, self._block_steps, self._batch_rows)
        for a, b, block in split:
            tables = full.tables(rows[a:b], self._full[a:b])
            yield ScanBatch(self.rank, "full", block, b - a, tables)
        light = self._light_index[self._light]
        weights = (
            light["stats_count"].astype(np.int64) + light["event_count"] + light["scalar_count"] + 1
        )
        for a, b, block in _split(
            light["step"].astype(np.int64), weights, self._block_steps, self._batch_rows
        ):
            yield ScanBatch(self.rank, "light", block, b - a, light_tables(self._rf, pool, light[a:b]))
