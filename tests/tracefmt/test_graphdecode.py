"""The bulk graph decoding gives what the row-by-row decoding gives, errors included.

:func:`tracefmt._graphdecode.decode_graph` checks whole columns at once and builds the rows that
pass from plain lists; a row that fails goes through the row-by-row path (``_meta``, ``_op``).
Random graphs, most rows valid and some hostile (dimensions outside ``dims``, a negative
dimension, a producer or edge out of range, an unknown enum code, a bad string id, attribute
text that is not a JSON object), must decode to the same ops and tensors, or raise the same
error, as decoding every row one by one does.
"""

from __future__ import annotations

import numpy as np
import pytest

from tracefmt import _layout as L
from tracefmt._graphdecode import _meta, _op, _Strings, decode_graph
from tracefmt._rows import OpRow, TensorRow
from tracefmt.dtypes import DType
from tracefmt.errors import TraceError, TraceFormatError
from tracefmt.model import Role

WHERE = "file.tft.h5, step 3"
TEXTS = ["cpu", "layers.0", "w", "aten::mm", "", '{"dim":1}', '{"eps":{"$float":"inf"}}', "[1]", "{x"]


def string(sid: int) -> str | None:
    if sid == L.NO_STRING:
        return None
    if not 0 <= sid < len(TEXTS):
        raise TraceFormatError(f"{WHERE}: The string id {sid} is out of range.")
    return TEXTS[sid]


DTYPES = [int(d) for d in DType]
#: The kinds of hostile row :func:`random_graph` can put in.
KINDS = ("dims", "negative", "dtype", "role", "producer", "strings", "edges", "tensor", "attrs", "phase")


def random_graph(rng: np.random.Generator, hostile: frozenset[str]) -> tuple[np.ndarray, ...]:
    """A graph of valid rows, and a few rows of each kind of ``hostile``."""
    n_ops, n_tensors = int(rng.integers(0, 12)), int(rng.integers(1, 12))
    n_edges = int(rng.integers(0, 30))

    def some(kind: str, n: int) -> np.ndarray:
        return (rng.random(n) < 0.15) if kind in hostile else np.zeros(n, dtype=bool)

    def sid(n: int) -> np.ndarray:
        return np.where(some("strings", n), len(TEXTS) + 3, rng.integers(-1, 5, size=n))

    tensors = np.zeros(n_tensors, dtype=L.TENSOR_DTYPE)
    tensors["dtype"] = np.where(some("dtype", n_tensors), 250, rng.choice(DTYPES, n_tensors))
    tensors["role"] = np.where(
        some("role", n_tensors), 99, rng.choice([int(r) for r in Role], n_tensors)
    )
    ndim = rng.integers(0, 4, n_tensors)
    parts: list[np.ndarray] = []  # each tensor's shape, then its strides (sometimes all -1)
    for nd in ndim.tolist():
        strides = np.full(nd, -1) if rng.random() < 0.3 else rng.integers(0, 9, nd)
        parts += [rng.integers(0, 9, nd), strides]
    dims = np.concatenate([np.zeros(0, dtype=np.int64), *parts]).astype(np.int64)
    if "negative" in hostile:
        dims[rng.random(len(dims)) < 0.1] = -3
    start = np.concatenate([[0], np.cumsum(2 * ndim)[:-1]]).astype(np.int64)
    start = np.where(some("dims", n_tensors), len(dims) - ndim, start)
    ndim = np.where(some("dims", n_tensors), 65, ndim)
    tensors["ndim"], tensors["dim_start"] = ndim, start
    tensors["device"], tensors["name"] = sid(n_tensors), sid(n_tensors)
    producer = rng.integers(-1, max(n_ops, 0), n_tensors) if n_ops else np.full(n_tensors, -1)
    tensors["producer"] = np.where(some("producer", n_tensors), n_ops, producer)
    tensors["producer_slot"] = rng.integers(0, 3, n_tensors)
    tensors["version"] = rng.integers(0, 3, n_tensors)
    tensors["storage_offset"] = rng.integers(0, 100, n_tensors)
    edges = np.zeros(n_edges, dtype=L.EDGE_DTYPE)
    edges["tensor"] = np.where(some("tensor", n_edges), n_tensors, rng.integers(0, n_tensors, n_edges))
    edges["arg"], edges["item"] = rng.integers(0, 4, n_edges), rng.integers(-1, 3, n_edges)
    ops = np.zeros(n_ops, dtype=L.OP_DTYPE)
    ops["name"], ops["module"], ops["source"] = sid(n_ops), sid(n_ops), sid(n_ops)
    ops["attrs"] = np.where(
        some("attrs", n_ops), rng.choice([7, 8], n_ops), rng.choice([-1, 5, 6], n_ops)
    )
    ops["phase"] = np.where(some("phase", n_ops), 7, rng.integers(0, 4, n_ops))
    for side in ("in", "out"):
        count = rng.integers(0, 3, n_ops)
        start = (rng.random(n_ops) * np.maximum(n_edges - count + 1, 0)).astype(np.int64)
        count = np.where(n_edges - count < 0, 0, count)
        ops[f"{side}_start"] = np.where(some("edges", n_ops), n_edges, start)
        ops[f"{side}_count"] = np.where(some("edges", n_ops), 1, count)
    return ops, edges, tensors, dims


def row_by_row(ops: np.ndarray, edges: np.ndarray, tensors: np.ndarray, dims: np.ndarray) -> object:
    """What decoding every row one by one gives (the ops and metas), or the error it raises."""
    strings = _Strings(string)
    try:
        try:
            dl = dims.tolist()
            metas = tuple(
                _meta(j, TensorRow._make(t), dl, len(ops), WHERE, lambda s: string(s) or "")
                for j, t in enumerate(tensors.tolist())
            )
            parsed = tuple(
                _op(i, OpRow._make(op), edges, len(tensors), WHERE, strings)
                for i, op in enumerate(ops.tolist())
            )
        except ValueError as e:
            if isinstance(e, TraceError):
                raise
            raise TraceFormatError(f"{WHERE}: graph 0 is malformed: {e}") from e
    except TraceError as e:
        return (type(e), str(e))
    return (parsed, metas)


def bulk(ops: np.ndarray, edges: np.ndarray, tensors: np.ndarray, dims: np.ndarray) -> object:
    try:
        g = decode_graph(0, ops, edges, tensors, dims, WHERE, string)
    except TraceError as e:
        return (type(e), str(e))
    return (g.ops, g.metas)


@pytest.mark.parametrize("hostile", [(), *((k,) for k in KINDS), KINDS])
def test_bulk_decoding_matches_row_by_row(hostile: tuple[str, ...]) -> None:
    rng = np.random.default_rng(len(hostile) and KINDS.index(hostile[0]) + 1)
    outcomes = set()
    for _ in range(300):
        parts = random_graph(rng, frozenset(hostile))
        expected = row_by_row(*parts)
        assert bulk(*parts) == expected
        outcomes.add("decoded" if isinstance(expected[0], tuple) else "raised")
    assert outcomes == ({"decoded", "raised"} if hostile else {"decoded"})


def test_valid_graph_keeps_every_field() -> None:
    dims = np.array([8, 16, 16, 1, 4, -1], dtype=np.int64)
    tensors = np.zeros(2, dtype=L.TENSOR_DTYPE)
    tensors[0] = (1, 2, 2, 0, 0, 2, -1, 0, 1, 7)
    tensors[1] = (1, 0, 1, 4, -1, 4, 0, 1, 0, 0)
    edges = np.array([(0, 0, -1), (1, 1, 2)], dtype=L.EDGE_DTYPE)
    ops = np.array([(3, 1, 1, 6, -1, 0, 1, 1, 1)], dtype=L.OP_DTYPE)
    g = decode_graph(0, ops, edges, tensors, dims, WHERE, string)
    t0, t1 = g.metas
    assert (t0.shape, t0.strides, t0.device, t0.name, t0.producer, t0.storage_offset) == (
        (8, 16),
        (16, 1),
        "cpu",
        "w",
        None,
        7,
    )
    assert (t1.shape, t1.strides, t1.device, t1.name, t1.producer) == ((4,), None, "", None, 0)
    (op,) = g.ops
    assert (op.name, op.module, op.inputs, op.outputs, op.input_args) == (
        "aten::mm",
        "layers.0",
        (0,),
        (1,),
        ((0, -1),),
    )
    assert op.attrs == {"eps": float("inf")}
    assert op.source is None
