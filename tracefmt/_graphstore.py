"""How a writer stores graphs: strings interned once, each graph structure once, a step's own values.

Graphs are deduplicated by structure (:attr:`~tracefmt.records.Graph.digest` leaves out the ops'
attributes and the tensors' storage offsets): the first step with a structure stores the graph with
its attributes and offsets (the base values), and a later step with the same structure stores only
the ops and tensors whose values differ from the base, as rows of ``op_attrs`` and
``tensor_offsets`` (:meth:`GraphStore.overrides`).
"""

from __future__ import annotations

import numpy as np

from tracefmt import _layout as L
from tracefmt._appender import Appender
from tracefmt._rows import (
    EdgeRow,
    GraphRow,
    OpAttrsRow,
    OpRow,
    StepOverrideRow,
    StringRow,
    TensorOffsetRow,
    TensorRow,
)
from tracefmt.records import Graph


def _check_length(text: str, data: bytes) -> None:
    if len(data) > L.MAX_STRING_BYTES:
        raise ValueError(
            f"A string of {len(data)} bytes is longer than the format's "
            f"limit of {L.MAX_STRING_BYTES}: {text[:60]!r}..."
        )


class GraphStore:
    """The strings and graphs of one file being written, appended through ``tables``."""

    def __init__(self, tables: Appender) -> None:
        self._tables = tables
        self._strings: dict[str, int] = {}
        self._graphs: dict[bytes, int] = {}
        # Per graph row, each op's base attributes and each tensor's base storage offset.  The
        # attributes are kept as the interned texts themselves (keys of self._strings, so no
        # copy): checking a step costs one comparison per op and tensor.
        self._base: dict[int, tuple[tuple[str | None, ...], tuple[int, ...]]] = {}

    # -- strings ---------------------------------------------------------------------------------
    def intern(self, text: str | None) -> int:
        """The string id of ``text`` (-1 for None), appending it the first time."""
        if text is None:
            return L.NO_STRING
        sid = self._strings.get(text)
        if sid is None:
            data = text.encode("utf-8")
            _check_length(text, data)
            offset = self._tables.append(L.STRINGS_BYTES, np.frombuffer(data, dtype=np.uint8))
            row = np.array([StringRow(offset=offset, length=len(data))], dtype=L.STRING_INDEX_DTYPE)
            sid = self._tables.append(L.STRINGS_INDEX, row)
            self._strings[text] = sid
        return sid

    def intern_all(self, texts: list[str | None]) -> None:
        """Intern ``texts`` in order, as :meth:`intern` would, with one append per table.

        A new graph brings hundreds of new strings; two appends each cost more than its rows.
        """
        new = list(dict.fromkeys(t for t in texts if t is not None and t not in self._strings))
        if not new:
            return
        encoded = [t.encode("utf-8") for t in new]
        for text, data in zip(new, encoded, strict=True):
            _check_length(text, data)
        rows = np.zeros(len(new), dtype=L.STRING_INDEX_DTYPE)
        rows["length"] = [len(d) for d in encoded]
        rows["offset"] = (
            self._tables.length(L.STRINGS_BYTES) + np.cumsum(rows["length"]) - rows["length"]
        )
        self._tables.append(L.STRINGS_BYTES, np.frombuffer(b"".join(encoded), dtype=np.uint8))
        first = self._tables.append(L.STRINGS_INDEX, rows)
        for i, text in enumerate(new):
            self._strings[text] = first + i

    # -- graphs ----------------------------------------------------------------------------------
    def row(self, graph: Graph) -> int:
        """The row of ``graphs`` that stores ``graph``'s structure, appended the first time."""
        key = graph.digest
        row = self._graphs.get(key)
        if row is not None:
            return row
        self.intern_all(
            [
                *(s for op in graph.ops for s in (op.name, op.module, op.attrs, op.source)),
                *(s for t in graph.tensors for s in (t.device, t.name)),
            ]
        )
        intern, append = self.intern, self._tables.append
        ops = np.zeros(graph.num_ops, dtype=L.OP_DTYPE)
        edges: list[tuple[int, int, int]] = []
        for i, op in enumerate(graph.ops):
            in_start = len(edges)
            edges.extend(op.inputs)
            out_start = len(edges)
            edges.extend(EdgeRow(tensor=t, arg=slot, item=-1) for slot, t in enumerate(op.outputs))
            ops[i] = OpRow(
                name=intern(op.name),
                phase=int(op.phase),
                module=intern(op.module),
                attrs=intern(op.attrs),
                source=intern(op.source),
                in_start=in_start,
                in_count=len(op.inputs),
                out_start=out_start,
                out_count=len(op.outputs),
            )
        tensors = np.zeros(graph.num_tensors, dtype=L.TENSOR_DTYPE)
        dims: list[int] = []
        for i, t in enumerate(graph.tensors):
            if len(t.shape) > L.MAX_NDIM:
                raise ValueError(
                    f"Tensor {i} has {len(t.shape)} dimensions; the format allows {L.MAX_NDIM}."
                )
            dim_start = len(dims)
            dims.extend(t.shape)
            # Strides follow the shape; a tensor without recorded strides stores -1s.
            dims.extend(t.strides if t.strides is not None else [-1] * len(t.shape))
            tensors[i] = TensorRow(
                dtype=int(t.dtype),
                role=int(t.role),
                ndim=len(t.shape),
                dim_start=dim_start,
                device=intern(t.device),
                name=intern(t.name),
                producer=t.producer,
                producer_slot=t.producer_slot,
                version=t.version,
                storage_offset=t.storage_offset,
            )
        edge_rows = np.array(edges, dtype=L.EDGE_DTYPE) if edges else np.zeros(0, L.EDGE_DTYPE)
        graph_row = np.zeros(1, dtype=L.GRAPH_DTYPE)
        graph_row[0] = GraphRow(
            op_start=append(L.OPS, ops),
            op_count=len(ops),
            edge_start=append(L.EDGES, edge_rows),
            edge_count=len(edge_rows),
            tensor_start=append(L.TENSORS, tensors),
            tensor_count=len(tensors),
            dim_start=append(L.DIMS, np.asarray(dims, dtype=np.int64)),
            dim_count=len(dims),
            digest=np.frombuffer(key, dtype=np.uint8),
        )
        row = append(L.GRAPHS, graph_row)
        self._graphs[key] = row
        self._base[row] = (
            tuple(op.attrs for op in graph.ops),
            tuple(t.storage_offset for t in graph.tensors),
        )
        return row

    def overrides(self, graph: Graph, graph_row: int) -> StepOverrideRow:
        """Append this step's ops and tensors whose attributes and storage offsets differ from
        the graph row's base values to ``op_attrs`` and ``tensor_offsets``; return the step's
        ``step_overrides`` row (its ranges of both)."""
        base_attrs, base_offsets = self._base[graph_row]
        attrs = [
            (i, op.attrs)
            for i, (op, b) in enumerate(zip(graph.ops, base_attrs, strict=True))
            if op.attrs != b
        ]
        attrs_start = self._tables.length(L.OP_ATTRS)
        offsets_start = self._tables.length(L.TENSOR_OFFSETS)
        if attrs:
            self.intern_all([text for _, text in attrs])
            rows = [OpAttrsRow(op=i, attrs=self.intern(text)) for i, text in attrs]
            self._tables.append(L.OP_ATTRS, np.array(rows, dtype=L.OP_ATTRS_DTYPE))
        offsets = [
            TensorOffsetRow(tensor=i, storage_offset=t.storage_offset)
            for i, (t, b) in enumerate(zip(graph.tensors, base_offsets, strict=True))
            if t.storage_offset != b
        ]
        if offsets:
            self._tables.append(L.TENSOR_OFFSETS, np.array(offsets, dtype=L.TENSOR_OFFSET_DTYPE))
        return StepOverrideRow(
            op_attrs_start=attrs_start,
            op_attrs_count=len(attrs),
            tensor_offset_start=offsets_start,
            tensor_offset_count=len(offsets),
        )
