"""A graph's ops and tensors as columns, built once and repeated for every step that uses it.

:func:`graph_columns` turns a decoded graph (checked by :mod:`tracefmt._graphdecode`, the reader's
own decoding) into arrays of codes; :func:`expand` gathers the rows of many steps' graphs into one
column per field with numpy, so a step costs a few index computations rather than an object per op.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tracefmt._graphdecode import GraphData
from tracefmt._ranges import segment_index
from tracefmt._scantypes import LabelPool, Ragged, gather_ragged
from tracefmt.attrcodec import encode_attrs

__all__ = ["GraphColumns", "concat_graphs", "enum_labels", "expand", "graph_columns"]


def enum_labels(kind: type[enum.IntEnum]) -> tuple[str, ...]:
    """The label of each code of ``kind``, by code (``""`` for a code it does not use)."""
    by_code = {int(m): m.name.lower() for m in kind}
    return tuple(by_code.get(c, "") for c in range(max(by_code) + 1))


@dataclass(frozen=True)
class GraphColumns:
    """The ops and tensors of one graph (or of several, concatenated) as arrays.

    Strings are :class:`~tracefmt._scantypes.LabelPool` codes; ``op_attrs`` are the graph's base
    attributes as attribute JSON (spec section 10), which a step's own replace; enum fields keep
    the format's codes.
    """

    op_name: np.ndarray
    op_phase: np.ndarray
    op_module: np.ndarray
    op_attrs: np.ndarray
    op_source: np.ndarray
    op_inputs: Ragged
    op_outputs: Ragged
    tensor_name: np.ndarray
    tensor_role: np.ndarray
    tensor_dtype: np.ndarray
    tensor_shape: Ragged
    tensor_device: np.ndarray
    tensor_producer: np.ndarray
    tensor_producer_slot: np.ndarray
    tensor_version: np.ndarray
    tensor_storage_offset: np.ndarray

    @property
    def num_ops(self) -> int:
        return len(self.op_name)

    @property
    def num_tensors(self) -> int:
        return len(self.tensor_name)


def _codes(values: Sequence[int]) -> np.ndarray:
    return np.array(values, dtype=np.int32)


def graph_columns(graph: GraphData, pool: LabelPool) -> GraphColumns:
    """The columns of ``graph``, its strings coded by ``pool``."""
    ops, metas = graph.ops, graph.metas
    return GraphColumns(
        op_name=_codes([pool.code(op.name) for op in ops]),
        op_phase=np.array([int(op.phase) for op in ops], dtype=np.uint8),
        op_module=_codes([pool.code(op.module) for op in ops]),
        op_attrs=_codes([pool.code(encode_attrs(op.attrs)) for op in ops]),
        op_source=_codes([pool.code(op.source) for op in ops]),
        op_inputs=Ragged.from_lists((op.inputs for op in ops), np.int32),
        op_outputs=Ragged.from_lists((op.outputs for op in ops), np.int32),
        tensor_name=_codes([pool.code(m.name) for m in metas]),
        tensor_role=np.array([int(m.role) for m in metas], dtype=np.uint8),
        tensor_dtype=np.array([int(m.dtype) for m in metas], dtype=np.uint8),
        tensor_shape=Ragged.from_lists((m.shape for m in metas), np.int64),
        tensor_device=_codes([pool.code(m.device) for m in metas]),
        tensor_producer=_codes([-1 if m.producer is None else m.producer for m in metas]),
        tensor_producer_slot=_codes([m.producer_slot for m in metas]),
        tensor_version=_codes([m.version for m in metas]),
        tensor_storage_offset=np.array([m.storage_offset for m in metas], dtype=np.int64),
    )


def _concat_ragged(parts: Sequence[Ragged]) -> Ragged:
    if len(parts) == 1:
        return parts[0]
    shifts = np.cumsum([0] + [int(p.offsets[-1]) for p in parts[:-1]])
    offsets = np.concatenate(
        [parts[0].offsets[:1]] + [p.offsets[1:] + s for p, s in zip(parts, shifts, strict=True)]
    )
    return Ragged(offsets, np.concatenate([p.values for p in parts]))


def concat_graphs(parts: Sequence[GraphColumns]) -> GraphColumns:
    """The rows of ``parts`` one after the other (graph ``k``'s ops after graph ``k - 1``'s)."""
    if len(parts) == 1:
        return parts[0]
    fields: dict[str, Any] = {}
    for name in GraphColumns.__dataclass_fields__:
        values = [getattr(p, name) for p in parts]
        fields[name] = (
            _concat_ragged(values) if isinstance(values[0], Ragged) else np.concatenate(values)
        )
    return GraphColumns(**fields)


def positions(counts: np.ndarray) -> np.ndarray:
    """For segments of ``counts`` rows one after the other, each row's position in its segment."""
    return segment_index(np.zeros(len(counts), dtype=np.int64), counts)


@dataclass(frozen=True)
class Expanded:
    """Rows of many steps' graphs: ``op_index`` and ``tensor_index`` are rows of the
    concatenated graphs, ``op_step_start`` and ``tensor_step_start`` where each step's rows
    begin in the expanded columns."""

    op_index: np.ndarray
    tensor_index: np.ndarray
    op_step_start: np.ndarray
    tensor_step_start: np.ndarray


def expand(
    op_first: np.ndarray, n_ops: np.ndarray, tensor_first: np.ndarray, n_tensors: np.ndarray
) -> Expanded:
    """The gather indices of steps whose graphs begin at rows ``op_first`` and ``tensor_first``
    of the concatenated graphs and have ``n_ops`` ops and ``n_tensors`` tensors."""

    def starts(counts: np.ndarray) -> np.ndarray:
        out = np.zeros(len(counts), dtype=np.int64)
        np.cumsum(counts[:-1], out=out[1:])
        return out

    return Expanded(
        op_index=segment_index(op_first, n_ops),
        tensor_index=segment_index(tensor_first, n_tensors),
        op_step_start=starts(n_ops),
        tensor_step_start=starts(n_tensors),
    )


def take(columns: GraphColumns, name: str, index: np.ndarray) -> np.ndarray | Ragged:
    """Rows ``index`` of column ``name`` of ``columns``."""
    values = getattr(columns, name)
    return gather_ragged(values, index) if isinstance(values, Ragged) else values[index]
