"""The flight recorder's wire (:mod:`recorder.flight.wire`, :mod:`recorder.flight.wiredecode`):
held steps decoded only when written, light steps' names sent when they change."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recorder.flight.wire import PREFIX, Encoder, LightMessage, Message, StepMessage
from recorder.flight.wiredecode import Decoder, HeldStep
from tests.synth import mlp_graph, synthetic_step
from tracefmt.errors import TraceError
from tracefmt.light import LightKind, LightStepRecord, empty_light_rows
from tracefmt.records import Graph, StepRecord


def _assemble(msg: Message) -> bytearray:
    buf = bytearray(msg.total)
    for offset, data in msg.pieces:
        buf[offset : offset + data.size] = data.tobytes()
    return buf


def _graph_fields(graph: Graph) -> tuple[list[str | None], list[int]]:
    return [op.attrs for op in graph.ops], [t.storage_offset for t in graph.tensors]


def _same_step(a: StepRecord, b: StepRecord) -> None:
    assert a.step == b.step
    assert a.graph.digest == b.graph.digest
    assert _graph_fields(a.graph) == _graph_fields(b.graph)
    assert a.stats is not None
    assert b.stats is not None
    assert a.stats.tobytes() == b.stats.tobytes()
    assert a.values.keys() == b.values.keys()
    for t, v in a.values.items():
        assert np.ascontiguousarray(v).tobytes() == b.values[t].tobytes()
    assert dict(a.scalars) == dict(b.scalars)


def _records() -> list[StepRecord]:
    """One structure whose attributes and offsets change, change back, and change again."""
    rng = np.random.default_rng(1)
    base = mlp_graph()
    graphs = [
        base,
        base.variant(attrs={6: {"alpha": 0.5}}),
        base.variant(attrs={6: {"alpha": 0.5}, 2: {"beta": 2}}, storage_offsets={0: 3}),
        base,  # every change undone
        base.variant(storage_offsets={1: 7}),
        base.variant(storage_offsets={1: 7}),
        mlp_graph(layers=3),  # a second structure in between
        base.variant(attrs={2: {"beta": 4}}),
    ]
    return [synthetic_step(s, g, rng) for s, g in enumerate(graphs)]


def test_held_steps_decoded_later_are_the_steps_sent() -> None:
    """A held step is decoded when written, after later steps changed the decoder's graphs;
    it must come out as it was sent, whatever was decoded in between and in whatever order."""
    records = _records()
    hold = [True, True, False, True, True, True, False, True]
    enc, dec = Encoder(), Decoder()
    out = [
        dec.decode(_assemble(enc.step(r, hold=h)), lazy=True) for r, h in zip(records, hold, strict=True)
    ]
    assert [isinstance(o, HeldStep) for o in out] == hold
    assert [isinstance(o, StepMessage) for o in out] == [not h for h in hold]
    for record, got in reversed(list(zip(records, out, strict=True))):  # newest first
        if isinstance(got, HeldStep):
            _same_step(record, dec.record(got))
        else:
            assert isinstance(got, StepMessage)
            _same_step(record, got.record)
    held = [o for o in out if isinstance(o, HeldStep)]
    assert [h.step for h in held] == [0, 1, 3, 4, 5, 7]
    assert all(h.nbytes == len(h.buf) for h in held)


def test_eager_and_lazy_decoding_agree() -> None:
    records = _records()
    enc_a, enc_b, eager, lazy = Encoder(), Encoder(), Decoder(), Decoder()
    for record in records:
        a = eager.decode(_assemble(enc_a.step(record, hold=True)))
        b = lazy.decode(_assemble(enc_b.step(record, hold=True)), lazy=True)
        assert isinstance(a, StepMessage)
        assert a.hold
        assert isinstance(b, HeldStep)
        _same_step(a.record, lazy.record(b))
        _same_step(record, a.record)


def test_light_names_travel_only_when_they_change() -> None:
    rows = empty_light_rows(2)
    rows["name"], rows["kind"] = [0, 1], [LightKind.OUTPUT, LightKind.GRADIENT]
    first, second = ("fc", "fc.weight"), ("fc", "fc.weight", "head")
    names = [first, first, second, ("fc", "fc.weight", "head"), (), second]
    enc, dec = Encoder(), Decoder()
    sent = []
    for step, n in enumerate(names):
        msg = _assemble(enc.light(LightStepRecord(step=step, names=n, rows=rows)))
        sent.append(b'"names"' in bytes(msg))
        out = dec.decode(msg)
        assert isinstance(out, LightMessage)
        assert list(out.record.names) == list(n)
    assert sent == [True, False, True, False, True, True]


def _with_header(buf: bytearray, **changes: object) -> bytearray:
    """``buf`` with its header's fields replaced (a malformed message, for the decoder)."""
    total, hlen = PREFIX.unpack_from(buf, 0)
    header = {**json.loads(bytes(buf[total - hlen :])), **changes}
    text = json.dumps(header).encode()
    out = bytearray(buf[: total - hlen]) + text
    PREFIX.pack_into(out, 0, len(out), len(text))
    return out


@pytest.mark.parametrize(
    "changes", [{"attrs": [[10_000, None]]}, {"attrs": [[-1, None]]}, {"offsets": [[-1, 0]]}]
)
def test_a_change_outside_the_graph_is_refused_when_it_arrives(changes: dict[str, object]) -> None:
    first, second = _records()[:2]
    enc, dec = Encoder(), Decoder()
    dec.decode(_assemble(enc.step(first, hold=True)), lazy=True)
    bad = _with_header(_assemble(enc.step(second, hold=True)), **changes)
    with pytest.raises(TraceError, match="malformed message"):
        dec.decode(bad, lazy=True)
