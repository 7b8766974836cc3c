"""From a graph's checked rows to its ops and tensor metadata, shared by the steps that use it.

:class:`~tracefmt._rankfile.RankFile` reads a graph's rows of ``ops``, ``edges``, ``tensors`` and
``dims`` (their ranges checked); :func:`decode_graph` checks every reference between them (an op's
edges, an edge's tensor, a tensor's producer and dimensions) and decodes enum codes, strings and op
attributes, so a hostile row becomes a :class:`~tracefmt.errors.TraceFormatError` naming the file
and step.  A step's own values are put in by :func:`tracefmt._decode.decode_step`.

Two paths give the same result.  The checks run over whole columns first (numpy), each string id
and each attribute text is resolved once, and a row that passes them all is built from plain lists
with no further check: a 100,000-op graph decodes in a fraction of the time of a row-by-row walk.
A row that fails any of them is decoded by :func:`_meta` or :func:`_op`, the row-by-row decoding
built on the reading primitives (:func:`~tracefmt._primitives.tensor_dims`), which raises the
error the file has (or, for a row the bulk check is stricter about, decodes it the same way).
Rows are taken in order, tensors before ops, so the first error raised is the first a row-by-row
walk would meet.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from tracefmt import _layout as L
from tracefmt._primitives import require, tensor_dims
from tracefmt._rows import EdgeRow, OpRow, TensorRow
from tracefmt.attrcodec import decode_attrs
from tracefmt.dtypes import DType
from tracefmt.errors import TraceError, TraceFormatError
from tracefmt.model import OpNode, Phase, Role, TensorMeta

#: Enum members by code: a dict lookup is several times cheaper than calling the enum.
_DTYPES = {int(d): d for d in DType}
_ROLES = {int(r): r for r in Role}
_PHASES = {int(p): p for p in Phase}


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
    dims: np.ndarray,
    where: str,
    string: Callable[[int], str | None],
) -> GraphData:
    """Graph ``g`` from its rows of the ops, edges and tensors tables and its ``dims`` entries.

    ``string(sid)`` resolves an interned string (``None`` for "no string").
    """
    try:
        strings = _Strings(string)
        metas = _metas(tensors, np.asarray(dims, dtype=np.int64), len(ops), where, strings)
        parsed = _ops(ops, edges, len(tensors), where, strings)
    except ValueError as e:  # bad enum code, bad JSON
        if isinstance(e, TraceError):
            raise
        raise TraceFormatError(f"{where}: graph {g} is malformed: {e}") from e
    return GraphData(parsed, metas)


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection while a step's objects are built.

    A 100,000-op step makes some 400,000 objects that all live on; each collection on the way
    walks those made so far, about a third of the time of decoding the step.  Left disabled if
    it was disabled (by the caller, or by another thread decoding now).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Strings:
    """The interned strings a graph names, each resolved once; an id whose string cannot be read
    is remembered as bad, so the rows that name it take the row-by-row path (which raises)."""

    def __init__(self, string: Callable[[int], str | None]) -> None:
        self.string = string
        self.texts: dict[int, str | None] = {}
        self.attrs: dict[int, dict[str, Any]] = {}
        self.bad: set[int] = set()

    def resolve(self, *columns: np.ndarray) -> np.ndarray:
        """Resolve every id of ``columns``; True for each row whose ids all resolved."""
        ids = np.unique(np.concatenate([c.astype(np.int64) for c in columns]))
        for sid in ids.tolist():
            if sid in self.texts or sid in self.bad:
                continue
            try:
                self.texts[sid] = self.string(sid)
            except TraceError:
                self.bad.add(sid)
        return self._good(columns)

    def decode_attrs(self, column: np.ndarray) -> np.ndarray:
        """Decode each attribute text of ``column`` once (ids resolved already); True for each row
        whose text is none or decodes."""
        for sid in np.unique(column).tolist():
            text = self.texts.get(sid)
            if sid in self.bad or sid in self.attrs or text is None:
                continue
            try:
                self.attrs[sid] = decode_attrs(text)
            except ValueError:
                self.bad.add(sid)
        return self._good((column,))

    def _good(self, columns: tuple[np.ndarray, ...]) -> np.ndarray:
        ok = np.ones(len(columns[0]), dtype=bool)
        if self.bad:
            bad = np.fromiter(self.bad, dtype=np.int64)
            for c in columns:
                ok &= ~np.isin(c, bad)
        return ok


def _prefix(mask: np.ndarray) -> np.ndarray:
    """Counts of ``mask`` before each position: ``p[b] - p[a]`` counts it in ``[a, b)``."""
    out = np.zeros(len(mask) + 1, dtype=np.int64)
    np.cumsum(mask, out=out[1:])
    return out


def _metas(
    tensors: np.ndarray, dims: np.ndarray, n_ops: int, where: str, strings: _Strings
) -> tuple[TensorMeta, ...]:
    """Each tensor's metadata from its row of ``tensors``."""
    ndim = tensors["ndim"].astype(np.int64)
    d0 = tensors["dim_start"].astype(np.int64)
    producer = tensors["producer"].astype(np.int64)
    ok = (ndim <= L.MAX_NDIM) & (d0 + 2 * ndim <= len(dims))
    ok &= (producer >= -1) & (producer < n_ops)
    ok &= np.isin(tensors["dtype"], list(_DTYPES)) & np.isin(tensors["role"], list(_ROLES))
    ok &= strings.resolve(tensors["device"], tensors["name"])
    a, n = np.where(ok, d0, 0), np.where(ok, ndim, 0)
    negative, unset = _prefix(dims < 0), _prefix(dims == -1)
    ok &= negative[a + n] == negative[a]  # no negative dimension in the shape
    no_strides = (n > 0) & (unset[a + 2 * n] - unset[a + n] == n)  # every stride -1
    dl, texts, dtypes, roles = dims.tolist(), strings.texts, _DTYPES, _ROLES
    out = []
    for j, (good, start, nd, dt, role, dev, name, prod, slot, ver, off, none) in enumerate(
        zip(
            ok.tolist(),
            a.tolist(),
            n.tolist(),
            tensors["dtype"].tolist(),
            tensors["role"].tolist(),
            tensors["device"].tolist(),
            tensors["name"].tolist(),
            producer.tolist(),
            tensors["producer_slot"].tolist(),
            tensors["version"].tolist(),
            tensors["storage_offset"].tolist(),
            no_strides.tolist(),
            strict=True,
        )
    ):
        if not good:
            row = TensorRow._make(tensors[j].tolist())
            out.append(_meta(j, row, dl, n_ops, where, lambda s: strings.string(s) or ""))
            continue
        out.append(
            TensorMeta(
                dtypes[dt],
                tuple(dl[start : start + nd]),
                None if none else tuple(dl[start + nd : start + 2 * nd]),
                texts[dev] or "",
                roles[role],
                texts[name] or None,
                None if prod < 0 else prod,
                slot,
                ver,
                off,
            )
        )
    return tuple(out)


def _ops(
    ops: np.ndarray, edges: np.ndarray, n_tensors: int, where: str, strings: _Strings
) -> tuple[OpNode, ...]:
    """Each op from its row of ``ops`` and its rows of ``edges``."""
    n_edges = len(edges)
    ins, n_in = ops["in_start"].astype(np.int64), ops["in_count"].astype(np.int64)
    outs, n_out = ops["out_start"].astype(np.int64), ops["out_count"].astype(np.int64)
    ok = (ins + n_in <= n_edges) & (outs + n_out <= n_edges)
    named_out = _prefix(edges["tensor"].astype(np.int64) >= n_tensors)
    i0, i1 = np.where(ok, ins, 0), np.where(ok, ins + n_in, 0)
    o0, o1 = np.where(ok, outs, 0), np.where(ok, outs + n_out, 0)
    ok &= (named_out[i1] == named_out[i0]) & (named_out[o1] == named_out[o0])
    ok &= np.isin(ops["phase"], list(_PHASES))
    ok &= strings.resolve(ops["name"], ops["module"], ops["attrs"], ops["source"])
    ok &= strings.decode_attrs(ops["attrs"])
    tensor = edges["tensor"].tolist()
    args = list(zip(edges["arg"].tolist(), edges["item"].tolist(), strict=True))
    texts, attrs, phases = strings.texts, strings.attrs, _PHASES
    parsed = []
    for i, (good, a, b, c, d, name, phase, module, attr, source) in enumerate(
        zip(
            ok.tolist(),
            i0.tolist(),
            i1.tolist(),
            o0.tolist(),
            o1.tolist(),
            ops["name"].tolist(),
            ops["phase"].tolist(),
            ops["module"].tolist(),
            ops["attrs"].tolist(),
            ops["source"].tolist(),
            strict=True,
        )
    ):
        if not good:
            parsed.append(_op(i, OpRow._make(ops[i].tolist()), edges, n_tensors, where, strings))
            continue
        decoded = attrs.get(attr)
        parsed.append(
            OpNode(
                i,
                texts[name] or "",
                phases[phase],
                texts[module] or "",
                tuple(tensor[a:b]),
                tuple(tensor[c:d]),
                tuple(args[a:b]),
                {} if decoded is None else dict(decoded),  # each op its own dict, as decoded
                texts[source],
            )
        )
    return tuple(parsed)


def _op(i: int, op: OpRow, edges: np.ndarray, n_tensors: int, where: str, strings: _Strings) -> OpNode:
    """Op ``i`` from its row ``op``, row by row: raises what is wrong with it."""
    string = strings.string

    def text(sid: int) -> str:
        return string(sid) or ""

    n_edges = len(edges)
    if op.in_start + op.in_count > n_edges or op.out_start + op.out_count > n_edges:
        raise TraceFormatError(f"{where}: op {i} has edges outside its graph.")
    ins = [EdgeRow._make(e) for e in edges[op.in_start : op.in_start + op.in_count].tolist()]
    outs = [EdgeRow._make(e) for e in edges[op.out_start : op.out_start + op.out_count].tolist()]
    for e in ins + outs:
        if e.tensor >= n_tensors:
            raise TraceFormatError(
                f"{where}: op {i} names tensor {e.tensor}, but the graph has {n_tensors}."
            )
    attr_text = string(op.attrs)
    return OpNode(
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


def _meta(
    j: int, t: TensorRow, dims: list[int], n_ops: int, where: str, text: Callable[[int], str]
) -> TensorMeta:
    """Tensor ``j``'s metadata from its row ``t``, row by row: raises what is wrong with it."""
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
