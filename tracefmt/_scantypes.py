"""The column types of :mod:`tracefmt.tablescan` and the numpy gathers that fill them.

A scanned table is a :class:`ColumnTable`: named columns of equal length, each a plain numpy array
(numbers or booleans, no missing values), a :class:`Masked` array (numbers with missing values), a
:class:`Labels` column (strings as codes into a small tuple of labels, the way a Parquet dictionary
page or a pandas categorical stores them) or a :class:`Ragged` column (a list per row).  They hold
no Python object per row, so a million rows cost a few numpy arrays.

:class:`LabelPool` gives the strings of one rank file codes (its interned strings, op attribute
texts, enum labels), so that columns built for different graphs and steps can be gathered into one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from tracefmt._ranges import segment_index

__all__ = [
    "Column",
    "ColumnTable",
    "LabelPool",
    "Labels",
    "Masked",
    "Ragged",
    "gather_ragged",
]


@dataclass(frozen=True, slots=True)
class Masked:
    """Numbers with missing values: row ``i`` is ``values[i]`` where ``valid[i]``, else missing."""

    values: np.ndarray
    valid: np.ndarray

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True, slots=True)
class Labels:
    """Strings as codes: row ``i`` is ``labels[codes[i]]``, missing where ``codes[i]`` is -1."""

    codes: np.ndarray  # int32
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.codes)

    def strings(self) -> list[str | None]:
        """The column as Python strings (None where missing): for tests and small tables."""
        return [None if c < 0 else self.labels[c] for c in self.codes.tolist()]


@dataclass(frozen=True, slots=True)
class Ragged:
    """A list per row: row ``i`` is ``values[offsets[i]:offsets[i + 1]]`` (``offsets`` int64,
    one longer than the column)."""

    offsets: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @classmethod
    def from_lists(cls, lists: Iterable[Iterable[int]], dtype: type[np.generic]) -> Ragged:
        """A ragged column of ``lists`` (a graph's op inputs, its tensors' shapes)."""
        items = [list(x) for x in lists]
        lengths = np.fromiter((len(x) for x in items), dtype=np.int64, count=len(items))
        offsets = np.zeros(len(items) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = np.fromiter((v for x in items for v in x), dtype=dtype, count=int(offsets[-1]))
        return cls(offsets, values)


Column = np.ndarray | Masked | Labels | Ragged


@dataclass(frozen=True)
class ColumnTable:
    """One table's rows of one scanned batch: ``columns`` in their documented order
    (spec/parquet.md), every one ``rows`` long."""

    name: str
    rows: int
    columns: Mapping[str, Column] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for column, values in self.columns.items():
            if len(values) != self.rows:
                raise ValueError(
                    f"Column {column!r} of table {self.name!r} has {len(values)} rows, not {self.rows}."
                )


class LabelPool:
    """Codes for the strings of one scan: each distinct string gets one code, for as long as the
    pool lives, so columns built apart (per graph, per batch) gather into one column.

    ``resolve(sid)`` turns a string id of the file into its text (raising for a bad id); strings
    from elsewhere (op attributes re-encoded, enum labels) are added by :meth:`code`.
    """

    def __init__(self, resolve: Callable[[int], str | None]) -> None:
        self._resolve = resolve
        self._codes: dict[str, int] = {}
        self._labels: list[str] = []
        self._sid_codes: dict[int, int] = {}

    def code(self, text: str | None) -> int:
        """The code of ``text`` (-1 for None)."""
        if text is None:
            return -1
        code = self._codes.get(text)
        if code is None:
            code = self._codes[text] = len(self._labels)
            self._labels.append(text)
        return code

    def sid_code(self, sid: int, convert: Callable[[str], str] | None = None) -> int:
        """The code of string id ``sid`` of the file (-1 for the id -1), its text passed through
        ``convert`` first when given (callers use one ``convert`` per kind of string id)."""
        if sid < 0:
            return -1
        key = sid if convert is None else -2 - sid  # a converted text is cached apart
        code = self._sid_codes.get(key)
        if code is None:
            text = self._resolve(sid)
            code = self._sid_codes[key] = self.code(
                None if text is None else (text if convert is None else convert(text))
            )
        return code

    def sid_codes(self, sids: np.ndarray, convert: Callable[[str], str] | None = None) -> np.ndarray:
        """:meth:`sid_code` of every id of ``sids``, each distinct id resolved once."""
        if not len(sids):
            return np.zeros(0, dtype=np.int32)
        unique, inverse = np.unique(sids, return_inverse=True)
        codes = np.array([self.sid_code(int(s), convert) for s in unique.tolist()], dtype=np.int32)
        return codes[inverse.reshape(-1)]

    def labels(self, codes: np.ndarray) -> Labels:
        """A :class:`Labels` column of pool ``codes``, its labels only those it uses."""
        if not len(codes):
            return Labels(np.zeros(0, dtype=np.int32), ())
        unique, inverse = np.unique(codes, return_inverse=True)
        used = unique[unique >= 0].tolist()
        local = inverse.reshape(-1).astype(np.int32) - (1 if unique[0] < 0 else 0)
        return Labels(
            np.where(codes < 0, -1, local).astype(np.int32), tuple(self._labels[c] for c in used)
        )


def gather_ragged(column: Ragged, index: np.ndarray) -> Ragged:
    """The rows ``index`` of ``column``, in that order (rows may repeat)."""
    lengths = np.diff(column.offsets)[index]
    offsets = np.zeros(len(index) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Ragged(offsets, column.values[segment_index(column.offsets[index], lengths)])
