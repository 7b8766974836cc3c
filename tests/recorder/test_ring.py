"""The ring of held steps and the in-process ring sink (recorder.flight.ring)."""

from __future__ import annotations

import pytest

from recorder.flight.ring import FlightSink, Ring, RingSink
from tests.recorder._util import ListSink
from tests.synth import mlp_graph
from tracefmt.light import LightStepRecord, empty_light_rows
from tracefmt.records import StepRecord


def _record(step: int) -> StepRecord:
    return StepRecord(step=step, graph=mlp_graph())


def test_the_ring_keeps_the_last_steps_within_its_step_and_byte_bounds() -> None:
    ring: Ring[int] = Ring(3, 100, size=lambda n: n)
    for n in (10, 20, 30, 40):
        ring.add(n)
    assert list(ring) == [20, 30, 40]
    assert ring.evicted == 1
    ring.add(50)  # 30 + 40 + 50 = 120 > 100: 30 goes too
    assert list(ring) == [40, 50]
    assert ring.nbytes == 90
    assert ring.peak_bytes == 90
    ring.add(500)  # bigger than the whole budget: kept alone, never refused
    assert list(ring) == [500]
    assert ring.oversized == 1
    assert ring.drain() == [500]
    assert len(ring) == 0
    assert ring.nbytes == 0


def test_a_ring_needs_room() -> None:
    with pytest.raises(ValueError, match="at least one step"):
        Ring(0, 10, size=lambda n: n)


def test_ring_sink_writes_what_it_held_only_when_released() -> None:
    sink = ListSink()
    ring = RingSink(sink, steps=2, budget=1 << 30)
    assert isinstance(ring, FlightSink)
    for step in range(4):
        ring.hold(_record(step))
    assert ring.held == [2, 3]
    assert sink.records == []
    assert ring.release() == [2, 3]
    ring.write_step(_record(4))
    assert [r.step for r in sink.records] == [2, 3, 4]
    assert ring.ring_peak_bytes > 0


def test_ring_sink_skips_held_steps_already_past_and_refuses_an_old_step() -> None:
    sink = ListSink()
    ring = RingSink(sink, steps=4, budget=1 << 30)
    ring.write_step(_record(5))
    ring.hold(_record(4))
    ring.hold(_record(6))
    assert ring.release() == [6]
    with pytest.raises(ValueError, match="strictly increase"):
        ring.write_step(_record(6))


def test_closing_discards_the_unreleased_ring() -> None:
    sink = ListSink()
    ring = RingSink(sink, steps=4, budget=1 << 30)
    ring.hold(_record(0))
    ring.close()
    assert sink.records == []
    assert sink.closed


def test_light_steps_go_to_a_sink_that_takes_them_and_are_dropped_otherwise() -> None:
    light = LightStepRecord(step=0, names=(), rows=empty_light_rows(0))

    class LightSink(ListSink):
        def __init__(self) -> None:
            super().__init__()
            self.light: list[LightStepRecord] = []

        def write_light_step(self, record: LightStepRecord) -> None:
            self.light.append(record)

    taking = LightSink()
    RingSink(taking, steps=1, budget=1).write_light_step(light)
    assert taking.light == [light]
    RingSink(ListSink(), steps=1, budget=1).write_light_step(light)  # no error, nothing kept
