"""The ring of full steps a flight recorder keeps, and the sink that holds it in this process.

A flight recorder captures every step in full but writes a step only when a trigger fires: the
last ``steps`` captured steps wait in a :class:`Ring`, bounded in steps and in bytes, the oldest
going first.  :class:`RingSink` puts a ring in front of any sink (a ``TraceWriter``, or the
``sink=`` a user passed): the trainer's writer thread calls :meth:`RingSink.hold` for each
step, :meth:`RingSink.release` when a trigger fires, and :meth:`RingSink.write_step` for steps
written whatever happens (the triggering step and those after it).  In flight mode the recorder
normally uses :class:`recorder.flight.process.WriterProcess` instead, which keeps the ring in a
separate process so that it reaches the disk even when the trainer is killed; both follow the
:class:`FlightSink` protocol.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar, runtime_checkable

from tracefmt.light import LightStepRecord
from tracefmt.records import StepRecord

__all__ = ["FlightSink", "Ring", "RingSink"]

T = TypeVar("T")


class Ring(Generic[T]):
    """The last ``steps`` items whose sizes add up to at most ``budget`` bytes.

    Adding an item evicts the oldest until both bounds hold again; an item bigger than the
    whole budget is kept alone (the ring never refuses the newest step: it is the one a
    trigger would want) and counted in :attr:`oversized`.
    """

    def __init__(self, steps: int, budget: int, size: Callable[[T], int]) -> None:
        if steps < 1 or budget < 1:
            raise ValueError(f"A ring needs at least one step and one byte, got {steps}, {budget}.")
        self.steps = steps
        self.budget = budget
        self._size = size
        self._items: collections.deque[tuple[T, int]] = collections.deque()
        self.nbytes = 0
        #: the most bytes the ring held at once
        self.peak_bytes = 0
        #: items that alone were bigger than the budget
        self.oversized = 0
        #: items evicted before a release could write them
        self.evicted = 0

    def add(self, item: T) -> None:
        n = self._size(item)
        if n > self.budget:
            self.oversized += 1
        self._items.append((item, n))
        self.nbytes += n
        while len(self._items) > 1 and (len(self._items) > self.steps or self.nbytes > self.budget):
            _, gone = self._items.popleft()
            self.nbytes -= gone
            self.evicted += 1
        self.peak_bytes = max(self.peak_bytes, self.nbytes)

    def drain(self) -> list[T]:
        """Every item, oldest first; the ring is empty afterwards."""
        items = [item for item, _ in self._items]
        self._items.clear()
        self.nbytes = 0
        return items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return (item for item, _ in self._items)


@runtime_checkable
class FlightSink(Protocol):
    """Where a flight recorder's writer thread sends steps (:class:`RingSink`, or
    :class:`recorder.flight.process.WriterProcess`)."""

    def write_step(self, record: StepRecord) -> None: ...

    def hold(self, record: StepRecord) -> None: ...

    def release(self) -> list[int]: ...

    def write_light_step(self, record: LightStepRecord) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...

    @property
    def ring_peak_bytes(self) -> int: ...


class _Sink(Protocol):
    def write_step(self, record: StepRecord) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class RingSink:
    """A ring of held steps in front of ``sink``, in this process.

    Step numbers in a trace strictly increase, so :meth:`release` skips a held step that is
    not newer than the last step written, and :meth:`write_step` refuses one.  The budget
    counts :attr:`StepRecord.nbytes` (the writer process counts the bytes it holds, encoded).
    Light steps go to the sink's ``write_light_step`` when it has one (a ``TraceWriter``
    does) and are dropped otherwise.  ``close`` discards what was held and never released: a
    flight recorder writes the past only when asked.
    """

    def __init__(self, sink: _Sink, *, steps: int, budget: int) -> None:
        self._sink = sink
        self._ring: Ring[StepRecord] = Ring(steps, budget, lambda r: r.nbytes)
        self._last = -1

    @property
    def ring_peak_bytes(self) -> int:
        return self._ring.peak_bytes

    @property
    def held(self) -> list[int]:
        """The step numbers held now, oldest first."""
        return [r.step for r in self._ring]

    def write_step(self, record: StepRecord) -> None:
        if record.step <= self._last:  # as a TraceWriter and the writer process refuse it
            raise ValueError(
                f"Step {record.step} is not after step {self._last}, the last one written; "
                "step numbers in a trace strictly increase."
            )
        self._sink.write_step(record)
        self._last = record.step

    def hold(self, record: StepRecord) -> None:
        self._ring.add(record)

    def release(self) -> list[int]:
        written = []
        for record in self._ring.drain():
            if record.step > self._last:
                self.write_step(record)
                written.append(record.step)
        return written

    def write_light_step(self, record: LightStepRecord) -> None:
        write = getattr(self._sink, "write_light_step", None)
        if write is not None:
            write(record)

    def flush(self) -> None:
        self._sink.flush()

    def close(self) -> None:
        self._ring.drain()
        self._sink.close()
