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

from tracefmt import _ranges
from tracefmt._ranges import segment_index
from tracefmt._rankfile import RankFile
from tracefmt.errors import TraceFormatError
from tracefmt.progress import ProgressFn

__all__ = [
    "BLOCK_ROWS",
    "Block",
    "index_blocks",
    "lookup",
    "strings_of",
]

#: About how many rows of a per-step table one block reads (a step with more is a block alone).
BLOCK_ROWS = 1 << 20


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
    _ranges.check_ranges(rf, table, index[start], index[count], index["step"])  # all, up front
    counts = index[count].astype(np.int64)
    group = (np.cumsum(counts) - counts) // max(block_rows, 1)
    cuts = [0, *(np.flatnonzero(np.diff(group)) + 1).tolist(), len(index)]
    for a, b in itertools.pairwise(cuts):
        if b <= a:
            continue
        part = index[a:b]
        rows, offsets = _ranges.read_spans(rf, table, part[start], part[count], part["step"])
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
