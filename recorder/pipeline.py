"""From a captured step to disk: building the record and writing it on a background thread.

The training thread hands each :class:`~recorder.capture.RawStep` to a :class:`BackgroundWriter`
and goes on.  The writer thread waits for the step's device results, builds the self-contained
:class:`tracefmt.records.StepRecord` and passes it to a sink (a ``TraceWriter``, or anything with
``write_step``, ``flush`` and ``close``).  The queue is bounded in steps and bytes: when it is full
the training thread waits (``"block"``) or the step is dropped and counted (``"drop"``; the count is
written with the next step).  An error on the writer thread is kept and raised on the training
thread at its next call, as a :class:`tracefmt.errors.TraceError`.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Protocol

import numpy as np
import torch

from recorder.capture import RawStep
from recorder.convert import to_numpy
from tracefmt.errors import TraceError
from tracefmt.records import Graph, GraphBuilder, StepRecord, empty_op_stats

__all__ = ["BackgroundWriter", "GraphCache", "Sink", "build_record"]


class Sink(Protocol):
    """Where finished step records go; ``tracefmt.writer.TraceWriter`` is one."""

    def write_step(self, record: StepRecord) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def _scalar(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TraceError(
                f"A step scalar must have one element, got a tensor of shape {tuple(value.shape)}."
            )
        return float(value.detach().cpu().item())
    return float(value)


def _build_graph(raw: RawStep) -> Graph:
    g = GraphBuilder()
    for (dtype, shape, strides, device, producer, slot, version, offset), role, name in zip(
        raw.tensors, raw.roles, raw.names, strict=True
    ):
        g.add_tensor(
            dtype,
            shape,
            strides=strides,
            device=device,
            role=role,
            name=name,
            producer=None if producer < 0 else producer,
            producer_slot=slot,
            version=version,
            storage_offset=offset,
        )
    for name, phase, module, inputs, outputs, attrs, source in raw.ops:
        g.add_op(
            name, phase=phase, module=module, inputs=inputs, outputs=outputs, attrs=attrs, source=source
        )
    return g.finish()


class GraphCache:
    """The last step's raw rows and graph, so that a step repeating its structure gets its graph as
    a :meth:`Graph.variant` of the last one: only the ops whose arguments changed are encoded
    again, and the digest is carried over (on the FACTS GPT step, 13 + 4 ms of the writer
    thread's CPU become about 3).

    Arguments count as unchanged only when their ``repr`` is equal too: ``1 == 1.0 == True``, but
    the trace must keep which one the op was given.
    """

    def __init__(self) -> None:
        # The last step's rows only (never the RawStep: it holds value copies).
        self._tensors: list[Any] = []
        self._roles: list[Any] = []
        self._names: list[str | None] = []
        self._ops: list[Any] = []
        self._reprs: list[str] = []
        self._graph: Graph | None = None

    def graph(self, raw: RawStep) -> Graph:
        """The graph of ``raw``: a variant of the last step's when only arguments and storage
        offsets differ, else built from scratch; either way what :class:`GraphBuilder` builds."""
        reprs = [repr(op[5]) if op[5] else "" for op in raw.ops]
        graph = self._variant(raw, reprs)
        if graph is None:
            graph = _build_graph(raw)
        self._tensors, self._roles, self._names = raw.tensors, raw.roles, raw.names
        self._ops, self._reprs, self._graph = raw.ops, reprs, graph
        return graph

    def _variant(self, raw: RawStep, reprs: list[str]) -> Graph | None:
        graph = self._graph
        if (
            graph is None
            or len(raw.ops) != len(self._ops)
            or len(raw.tensors) != len(self._tensors)
            or raw.roles != self._roles
            or raw.names != self._names
        ):
            return None
        offsets: dict[int, int] = {}
        for i, (new, old) in enumerate(zip(raw.tensors, self._tensors, strict=True)):
            if new != old:
                if new[:7] != old[:7]:
                    return None
                offsets[i] = new[7]
        attrs: dict[int, Any] = {}
        for i, (new_op, old_op) in enumerate(zip(raw.ops, self._ops, strict=True)):
            if new_op[:5] != old_op[:5] or new_op[6] != old_op[6]:
                return None
            if reprs[i] != self._reprs[i] or new_op[5] != old_op[5]:
                attrs[i] = new_op[5]
        return graph.variant(attrs, offsets)


def build_record(raw: RawStep, graphs: GraphCache | None = None) -> StepRecord:
    """Build the :class:`StepRecord` of a captured step (waits for its device results).

    ``graphs``: the cache of one recording's writer thread (see :class:`GraphCache`)."""
    graph = _build_graph(raw) if graphs is None else graphs.graph(raw)
    op_stats = empty_op_stats(len(raw.ops))
    op_stats["host_ns"] = np.asarray(raw.host_ns, dtype=np.int64)
    for op, start, end, mem in raw.cuda_times:
        end.synchronize()
        op_stats["device_ns"][op] = int(start.elapsed_time(end) * 1e6)
        op_stats["mem_bytes"][op] = mem
    stats, hists = (None, {}) if raw.stats is None else raw.stats.resolve()
    if raw.values_ready is not None:
        raw.values_ready.synchronize()
    values = {i: to_numpy(t) for i, t in raw.values.items()}
    scalars = {k: _scalar(v) for k, v in raw.scalars.items()}
    return StepRecord(
        step=raw.step,
        graph=graph,
        stats=stats,
        op_stats=op_stats,
        values=values,
        histograms=hists,
        events=tuple(raw.events),
        scalars=scalars,
        wall_time=raw.wall_time,
        duration=raw.duration,
        dropped=raw.dropped,
    )


def _raw_nbytes(raw: RawStep) -> int:
    return sum(t.numel() * t.element_size() for t in raw.values.values()) + 200 * len(raw.ops)


_STOP = object()
_FLUSH = object()


class BackgroundWriter:
    """A writer thread draining a bounded queue of captured steps into a sink."""

    def __init__(
        self,
        sink: Sink,
        *,
        target: str,
        max_steps: int = 4,
        max_bytes: int = 1 << 30,
        backpressure: str = "block",
        flush_every_steps: int = 10,
        flush_every_seconds: float = 1.0,
    ) -> None:
        self._sink = sink
        self._graphs = GraphCache()
        self._target = target
        self._max_steps = max_steps
        self._max_bytes = max_bytes
        self._drop = backpressure == "drop"
        self._flush_steps = flush_every_steps
        self._flush_seconds = flush_every_seconds
        self._queue: collections.deque[tuple[Any, int]] = collections.deque()
        self._queued_bytes = 0
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._error_step: int | None = None
        self._reported = False
        self._closed = False
        self.dropped = 0
        self.written = 0
        self._dropped_pending = 0
        self._thread = threading.Thread(target=self._run, name="recorder-writer", daemon=True)
        self._thread.start()

    # -- training thread ---------------------------------------------------------------------
    def submit(self, raw: RawStep) -> bool:
        """Queue a step; returns False when it was dropped (``"drop"`` and the queue is full)."""
        self.check()
        nbytes = _raw_nbytes(raw)
        with self._cond:
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
                item, nbytes = self._queue[0] if self._queue else (None, 0)
            try:
                if item is _STOP:
                    self._finish_sink()
                    break
                if item is not None and item is not _FLUSH and self._error is None:
                    self._write(item)
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
                    self._error_step = getattr(item, "step", None)
            finally:
                if item is not None:
                    with self._cond:
                        self._queue.popleft()
                        self._queued_bytes -= nbytes
                        self._cond.notify_all()

    def _write(self, raw: RawStep) -> None:
        record = build_record(raw, self._graphs)
        self._sink.write_step(record)
        self.written += 1

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
