"""Bulk reads behind :mod:`tracefmt.columns`: a rank's step index whole, then the per-step tables
(``stats``, ``light_stats``, ``scalars``, ``events``, ``hists``) in blocks of about a million rows,
each block one read of a span (append-only tables put a run of steps' rows next to each other).

Every range a step index row names is checked against its table before anything is read (a
hostile range is a :class:`~tracefmt.errors.TraceFormatError` naming the file and step, as with
the reader, and a block never holds more rows than :data:`BLOCK_ROWS` beyond one step's); rows go
through :class:`~tracefmt._rankfile.RankFile` and so through the reader's checked reads.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from tracefmt import _layout as L
from tracefmt._rankfile import RankFile
from tracefmt.errors import TraceFormatError
from tracefmt.progress import ProgressFn

__all__ = [
    "BLOCK_ROWS",
    "Block",
    "check_ranges",
    "index_blocks",
    "lookup",
    "rf_dtype",
    "segment_index",
    "strings_of",
]

#: About how many rows of a per-step table one block reads (a step with more is a block alone).
BLOCK_ROWS = 1 << 20
#: A block's span is read at once when it holds at most this many rows more than its ranges need.
SPAN_SLACK_ROWS = 1 << 16


def segment_index(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + c) for s, c in zip(starts, counts)])``, without the loop."""
    counts = counts.astype(np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    return np.repeat(starts.astype(np.int64) - (ends - counts), counts) + np.arange(total)


def check_ranges(rf: RankFile, table: str, index: np.ndarray, start: str, count: str) -> None:
    """Raise unless each non-empty range ``index[start], index[count]`` lies inside ``table``."""
    n = rf.length(table)
    counts = index[count].astype(np.int64)
    starts = index[start].astype(np.uint64)
    # uint64: a start near 2**64 must not wrap to a small number when the count is added
    bad = (counts > 0) & (
        (counts > L.MAX_STEP_ROWS)
        | (starts > np.uint64(n))
        | (starts + counts.astype(np.uint64) > np.uint64(n))
    )
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        s, c = int(index[start][k]), int(index[count][k])
        raise TraceFormatError(
            f"{rf.path}, step {int(index['step'][k])}: rows {s}..{s + c} of /{table} are out of "
            f"range (it has {n} rows)."
        )


class Block(NamedTuple):
    """Index rows ``[begin, end)`` and their rows of a table: ``rows[offsets[k] + j]`` is row
    ``j`` of the range of the block's ``k``-th index row; :meth:`flat` gives them range after
    range, each with its index row."""

    begin: int
    end: int
    rows: np.ndarray
    offsets: np.ndarray

    def flat(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every row of the block's ranges (``counts``: their lengths), one range after the
        other, and each one's index row (0-based in the block)."""
        take = segment_index(self.offsets, counts)
        return self.rows[take], np.repeat(np.arange(len(counts)), counts.astype(np.int64))


def _read_block(
    rf: RankFile, table: str, index: np.ndarray, start: str, count: str
) -> tuple[np.ndarray, np.ndarray]:
    counts = index[count].astype(np.int64)
    used = np.flatnonzero(counts)
    offsets = np.zeros(len(index), dtype=np.int64)
    if not len(used):
        return np.zeros(0, dtype=rf_dtype(rf, table)), offsets
    s = index[start][used].astype(np.int64)
    c = counts[used]
    lo, hi, need = int(s.min()), int((s + c).max()), int(c.sum())
    if hi - lo <= 2 * need + SPAN_SLACK_ROWS:
        offsets[used] = s - lo
        return rf._rows(table, lo, hi - lo, None, max(hi - lo, 1)), offsets
    steps = index["step"][used].tolist()
    parts = [rf._rows(table, a, n, st) for a, n, st in zip(s.tolist(), c.tolist(), steps, strict=True)]
    offsets[used] = np.cumsum(c) - c
    return np.concatenate(parts), offsets


def rf_dtype(rf: RankFile, table: str) -> np.dtype[np.void]:
    """The row dtype of ``table`` in ``rf`` (``hists`` depends on the file's ``hist_bins``)."""
    return L.hist_dtype(max(rf.hist_bins, 1)) if table == L.HISTS else L.TABLES[table][0]


def index_blocks(
    rf: RankFile,
    table: str,
    index: np.ndarray,
    fields: tuple[str, str],
    progress: ProgressFn | None = None,
    block_rows: int = BLOCK_ROWS,
) -> Iterator[Block]:
    """The rows of ``table`` that the ranges ``fields`` (start, count) of ``index`` name, block
    by block; the ranges are checked first.  ``progress(done, total)`` counts index rows."""
    start, count = fields
    check_ranges(rf, table, index, start, count)
    counts = index[count].astype(np.int64)
    group = (np.cumsum(counts) - counts) // max(block_rows, 1)
    cuts = [0, *(np.flatnonzero(np.diff(group)) + 1).tolist(), len(index)]
    for a, b in itertools.pairwise(cuts):
        if b <= a:
            continue
        rows, offsets = _read_block(rf, table, index[a:b], start, count)
        yield Block(a, b, rows, offsets)
        if progress is not None:
            progress(b, len(index))


def strings_of(rf: RankFile, ids: np.ndarray, what: str) -> dict[int, str]:
    """The strings of the distinct string ids ``ids`` (``what`` names them in an error: a
    name, a kind, which may not be -1)."""
    out: dict[int, str] = {}
    for sid in np.unique(ids).tolist():
        text = rf.string(int(sid))
        if text is None:
            raise TraceFormatError(f"{rf.path}: a {what} has no string (string id -1).")
        out[int(sid)] = text
    return out


def lookup(table: dict[int, int], keys: np.ndarray, default: int = -1) -> np.ndarray:
    """``[table.get(k, default) for k in keys]`` for many keys and few distinct ones."""
    uniq, inverse = np.unique(keys, return_inverse=True)
    mapped = np.array([table.get(int(k), default) for k in uniq.tolist()], dtype=np.int64)
    return mapped[inverse.reshape(-1)] if len(uniq) else np.zeros(0, dtype=np.int64)
