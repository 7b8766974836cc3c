"""What the validator's rules read, as plain values: the range tables of steps, overrides and
graphs, attribute values decoded defensively, a committed step's reference and one graph's rows.

:class:`~tracefmt.rules._context.FileContext` builds these from a rank file; the rules use them
without touching HDF5.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

from tracefmt import _layout as L

#: Per-step ranges: table path -> (start field, count field) of a ``steps`` row.
STEP_RANGES: dict[str, tuple[str, str]] = {
    L.STATS: ("stats_start", "stats_count"),
    L.OP_STATS: ("op_stats_start", "op_stats_count"),
    L.DATA_INDEX: ("data_start", "data_count"),
    L.HISTS: ("hist_start", "hist_count"),
    L.EVENTS: ("event_start", "event_count"),
    L.SCALARS: ("scalar_start", "scalar_count"),
}
#: A step's override ranges (format 1.1): table path -> (start field, count field) of its
#: ``step_overrides`` row.
OVERRIDE_RANGES: dict[str, tuple[str, str]] = {
    L.OP_ATTRS: ("op_attrs_start", "op_attrs_count"),
    L.TENSOR_OFFSETS: ("tensor_offset_start", "tensor_offset_count"),
}
#: A graph's ranges: table path -> (start field, count field, largest count).
GRAPH_RANGES: dict[str, tuple[str, str, int]] = {
    L.OPS: ("op_start", "op_count", L.MAX_GRAPH_OPS),
    L.EDGES: ("edge_start", "edge_count", L.MAX_STEP_ROWS),
    L.TENSORS: ("tensor_start", "tensor_count", L.MAX_STEP_ROWS),
    L.DIMS: ("dim_start", "dim_count", L.MAX_STEP_ROWS),
}
_VERSION = re.compile(r"(\d{1,6})\.(\d{1,6})")


def text_value(value: object) -> str | None:
    """An attribute's value as text, or None when it is not a (UTF-8) string."""
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return str(value) if isinstance(value, str) else None


def int_value(value: object) -> int | None:
    """An attribute's value as an integer, or None when it is not an integer scalar."""
    if isinstance(value, (bool, np.bool_)):
        return None
    return int(value) if isinstance(value, (int, np.integer)) else None


def parse_version(text: str) -> tuple[int, int] | None:
    """``"1.0"`` -> ``(1, 0)``; None when ``text`` is not ``MAJOR.MINOR``."""
    m = _VERSION.fullmatch(text)
    return None if m is None else (int(m.group(1)), int(m.group(2)))


@dataclass(frozen=True)
class StepRef:
    """One committed step: its row in ``steps`` and the fields rules use.

    ``overrides`` are the step's ranges of ``op_attrs`` and ``tensor_offsets`` (from its
    ``step_overrides`` row), by table; None in a file older than 1.1, or when the row is missing
    (TF-OVERRIDE-001 reports that).
    """

    row: int
    step: int
    graph: int
    flags: int
    ranges: dict[str, tuple[int, int]]
    overrides: dict[str, tuple[int, int]] | None = None


class GraphView:
    """One graph's rows (graph-local), with shapes decoded where its dims are valid."""

    def __init__(
        self, index: int, ops: np.ndarray, edges: np.ndarray, tensors: np.ndarray, dims: np.ndarray
    ) -> None:
        self.index = index
        self.ops, self.edges, self.tensors, self.dims = ops, edges, tensors, dims
        self.n_ops, self.n_edges = len(ops), len(edges)
        self.n_tensors, self.n_dims = len(tensors), len(dims)
        self.op_list: list[tuple[int, ...]] = ops.tolist()
        self.tensor_list: list[tuple[int, ...]] = tensors.tolist()
        self.edge_list: list[tuple[int, int, int]] = edges.tolist()

    @functools.cached_property
    def shapes(self) -> list[tuple[int, ...] | None]:
        """Each tensor's shape, or None where its dims are invalid (TF-TENSOR-002 reports it)."""
        dims = self.dims.tolist()
        out: list[tuple[int, ...] | None] = []
        for row in self.tensor_list:
            ndim, d0 = int(row[2]), int(row[3])
            shape = tuple(dims[d0 : d0 + ndim])
            ok = ndim <= L.MAX_NDIM and d0 + 2 * ndim <= self.n_dims and min(shape, default=0) >= 0
            out.append(shape if ok else None)
        return out

    @functools.cached_property
    def numel(self) -> list[int | None]:
        """Each tensor's number of elements (exact Python ints), None where the shape is invalid."""
        out: list[int | None] = []
        for shape in self.shapes:
            if shape is None:
                out.append(None)
                continue
            n = 1
            for d in shape:
                n *= d
            out.append(n)
        return out

    @functools.cached_property
    def numel_array(self) -> np.ndarray:
        """:attr:`numel` as float64 (inf where unknown or beyond 2**64), for vectorized checks."""
        return np.array(
            [np.inf if n is None or n > 1 << 64 else float(n) for n in self.numel], dtype=np.float64
        )

    def op_tensors(self, i: int, outputs: bool) -> list[int] | None:
        """Tensors of op ``i``'s inputs (or outputs); None when the range or a tensor is invalid."""
        row = self.op_list[i]
        start, count = (row[7], row[8]) if outputs else (row[5], row[6])
        if start + count > self.n_edges:
            return None
        tensors = [e[0] for e in self.edge_list[start : start + count]]
        return tensors if all(t < self.n_tensors for t in tensors) else None
