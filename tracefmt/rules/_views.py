"""What the validator's rules read, as plain values: a committed step's reference and one graph's
rows, named.

:class:`~tracefmt.rules._context.FileContext` builds these from a rank file; the rules use them
without touching HDF5.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from tracefmt._primitives import Problem, tensor_dims
from tracefmt._rows import EdgeRow, OpRow, TensorRow, named


class StringRef(NamedTuple):
    """A string reference, as TF-STR-001 and TF-STR-002 check it: where it is (table, row, step
    or None, field), the string id, and whether the string is required."""

    table: str
    row: int
    step: int | None
    field: str
    sid: int
    required: bool


@dataclass(frozen=True, slots=True)
class Span:
    """A range of rows of a table: ``[start, start + count)``."""

    start: int
    count: int


@dataclass(frozen=True)
class StepRef:
    """One committed step: its row in ``steps`` and the fields rules use.

    ``overrides`` are the step's ranges of ``op_attrs`` and ``tensor_offsets`` (from its
    ``step_overrides`` row), by table; None in a file older than 1.1, or when the row is missing
    (TF-OVERRIDE-001 reports that).  ``duration`` is the step's, in seconds (NaN: unknown).
    """

    row: int
    step: int
    graph: int
    flags: int
    ranges: dict[str, Span]
    overrides: dict[str, Span] | None = None
    duration: float = float("nan")


class GraphView:
    """One graph's rows (graph-local), named, with shapes decoded where its dims are valid."""

    def __init__(
        self, index: int, ops: np.ndarray, edges: np.ndarray, tensors: np.ndarray, dims: np.ndarray
    ) -> None:
        self.index = index
        self.ops, self.edges, self.tensors, self.dims = ops, edges, tensors, dims
        self.n_ops, self.n_edges = len(ops), len(edges)
        self.n_tensors, self.n_dims = len(tensors), len(dims)
        self.op_list: list[OpRow] = named(ops, OpRow)
        self.tensor_list: list[TensorRow] = named(tensors, TensorRow)
        self.edge_list: list[EdgeRow] = named(edges, EdgeRow)

    @functools.cached_property
    def shapes(self) -> list[tuple[int, ...] | None]:
        """Each tensor's shape, or None where its dims are invalid (TF-TENSOR-002 reports it)."""
        dims = self.dims.tolist()
        out: list[tuple[int, ...] | None] = []
        for j, t in enumerate(self.tensor_list):
            decoded = tensor_dims(j, t, dims)
            out.append(None if isinstance(decoded, Problem) else decoded.shape)
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
        op = self.op_list[i]
        start, count = (op.out_start, op.out_count) if outputs else (op.in_start, op.in_count)
        if start + count > self.n_edges:
            return None
        tensors = [e.tensor for e in self.edge_list[start : start + count]]
        return tensors if all(t < self.n_tensors for t in tensors) else None
