"""From a captured step to disk: a background thread builds each step's record and writes it.

The training thread hands each :class:`~recorder.captured.RawStep` to a :class:`BackgroundWriter`
and goes on.  The writer thread waits for the step's device results, builds the self-contained
:class:`tracefmt.records.StepRecord` (:mod:`recorder.assemble`) and passes it to a sink (a
``TraceWriter``, or anything with ``write_step``, ``flush`` and ``close``).  The queue is bounded
in steps and bytes: when it is full the training thread waits (``"block"``) or the step is
dropped and counted (``"drop"``; the count is written with the next step).  An error on the
writer thread is kept and raised on the training thread at its next call, as a
:class:`tracefmt.errors.TraceError`.
"""

from __future__ import annotations

import collections
import enum
import threading
import time
from typing import Protocol

import torch

from recorder import assemble
from recorder.captured import RawStep
from recorder.flight.ring import FlightSink
from recorder.moduleinfo import ModuleWatch
from tracefmt.errors import TraceError
from tracefmt.light import LightStepRecord
from tracefmt.moduletable import ModuleTable
from tracefmt.records import StepRecord

__all__ = ["BackgroundWriter", "Sink"]


class Sink(Protocol):
    """Where finished step records go; ``tracefmt.writer.TraceWriter`` is one."""

    def write_step(self, record: StepRecord) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def _raw_nbytes(raw: RawStep) -> int:
    return sum(t.numel() * t.element_size() for t in raw.values.values()) + 200 * len(raw.host_ns)


class _Signal(enum.Enum):
    """What the training thread queues besides steps."""

    STOP = "stop"  #: write what is queued, flush and close the sink, end the thread
    FLUSH = "flush"  #: flush the sink once what is queued before it is written
    RELEASE = "release"  #: write the steps the sink holds in its ring (flight mode)


_STOP, _FLUSH, _RELEASE = _Signal.STOP, _Signal.FLUSH, _Signal.RELEASE
#: A ModuleTable in the queue is the model's modules for the steps queued after it (format 1.5).
_Item = RawStep | LightStepRecord | ModuleTable | _Signal


class BackgroundWriter:
    """A writer thread draining a bounded queue of captured steps into a sink."""

    def __init__(
        self,
        sink: Sink,
        *,
        target: str,
        max_steps: int,
        max_bytes: int,
        backpressure: str,
        flush_every_steps: int,
        flush_every_seconds: float,
    ) -> None:
        self._sink = sink
        self._graphs = assemble.GraphCache()
        self._target = target
        self._max_steps = max_steps
        self._max_bytes = max_bytes
        self._drop = backpressure == "drop"
        self._flush_steps = flush_every_steps
        self._flush_seconds = flush_every_seconds
        self._queue: collections.deque[tuple[_Item, int]] = collections.deque()
        self._queued_bytes = 0
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._error_step: int | None = None
        self._reported = False
        self._closed = False
        self.dropped = 0
        self.written = 0
        #: the step numbers each release wrote, in order (flight mode)
        self.released: list[list[int]] = []
        self._dropped_pending = 0
        self._watch = ModuleWatch(None)  # the model whose modules the records carry (training thread)
        self._modules: ModuleTable | None = None  # its latest table (writer thread)
        self._thread = threading.Thread(target=self._run, name="recorder-writer", daemon=True)
        self._thread.start()

    @property
    def sink(self) -> Sink:
        """Where the steps go."""
        return self._sink

    # -- training thread ---------------------------------------------------------------------
    def watch_modules(self, model: torch.nn.Module | None) -> None:
        """Give every step record written from now on the module table of ``model`` (a
        ``torch.nn.Module``; None: no module metadata), checked for changes at each
        :meth:`submit` (:class:`~recorder.moduleinfo.ModuleWatch`)."""
        self._watch = ModuleWatch(model)

    def submit(self, raw: RawStep) -> bool:
        """Queue a step; returns False when it was dropped (``"drop"`` and the queue is full)."""
        self.check()
        nbytes = _raw_nbytes(raw)
        table = self._watch.changed()  # on the training thread, which owns the model
        with self._cond:
            if table is not None:  # ahead of the step, even if the step is dropped: it is small
                self._queue.append((table, 0))
            while self._full(nbytes):
                if self._drop:
                    self.dropped += 1
                    self._dropped_pending += 1
                    return False
                if self._error is not None:
                    break
                self._cond.wait(0.1)
            raw.dropped, self._dropped_pending = self._dropped_pending, 0
            self._queue.append((raw, nbytes))
            self._queued_bytes += nbytes
            self._cond.notify_all()
        return True

    def submit_light(self, record: LightStepRecord) -> None:
        """Queue a light step (flight mode; small, so it never waits for room or is dropped)."""
        self._put(record, record.nbytes)

    def release(self) -> None:
        """Have the sink write the steps its ring holds, after what is queued before."""
        self._put(_RELEASE, 0)

    def _put(self, item: _Item, nbytes: int) -> None:
        self.check()
        with self._cond:
            self._queue.append((item, nbytes))
            self._queued_bytes += nbytes
            self._cond.notify_all()

    def _full(self, nbytes: int) -> bool:
        if not self._queue:
            return False
        return len(self._queue) >= self._max_steps or self._queued_bytes + nbytes > self._max_bytes

    def check(self) -> None:
        """Raise the writer thread's error (once) as a :class:`TraceError`."""
        error = self._error
        if error is None or self._reported:
            return
        self._reported = True
        step = "" if self._error_step is None else f" while writing step {self._error_step}"
        what = (
            str(error)
            if isinstance(error, TraceError)
            else (
                f"{type(error).__name__}: {error} (not an I/O error: a bug of the sink or the "
                "recorder; please report it with the traceback below)"
            )
        )
        raise TraceError(
            f"The trace writer for {self._target!r} failed{step}: "
            f"{what.rstrip('.')}. The recorder has stopped recording; the steps "
            "flushed before the failure are kept."
        ) from error

    @property
    def failed(self) -> bool:
        return self._error is not None

    def flush(self) -> None:
        """Wait until every queued step has been written and flushed."""
        with self._cond:
            self._queue.append((_FLUSH, 0))
            self._cond.notify_all()
            while any(item is _FLUSH for item, _ in self._queue) and self._thread.is_alive():
                self._cond.wait(0.1)
        self.check()

    def close(self) -> None:
        """Write everything queued, flush and close the sink, stop the thread.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._cond:
            self._queue.append((_STOP, 0))
            self._cond.notify_all()
        self._thread.join()

    # -- writer thread -----------------------------------------------------------------------
    def _run(self) -> None:
        unflushed = 0
        last_flush = time.monotonic()
        while True:
            with self._cond:
                while not self._queue:
                    timeout = self._flush_seconds - (time.monotonic() - last_flush)
                    if unflushed and timeout <= 0:
                        break
                    self._cond.wait(None if not unflushed else max(timeout, 0.01))
                item: _Item | None = None
                nbytes = 0
                if self._queue:
                    item, nbytes = self._queue[0]
            try:
                if item is _STOP:
                    self._finish_sink()
                    break
                if isinstance(item, ModuleTable):
                    self._modules = item
                elif self._error is None and not isinstance(item, _Signal | None):
                    self._write(item)
                    # a step held in the ring wrote nothing: it does not bring a flush nearer
                    unflushed += not (isinstance(item, RawStep) and item.hold)
                if item is _RELEASE and self._error is None:
                    self.released.append(self._flight_sink().release())
                    unflushed += 1
                if (
                    unflushed
                    and self._error is None
                    and (
                        item is _FLUSH
                        or unflushed >= self._flush_steps
                        or time.monotonic() - last_flush >= self._flush_seconds
                    )
                ):
                    self._sink.flush()
                    unflushed, last_flush = 0, time.monotonic()
            except BaseException as e:
                if self._error is None:
                    self._error = e
                    self._error_step = item.step if isinstance(item, RawStep | LightStepRecord) else None
            finally:
                if item is not None:
                    with self._cond:
                        self._queue.popleft()
                        self._queued_bytes -= nbytes
                        self._cond.notify_all()

    def _write(self, item: RawStep | LightStepRecord) -> None:
        if isinstance(item, LightStepRecord):
            write_light = getattr(self._sink, "write_light_step", None)
            if write_light is not None:  # a user's sink may take full steps only
                write_light(item)
            return
        record = assemble.build_record(item, self._graphs)
        record.modules = self._modules
        if item.hold:
            self._flight_sink().hold(record)
            return
        self._sink.write_step(record)
        self.written += 1

    def _flight_sink(self) -> FlightSink:
        if not isinstance(self._sink, FlightSink):
            raise TypeError(f"{type(self._sink).__name__} keeps no ring of steps (flight mode).")
        return self._sink

    def _finish_sink(self) -> None:
        try:
            if self._error is None:
                self._sink.flush()
        except BaseException as e:
            self._error = e
        finally:
            try:
                self._sink.close()
            except BaseException as e:
                if self._error is None:
                    self._error = e
