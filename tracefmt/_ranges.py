"""Span reading shared by the bulk readers (:mod:`tracefmt.tablescan`, :mod:`tracefmt.columns`):
many steps' rows of a per-step table (``stats``, ``op_stats``, ``events``, ...) read in spans,
and the checks that make that safe on a hostile file.

Every range and graph index a step index row names is checked here, on the raw unsigned values
of the file, before it is cast or used: a bad one is a :class:`~tracefmt.errors.TraceFormatError`
naming the file and the step, as with the reader.  The rows themselves go through
:class:`~tracefmt._rankfile.RankFile` and so through the reader's checked reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tracefmt import _layout as L
from tracefmt.errors import TraceFormatError

if TYPE_CHECKING:
    from tracefmt._rankfile import RankFile

__all__ = [
    "SPAN_SLACK_ROWS",
    "check_ranges",
    "checked_graph_index",
    "read_spans",
    "rf_dtype",
    "segment_index",
]

#: Ranges are read as one span when it holds at most this many rows more than they need.
SPAN_SLACK_ROWS = 1 << 16


def segment_index(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The indices ``starts[k] .. starts[k] + counts[k] - 1`` of every segment ``k``, in order:
    ``concatenate([arange(s, s + c) for s, c in zip(starts, counts)])`` without the loop."""
    counts = counts.astype(np.int64, copy=False)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    before = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=before[1:])
    return np.repeat(starts.astype(np.int64, copy=False) - before, counts) + np.arange(total)


def rf_dtype(rf: RankFile, table: str) -> np.dtype[np.void]:
    """The row dtype of ``table`` in ``rf`` (``hists`` depends on the file's ``hist_bins``)."""
    return L.hist_dtype(max(rf.hist_bins, 1)) if table == L.HISTS else L.TABLES[table][0]


def check_ranges(
    rf: RankFile, table: str, starts: np.ndarray, counts: np.ndarray, steps: np.ndarray
) -> None:
    """Raise unless each non-empty range ``starts[k], counts[k]`` (of step ``steps[k]``) lies
    inside ``table`` and holds at most :data:`~tracefmt._layout.MAX_STEP_ROWS` rows."""
    n = rf.length(table)
    c = counts.astype(np.uint64)
    s = starts.astype(np.uint64)
    # compared as uint64: a start near 2**64 must not wrap to a small number when the count is added
    bad = (c > 0) & ((c > np.uint64(L.MAX_STEP_ROWS)) | (s > np.uint64(n)) | (s + c > np.uint64(n)))
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        a, m = int(starts[k]), int(counts[k])
        raise TraceFormatError(
            f"{rf.path}, step {int(steps[k])}: rows {a}..{a + m} of /{table} are out of range "
            f"(it has {n} rows)."
        )


def checked_graph_index(rf: RankFile, rows: np.ndarray, num_graphs: int) -> np.ndarray:
    """The ``graph`` field of step index ``rows`` as int64 rows of the graphs table, after
    checking each raw (uint64) value is below ``num_graphs``: a value of 2**63 or more must not
    turn negative and pass."""
    g = rows["graph"].astype(np.uint64)
    bad = np.flatnonzero(g >= np.uint64(num_graphs))
    if len(bad):
        k = int(bad[0])
        raise TraceFormatError(
            f"{rf.path}, step {int(rows['step'][k])}: graph {int(g[k])} is out of range (the file "
            f"has {num_graphs} graphs)."
        )
    return g.astype(np.int64)


def read_spans(
    rf: RankFile, table: str, starts: np.ndarray, counts: np.ndarray, steps: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``table`` in ranges ``starts[k], counts[k]`` (of steps ``steps``, named in
    errors), checked first (:func:`check_ranges`), and where each range begins in them: range
    ``k`` is ``rows[offsets[k] : offsets[k] + counts[k]]``.  A span of the table is read once
    where the ranges fill most of it (append-only tables put a run of steps' rows next to each
    other), else range by range."""
    check_ranges(rf, table, starts, counts, steps)
    c_all = counts.astype(np.int64)
    used = np.flatnonzero(c_all)
    offsets = np.zeros(len(counts), dtype=np.int64)
    if not len(used):
        return np.zeros(0, dtype=rf_dtype(rf, table)), offsets
    s, c = starts[used].astype(np.int64), c_all[used]  # checked: below the table's length
    lo, hi, need = int(s.min()), int((s + c).max()), int(c.sum())
    if hi - lo <= 2 * need + SPAN_SLACK_ROWS:
        offsets[used] = s - lo
        return rf._rows(table, lo, hi - lo, None, max(hi - lo, 1)), offsets
    parts = [
        rf._rows(table, a, n, int(steps[k]))
        for k, a, n in zip(used.tolist(), s.tolist(), c.tolist(), strict=True)
    ]
    offsets[used] = np.cumsum(c) - c
    return np.concatenate(parts), offsets
