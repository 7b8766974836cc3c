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
every graph they have seen, so the two caches stay equal by construction.  A light step's names
travel likewise, only when they change.  JSON floats are Python's round-trip ``repr`` (``NaN``
and ``Infinity`` allowed: this is a wire between two processes of one job, never a file).  The
writer process's side is :mod:`recorder.flight.wiredecode`.

Example::

    enc, dec = Encoder(), Decoder()  # Decoder: recorder.flight.wiredecode
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

from tracefmt.light import LIGHT_ROW_DTYPE, LightStepRecord
from tracefmt.model import Event
from tracefmt.moduletable import ModuleInfo, ModuleTable
from tracefmt.records import (
    OP_STATS_DTYPE,
    STATS_DTYPE,
    Graph,
    StepRecord,
)

__all__ = [
    "NAMED_DTYPES",
    "PLAIN_KINDS",
    "PREFIX",
    "ControlMessage",
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
#: the row types an array may name instead of a numeric dtype
NAMED_DTYPES: dict[str, np.dtype[Any]] = {
    "stats": STATS_DTYPE,
    "op_stats": OP_STATS_DTYPE,
    "light": LIGHT_ROW_DTYPE,
}
#: the numeric dtype kinds an array may have
PLAIN_KINDS = frozenset("biuf")


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
            if a.dtype.kind not in PLAIN_KINDS:
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
        self._names: Sequence[str] | None = None  # the light names the writer has

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
        header: dict[str, Any] = {"k": "light", "step": int(record.step)}
        names = record.names
        same = names is self._names and isinstance(names, tuple)  # LightCapture's: one tuple
        if not same and (self._names is None or list(names) != list(self._names)):
            header["names"] = [str(n) for n in names]  # sent when they change
        self._names = names
        header |= {
            "rows": lay.add(np.asarray(record.rows, dtype=LIGHT_ROW_DTYPE), "light"),
            "events": _events(record.events),
            "scalars": [[str(k), float(v)] for k, v in record.scalars.items()],
            "wall_time": float(record.wall_time),
            "duration": float(record.duration),
        }
        return lay.finish(header)


def _module_row(m: ModuleInfo) -> tuple[str, str | None, int, int, int, int, int]:
    return (m.path, m.class_name, m.params, m.trainable, m.own_params, m.own_trainable, m.param_bytes)
