"""From a graph's checked rows to its ops and tensor metadata, shared by the steps that use it.

:class:`~tracefmt._rankfile.RankFile` reads a graph's rows of ``ops``, ``edges``, ``tensors`` and
``dims`` (their ranges checked); :func:`decode_graph` checks every reference between them (an op's
edges, an edge's tensor, a tensor's producer and dimensions) and decodes enum codes, strings and op
attributes, so a hostile row becomes a :class:`~tracefmt.errors.TraceFormatError` naming the file
and step.  A step's own values are put in by :func:`tracefmt._decode.decode_step`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tracefmt._primitives import require, tensor_dims
from tracefmt._rows import EdgeRow, OpRow, TensorRow, named
from tracefmt.attrcodec import decode_attrs
from tracefmt.dtypes import DType
from tracefmt.errors import TraceError, TraceFormatError
from tracefmt.model import OpNode, Phase, Role, TensorMeta


@dataclass(frozen=True)
class GraphData:
    """A decoded graph, shared by every step that uses it: its ops and tensor metadata.

    The ops and tensors carry the graph's *base* attributes and storage offsets, those stored in
    its ``ops`` and ``tensors`` rows (the first step that used the graph had them), and the ops no
    timing; :func:`~tracefmt._decode.decode_step` puts a step's own in their place.
    """

    ops: tuple[OpNode, ...]
    metas: tuple[TensorMeta, ...]


def decode_graph(
    g: int,
    ops: np.ndarray,
    edges: np.ndarray,
    tensors: np.ndarray,
    dims: list[int],
    where: str,
    string: Callable[[int], str | None],
) -> GraphData:
    """Graph ``g`` from its rows of the ops, edges and tensors tables and its dimensions.

    ``string(sid)`` resolves an interned string (``None`` for "no string").
    """
    n_ops, n_edges, n_tensors = len(ops), len(edges), len(tensors)

    def text(sid: int) -> str:
        return string(sid) or ""

    try:
        metas = tuple(
            _meta(j, t, dims, n_ops, where, text) for j, t in enumerate(named(tensors, TensorRow))
        )
        edge_rows = named(edges, EdgeRow)
        parsed = []
        for i, op in enumerate(named(ops, OpRow)):
            if op.in_start + op.in_count > n_edges or op.out_start + op.out_count > n_edges:
                raise TraceFormatError(f"{where}: op {i} has edges outside its graph.")
            ins = edge_rows[op.in_start : op.in_start + op.in_count]
            outs = edge_rows[op.out_start : op.out_start + op.out_count]
            for e in ins + outs:
                if e.tensor >= n_tensors:
                    raise TraceFormatError(
                        f"{where}: op {i} names tensor {e.tensor}, but the graph has {n_tensors}."
                    )
            attr_text = string(op.attrs)
            parsed.append(
                OpNode(
                    index=i,
                    name=text(op.name),
                    phase=Phase(op.phase),
                    module=text(op.module),
                    inputs=tuple(e.tensor for e in ins),
                    outputs=tuple(e.tensor for e in outs),
                    input_args=tuple((e.arg, e.item) for e in ins),
                    attrs={} if attr_text is None else decode_attrs(attr_text),
                    source=string(op.source),
                )
            )
    except ValueError as e:  # bad enum code, bad JSON
        if isinstance(e, TraceError):
            raise
        raise TraceFormatError(f"{where}: graph {g} is malformed: {e}") from e
    return GraphData(tuple(parsed), metas)


def _meta(
    j: int, t: TensorRow, dims: list[int], n_ops: int, where: str, text: Callable[[int], str]
) -> TensorMeta:
    """Tensor ``j``'s metadata from its row ``t``."""
    shape, strides = require(tensor_dims(j, t, dims), where)
    if not -1 <= t.producer < n_ops:
        raise TraceFormatError(
            f"{where}: a tensor names producer op {t.producer}, but the graph has {n_ops} ops."
        )
    return TensorMeta(
        dtype=DType(t.dtype),
        shape=shape,
        strides=None if t.ndim and all(s == -1 for s in strides) else strides,
        device=text(t.device),
        role=Role(t.role),
        name=text(t.name) or None,
        producer=None if t.producer < 0 else t.producer,
        producer_slot=t.producer_slot,
        version=t.version,
        storage_offset=t.storage_offset,
    )
