"""The flight recorder's writer process: ``python -m recorder.flight.writerproc``.

Started by :class:`recorder.flight.process.WriterProcess` (never by hand), in its own session so
that a kill of the trainer's process group does not reach it.  It opens the ``TraceWriter``
itself, keeps the ring of held steps, and writes what the trainer asks for, reading messages
(:mod:`recorder.flight.wire`) from shared memory (:mod:`recorder.flight.channel`).  A held step
stays in the ring as its message (:class:`~recorder.flight.wiredecode.HeldStep`) and is decoded
only if it is written: most fall out of the ring unread.  It imports
neither torch nor pickle: it starts in about the time numpy and h5py take to import.

It ends in one of two ways:

* the trainer's ``close()`` sends ``bye``: the ring is discarded (a flight recorder writes the
  past only when a trigger asks), the file is flushed and closed, the process exits 0;
* the trainer ends without ``bye`` (its socket closes, or its pidfd says it exited): every complete
  message it sent is handled, then the ring is written (steps newer than the last written), then a
  light step numbered one past the last step seen, whose ``process_died`` event says how the
  trainer ended (:mod:`recorder.flight.deathwatch`), then the file is flushed and closed.  An
  alarm bounds this to ``--deadline`` seconds: the process never outlives its trainer by more.
  Where the installed tracefmt cannot write light steps, the event rides on the newest ring step.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import mmap
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from recorder.flight.channel import Consumer, FrameReader, Kind, readable, send_frame
from recorder.flight.deathwatch import TrainerWatch, death_event
from recorder.flight.ring import Ring
from recorder.flight.wire import ControlMessage, LightMessage, OpenMessage, StepMessage
from recorder.flight.wiredecode import Decoder, HeldStep
from tracefmt.light import LightStepRecord, empty_light_rows
from tracefmt.model import Event
from tracefmt.records import StepRecord
from tracefmt.writer import TraceWriter

__all__ = ["main"]


class _Server:
    def __init__(self, args: argparse.Namespace) -> None:
        self.watch = TrainerWatch(args.trainer)
        self.sock = socket.socket(fileno=args.sock)
        self.reader = FrameReader(self.sock)
        mm = mmap.mmap(args.shm, args.shm_bytes)
        os.close(args.shm)
        self.stream = Consumer(mm)
        self.crash_fd: int | None = args.crash if args.crash >= 0 else None
        if self.crash_fd is not None:
            os.set_blocking(self.crash_fd, False)
        self.report = bytearray()
        self.decoder = Decoder()
        self.deadline = args.deadline
        self.writer: TraceWriter | None = None
        self.path = ""
        self.rank = 0
        # held steps stay as they came, decoded only if written (most fall out unread)
        self.ring: Ring[HeldStep] = Ring(args.ring_steps, args.ring_bytes, lambda h: h.nbytes)
        self.last = -1  #: the last full step written
        self.max_seen = -1  #: the highest step number of any message
        self.failure: str | None = None
        self.stats: dict[str, Any] = {
            "steps_written": 0,
            "light_written": 0,
            "held": 0,
            "write_s": 0.0,
            "flush_s": 0.0,
            "decode_s": 0.0,
        }

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> int:
        watched: list[int] = [self.sock.fileno()]
        if self.watch.pidfd is not None:
            watched.append(self.watch.pidfd)
        while True:
            fds = watched + ([self.crash_fd] if self.crash_fd is not None else [])
            ready = readable(fds, None if self.watch.pidfd is not None else 1.0)
            if self.crash_fd is not None and self.crash_fd in ready:
                self._read_crash()
            if self.sock.fileno() in ready:
                code = self._receive(self.reader.read(0))
                if code is not None:
                    return code
                if self.reader.eof:
                    return self._trainer_gone()
            if (self.watch.pidfd is not None and self.watch.pidfd in ready) or (
                self.watch.pidfd is None and self.watch.gone()
            ):
                return self._trainer_gone()

    def _receive(self, frames: Sequence[Any]) -> int | None:
        for frame in frames:
            if frame.kind == Kind.DATA:
                self.stream.head = max(self.stream.head, frame.a)
        messages = self.stream.take()
        if frames:
            with contextlib.suppress(OSError):  # the trainer is gone: the loop finds out
                send_frame(self.sock, Kind.ACK, self.stream.tail, self.ring.peak_bytes)
        for buf in messages:
            t0 = time.perf_counter()
            msg = self.decoder.decode(buf, lazy=True)
            self.stats["decode_s"] += time.perf_counter() - t0
            code = self._handle(msg)
            if code is not None:
                return code
        return None

    def _handle(self, msg: Any) -> int | None:
        if isinstance(msg, OpenMessage):
            return self._open(msg.writer_args)
        if isinstance(msg, HeldStep):
            self.max_seen = max(self.max_seen, msg.step)
        elif isinstance(msg, StepMessage | LightMessage):
            self.max_seen = max(self.max_seen, msg.record.step)
        if isinstance(msg, ControlMessage) and msg.kind == "bye":
            self.ring.drain()
            self._guard("Closing the trace", self._close_writer)
            self._reply(msg.seq)
            return 0
        if self.failure is not None:
            return None  # already reported; keep reading so that the trainer never waits on us
        if isinstance(msg, HeldStep):
            self.ring.add(msg)
            self.stats["held"] += 1
        elif isinstance(msg, StepMessage):
            self._guard(f"Writing step {msg.record.step}", self._write, msg.record)
        elif isinstance(msg, LightMessage):
            self._guard(f"Writing light step {msg.record.step}", self._write_light, msg.record)
        elif msg.kind == "flush":
            if self._guard("Flushing", self._flush):
                self._reply(msg.seq)
        elif msg.kind == "release":
            written: list[int] = []
            if self._guard("Writing the ring", lambda: written.extend(self._release())):
                self._reply(msg.seq, written=written)
        return None

    def _guard(self, what: str, fn: Any, *args: Any) -> bool:
        """Run ``fn``; on an error, report it to the trainer once and stop writing."""
        try:
            fn(*args)
            return True
        except Exception as e:
            text = str(e).rstrip(".")
            self.failure = (
                text if text.startswith(what) else f"{what} failed: {type(e).__name__}: {text}"
            )
            if self.writer is not None:
                with contextlib.suppress(Exception):  # after a failed write: lets go of the file
                    self.writer.close()
            with contextlib.suppress(OSError):
                send_frame(self.sock, Kind.ERROR, payload=(self.failure + ".").encode())
            return False

    def _reply(self, seq: int, **fields: Any) -> None:
        self.stats["ring_peak_bytes"] = self.ring.peak_bytes
        self.stats["evicted"] = self.ring.evicted
        self.stats["oversized"] = self.ring.oversized
        payload = json.dumps({**fields, "stats": self.stats}).encode()
        with contextlib.suppress(OSError):  # the trainer is gone; the loop finds out
            send_frame(self.sock, Kind.REPLY, seq, self.ring.peak_bytes, payload)

    # -- writing ----------------------------------------------------------------------------
    def _open(self, args: dict[str, Any]) -> int | None:
        self.path, self.rank = str(args["path"]), int(args.get("rank", 0))
        try:
            self.writer = TraceWriter(**args)
        except Exception as e:
            with contextlib.suppress(OSError):
                send_frame(self.sock, Kind.ERROR, payload=str(e).encode())
            return 1
        self._reply(0, pid=os.getpid())
        return None

    def _write(self, record: StepRecord) -> None:
        if self.writer is None:
            raise ValueError("no trace is open")
        t0 = time.perf_counter()
        self.writer.write_step(record)
        self.stats["write_s"] += time.perf_counter() - t0
        self.stats["steps_written"] += 1
        self.last = record.step

    def _write_light(self, record: LightStepRecord) -> None:
        write = getattr(self.writer, "write_light_step", None)
        if write is None:
            raise ValueError("this installation of tracefmt cannot write light steps")
        t0 = time.perf_counter()
        write(record)
        self.stats["write_s"] += time.perf_counter() - t0
        self.stats["light_written"] += 1

    def _flush(self) -> None:
        if self.writer is not None:
            t0 = time.perf_counter()
            self.writer.flush()
            self.stats["flush_s"] += time.perf_counter() - t0

    def _release(self, event: Event | None = None) -> list[int]:
        """Write every held step newer than the last written, oldest first.  ``event``, given,
        is added to the newest of them."""
        t0 = time.perf_counter()
        records = [self.decoder.record(h) for h in self.ring.drain() if h.step > self.last]
        self.stats["decode_s"] += time.perf_counter() - t0
        if event is not None and records:
            newest = records[-1]
            records[-1] = dataclasses.replace(newest, events=[*newest.events, event])
        for record in records:
            self._write(record)
        return [r.step for r in records]

    def _close_writer(self) -> None:
        if self.writer is not None:
            self.writer.close()

    # -- the trainer ended without bye --------------------------------------------------------
    def _read_crash(self) -> None:
        if self.crash_fd is None:
            return
        while True:
            try:
                data = os.read(self.crash_fd, 1 << 16)
            except BlockingIOError:
                return
            if not data:
                os.close(self.crash_fd)
                self.crash_fd = None
                return
            self.report += data[: max(0, (1 << 20) - len(self.report))]

    def _trainer_gone(self) -> int:
        signal.alarm(max(1, round(self.deadline)))  # SIGALRM's default action ends this process
        status = self.watch.exit_status()  # first: it may race the trainer's parent
        try:
            while not self.reader.eof:  # what the trainer sent before it died
                frames = self.reader.read(0)
                if not frames:
                    break
                code = self._receive(frames)
                if code is not None:
                    return code
        except Exception as e:  # never lose the ring to a bug in reading the last messages
            sys.stderr.write(f"recorder: reading the trainer's last messages failed: {e!r}\n")
        self._read_crash()
        report = self.report.decode("utf-8", "replace")
        event, reason = death_event(
            status,
            report,
            pid=self.watch.pid,
            rank=self.rank,
            oom=self.watch.oom_kills_since_start(),
            alive=status is None and not self.watch.gone(),
        )
        if report:
            sys.stderr.write(f"recorder: the training process's crash report:\n{report}")
        if self.writer is None or self.failure is not None:
            sys.stderr.write(f"recorder: {reason} Nothing more could be written.\n")
            return 1
        can_light = hasattr(self.writer, "write_light_step")
        try:
            written = self._release(None if can_light else event)
            if can_light:
                light = LightStepRecord(
                    step=self.max_seen + 1,
                    names=[],
                    rows=empty_light_rows(0),
                    events=[event],
                    wall_time=time.time(),
                )
                self._write_light(light)
            self.writer.close()
        except Exception as e:
            sys.stderr.write(f"recorder: {reason} Writing the ring to {self.path!r} failed: {e}\n")
            return 1
        steps = f"steps {written[0]}..{written[-1]}" if written else "no held steps"
        sys.stderr.write(
            f"recorder: {reason} The writer process wrote {steps} and a process_died event "
            f"to {self.path!r}.\n"
        )
        return 0


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m recorder.flight.writerproc", description=__doc__)
    p.add_argument("--trainer", type=int, required=True, help="the trainer's pid")
    p.add_argument("--sock", type=int, required=True, help="descriptor of the control socket")
    p.add_argument("--shm", type=int, required=True, help="descriptor of the shared memory")
    p.add_argument("--shm-bytes", type=int, required=True)
    p.add_argument("--crash", type=int, default=-1, help="descriptor of the crash-report pipe")
    p.add_argument("--ring-steps", type=int, default=8)
    p.add_argument("--ring-bytes", type=int, default=2 << 30)
    p.add_argument("--deadline", type=float, default=60.0)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    # A job being cancelled (SLURM's scancel, a container stop, torchrun tearing down) signals
    # every process it knows; this one must outlive the trainer long enough to write the ring,
    # and its own deadline bounds how long once the trainer is gone.  SIGKILL still ends it.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return _Server(_parse(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
