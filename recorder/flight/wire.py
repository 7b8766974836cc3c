"""How the flight recorder's records cross from the trainer to its writer process: bytes, no pickle.

A message is one self-contained byte string::

    [u64 total length][u64 header length][padding to 64]
    [array 0][padding to 64][array 1]...        raw C-order bytes of numpy arrays
    [header]                                    UTF-8 JSON, last

The header says what the message is (``"k"``: ``open``, ``step``, ``light``, ``flush``,
``release``, ``bye``) and where each array lies (``[dtype, shape, offset, nbytes]``).  An array's
dtype is a plain numeric one (``"<i8"``, ``"|u1"``) or the name of a row type both sides know
(``"stats"``, ``"op_stats"``, ``"light"``): nothing in a message can name code to run.  Tensor
values travel as their raw bytes (``|u1``), which the writer takes as they are.  The header is
written after the arrays, so the sender copies each array once, straight into shared memory, and
never assembles the message anywhere.

Graphs repeat from step to step, so a graph travels once: a step names its graph by
:attr:`~tracefmt.records.Graph.digest` and carries only what differs from the last graph sent
with that digest (ops' attributes, tensors' storage offsets; the digest covers the rest), and the
writer rebuilds the step's graph with :meth:`~tracefmt.records.Graph.variant`.  Both sides keep
every graph they have seen, so the two caches stay equal by construction.  JSON floats are Python's
round-trip ``repr`` (``NaN`` and ``Infinity`` allowed: this is a wire between two processes of
one job, never a file).

Example::

    enc, dec = Encoder(), Decoder()
    msg = enc.step(record, hold=True)
    buf = bytearray(msg.total)
    for offset, data in msg.pieces:
        buf[offset : offset + data.size] = data
    decoded = dec.decode(buf)   # StepMessage(hold=True, record=<equal to record>)
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from tracefmt.dtypes import DType
from tracefmt.errors import TraceError
from tracefmt.light import LIGHT_ROW_DTYPE, LightStepRecord
from tracefmt.model import Event, Phase, Role
from tracefmt.moduletable import ModuleInfo, ModuleTable
from tracefmt.records import (
    OP_STATS_DTYPE,
    STATS_DTYPE,
    Graph,
    OpSpec,
    StepRecord,
    TensorSpec,
    decode_attrs,
)
from tracefmt.rngstate import RngState

__all__ = [
    "PREFIX",
    "ControlMessage",
    "Decoder",
    "Encoder",
    "LightMessage",
    "Message",
    "OpenMessage",
    "StepMessage",
    "control",
]

#: total length and header length of a message
PREFIX = struct.Struct("<QQ")
_ALIGN = 64
_NAMED_DTYPES: dict[str, np.dtype[Any]] = {
    "stats": STATS_DTYPE,
    "op_stats": OP_STATS_DTYPE,
    "light": LIGHT_ROW_DTYPE,
}
_PLAIN_KINDS = frozenset("biuf")


class Message(NamedTuple):
    """An encoded message: ``pieces`` are ``(offset, flat uint8 array)`` to place at those offsets
    of a ``total``-byte string; the bytes between them are padding, never read."""

    total: int
    pieces: list[tuple[int, np.ndarray]]


@dataclass(frozen=True, slots=True)
class OpenMessage:
    """The first message: the ``TraceWriter`` keyword arguments."""

    writer_args: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StepMessage:
    hold: bool
    record: StepRecord


@dataclass(frozen=True, slots=True)
class LightMessage:
    record: LightStepRecord


@dataclass(frozen=True, slots=True)
class ControlMessage:
    """``flush``, ``release`` or ``bye``; the writer answers ``seq``."""

    kind: str
    seq: int


Decoded = OpenMessage | StepMessage | LightMessage | ControlMessage


def _round_up(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


class _Layout:
    """Arrays placed one after another, 64-byte aligned, after the prefix."""

    def __init__(self) -> None:
        self.pieces: list[tuple[int, np.ndarray]] = []
        self.end = _ALIGN

    def add(self, array: np.ndarray | Sequence[int], code: str | None = None) -> list[Any]:
        a = np.ascontiguousarray(array)
        if code is None:
            if a.dtype.kind not in _PLAIN_KINDS:
                raise ValueError(f"Arrays of dtype {a.dtype} cannot be sent to the writer process.")
            code = a.dtype.str
        flat = a.reshape(-1).view(np.uint8)
        offset = self.end
        self.pieces.append((offset, flat))
        self.end = _round_up(offset + flat.size)
        return [code, list(a.shape), offset, int(flat.size)]

    def finish(self, header: dict[str, Any]) -> Message:
        text = json.dumps(header, separators=(",", ":")).encode()
        start = self.end
        prefix = np.frombuffer(PREFIX.pack(start + len(text), len(text)), dtype=np.uint8)
        pieces = [(0, prefix), *self.pieces, (start, np.frombuffer(text, dtype=np.uint8))]
        return Message(start + len(text), pieces)


def control(kind: str, seq: int = 0, **fields: Any) -> Message:
    """A message without arrays (``open``, ``flush``, ``release``, ``bye``)."""
    return _Layout().finish({"k": kind, "seq": seq, **fields})


def _events(events: Sequence[Event]) -> list[list[Any]]:
    return [[e.kind, e.message, e.op, e.tensor] for e in events]


def _graph_json(graph: Graph) -> dict[str, Any]:
    ops = [
        [o.name, int(o.phase), o.module, [list(t) for t in o.inputs], list(o.outputs), o.attrs, o.source]
        for o in graph.ops
    ]
    tensors = [
        [
            int(t.dtype),
            list(t.shape),
            None if t.strides is None else list(t.strides),
            t.device,
            int(t.role),
            t.name,
            t.producer,
            t.producer_slot,
            t.version,
            t.storage_offset,
        ]
        for t in graph.tensors
    ]
    return {"ops": ops, "tensors": tensors}


class Encoder:
    """The trainer's side: records to messages, each graph structure sent once."""

    def __init__(self) -> None:
        self._graphs: dict[bytes, Graph] = {}  # by digest: the last graph sent with it
        self._modules: ModuleTable | None = None  # the module table the writer has (format 1.5)

    def step(self, record: StepRecord, *, hold: bool) -> Message:
        lay = _Layout()
        graph = record.graph
        digest = graph.digest
        last = self._graphs.get(digest)
        header: dict[str, Any] = {"k": "step", "hold": hold, "step": int(record.step)}
        header["digest"] = digest.hex()
        if last is None:
            header["graph"] = _graph_json(graph)
        elif last is not graph:
            header["attrs"] = [
                [i, op.attrs]
                for i, (op, old) in enumerate(zip(graph.ops, last.ops, strict=True))
                if op is not old and op.attrs != old.attrs
            ]
            header["offsets"] = [
                [i, t.storage_offset]
                for i, (t, old) in enumerate(zip(graph.tensors, last.tensors, strict=True))
                if t is not old and t.storage_offset != old.storage_offset
            ]
        self._graphs[digest] = graph
        if record.stats is not None:
            header["stats"] = lay.add(np.asarray(record.stats, dtype=STATS_DTYPE), "stats")
        if record.op_stats is not None:
            header["op_stats"] = lay.add(np.asarray(record.op_stats, OP_STATS_DTYPE), "op_stats")
        if record.op_starts is not None:
            header["op_starts"] = lay.add(np.asarray(record.op_starts, dtype=np.int64))
        header["values"] = [
            [int(t), lay.add(np.ascontiguousarray(a).reshape(-1).view(np.uint8))]
            for t, a in record.values.items()
        ]
        header["hists"] = [
            [int(t), float(lo), float(hi), lay.add(np.asarray(counts))]
            for t, (lo, hi, counts) in record.histograms.items()
        ]
        header["events"] = _events(record.events)
        header["scalars"] = [[str(k), float(v)] for k, v in record.scalars.items()]
        header["wall_time"] = float(record.wall_time)
        header["duration"] = float(record.duration)
        header["dropped"] = int(record.dropped)
        header["rng"] = [  # format 1.6: each generator's state, its bytes as an array
            [s.device, lay.add(np.frombuffer(s.state, dtype=np.uint8))] for s in record.rng_states
        ]
        if record.modules is not self._modules:  # sent when it changes: null, or its rows
            modules = record.modules
            header["modules"] = None if modules is None else [list(_module_row(m)) for m in modules]
            self._modules = modules
        return lay.finish(header)

    def light(self, record: LightStepRecord) -> Message:
        lay = _Layout()
        header = {
            "k": "light",
            "step": int(record.step),
            "names": [str(n) for n in record.names],
            "rows": lay.add(np.asarray(record.rows, dtype=LIGHT_ROW_DTYPE), "light"),
            "events": _events(record.events),
            "scalars": [[str(k), float(v)] for k, v in record.scalars.items()],
            "wall_time": float(record.wall_time),
            "duration": float(record.duration),
        }
        return lay.finish(header)


def _bad(what: str) -> TraceError:
    return TraceError(f"The writer process received a malformed message ({what}); this is a bug.")


def _module_row(m: ModuleInfo) -> tuple[str, str | None, int, int, int, int, int]:
    return (m.path, m.class_name, m.params, m.trainable, m.own_params, m.own_trainable, m.param_bytes)


class Decoder:
    """The writer process's side: messages back to records.  Arrays are views of the message."""

    def __init__(self) -> None:
        self._graphs: dict[bytes, Graph] = {}
        self._modules: ModuleTable | None = None  # the last module table a step brought

    def _module_table(self, h: dict[str, Any]) -> ModuleTable | None:
        if "modules" in h:
            rows = h["modules"]
            try:
                self._modules = (
                    None if rows is None else ModuleTable(tuple(ModuleInfo(*r) for r in rows))
                )
            except (TypeError, ValueError) as e:
                raise _bad(f"module table: {e}") from e
        return self._modules

    def decode(self, buf: bytearray) -> Decoded:
        if len(buf) < PREFIX.size:
            raise _bad("shorter than its prefix")
        total, hlen = PREFIX.unpack_from(buf, 0)
        if total != len(buf) or hlen > total - PREFIX.size:
            raise _bad(f"lengths {total}, {hlen} for {len(buf)} bytes")
        try:
            h = json.loads(bytes(buf[total - hlen :]))
        except ValueError as e:
            raise _bad(f"header: {e}") from e
        kind = h.get("k")
        if kind == "step":
            return StepMessage(bool(h["hold"]), self._step(buf, h))
        if kind == "light":
            return LightMessage(self._light(buf, h))
        if kind == "open":
            return OpenMessage(dict(h["args"]))
        if kind in ("flush", "release", "bye"):
            return ControlMessage(kind, int(h["seq"]))
        raise _bad(f"kind {kind!r}")

    def _array(self, buf: bytearray, spec: list[Any]) -> np.ndarray:
        code, shape, offset, nbytes = spec
        dtype = _NAMED_DTYPES.get(code)
        if dtype is None:
            dtype = np.dtype(code)
            if dtype.kind not in _PLAIN_KINDS:
                raise _bad(f"dtype {code!r}")
        count = 1
        for d in shape:
            count *= int(d)
        if count * dtype.itemsize != nbytes or offset < 0 or offset + nbytes > len(buf):
            raise _bad(f"array {spec}")
        return np.frombuffer(buf, dtype=dtype, count=count, offset=offset).reshape(shape)

    def _graph(self, h: dict[str, Any]) -> Graph:
        digest = bytes.fromhex(h["digest"])
        if "graph" in h:
            g = h["graph"]
            ops = tuple(
                OpSpec(n, Phase(p), m, tuple((a, b, c) for a, b, c in ins), tuple(outs), at, src)
                for n, p, m, ins, outs, at, src in g["ops"]
            )
            tensors = tuple(
                TensorSpec(
                    DType(dt),
                    tuple(shape),
                    None if strides is None else tuple(strides),
                    dev,
                    Role(role),
                    name,
                    prod,
                    slot,
                    ver,
                    off,
                )
                for dt, shape, strides, dev, role, name, prod, slot, ver, off in g["tensors"]
            )
            graph = Graph(ops, tensors)
            if graph.digest != digest:
                raise _bad("a graph whose digest differs from the one sent with it")
        else:
            last = self._graphs.get(digest)
            if last is None:
                raise _bad(f"graph {h['digest']} was never sent")
            attrs, offsets = h.get("attrs") or [], h.get("offsets") or []
            graph = last
            if attrs or offsets:
                graph = last.variant(
                    attrs={i: None if s is None else decode_attrs(s) for i, s in attrs},
                    storage_offsets={i: n for i, n in offsets},
                )
        self._graphs[digest] = graph
        return graph

    def _step(self, buf: bytearray, h: dict[str, Any]) -> StepRecord:
        arr = self._array
        return StepRecord(
            step=int(h["step"]),
            graph=self._graph(h),
            stats=arr(buf, h["stats"]) if "stats" in h else None,
            op_stats=arr(buf, h["op_stats"]) if "op_stats" in h else None,
            op_starts=arr(buf, h["op_starts"]) if "op_starts" in h else None,
            values={int(t): arr(buf, spec) for t, spec in h["values"]},
            histograms={int(t): (lo, hi, arr(buf, spec)) for t, lo, hi, spec in h["hists"]},
            events=[Event(k, m, op, t) for k, m, op, t in h["events"]],
            scalars={k: v for k, v in h["scalars"]},
            wall_time=h["wall_time"],
            duration=h["duration"],
            dropped=int(h["dropped"]),
            modules=self._module_table(h),
            rng_states=self._rng_states(buf, h.get("rng") or []),
        )

    def _rng_states(self, buf: bytearray, specs: list[Any]) -> tuple[RngState, ...]:
        try:
            return tuple(RngState(str(d), self._array(buf, spec).tobytes()) for d, spec in specs)
        except (TypeError, ValueError) as e:
            raise _bad(f"RNG states: {e}") from e

    def _light(self, buf: bytearray, h: dict[str, Any]) -> LightStepRecord:
        return LightStepRecord(
            step=int(h["step"]),
            names=list(h["names"]),
            rows=self._array(buf, h["rows"]),
            scalars={k: v for k, v in h["scalars"]},
            events=[Event(k, m, op, t) for k, m, op, t in h["events"]],
            wall_time=h["wall_time"],
            duration=h["duration"],
        )
