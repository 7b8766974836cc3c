"""A flight sink whose ring and trace writing live in a separate process that outlives the trainer.

:class:`WriterProcess` starts ``python -m recorder.flight.writerproc`` (:mod:`subprocess`, not
:mod:`multiprocessing`: nothing is pickled, and it works the same under torchrun), in a session of
its own so that torchrun's kill of the trainer's process group does not reach it.  The writer
process opens the ``TraceWriter``, keeps the ring of held steps and writes; the trainer's writer
thread only encodes each record into shared memory (:mod:`recorder.flight.wire`,
:mod:`recorder.flight.channel`), a copy of its arrays and a small JSON header.

When the trainer dies without closing (SIGKILL, the OOM killer, a segfault, ``os._exit``), the
writer process still holds the ring: it writes it, then a light step whose ``process_died`` event
names the signal or exit code, and exits within ``deadline`` seconds
(:mod:`recorder.flight.deathwatch` says how the cause is found, and how reliably).  For a crash
report of fatal signals the trainer points :mod:`faulthandler` at a pipe to the writer process,
unless the user has enabled faulthandler already.

A writer process that dies, or fails to write, is reported by the trainer's next call as a
:class:`~tracefmt.errors.TraceError`; :meth:`WriterProcess.flush` returns only once the writer
process has flushed and fsynced, so a step the trainer saw flushed is on disk.

Example::

    sink = WriterProcess("runs/exp1/rank-00000.tft.h5", ring_steps=8)
    sink.hold(record)          # kept in the writer process's ring
    sink.release()             # a trigger fired: write the ring
    sink.close()               # the unreleased ring is discarded
"""

from __future__ import annotations

import contextlib
import faulthandler
import fcntl
import json
import mmap
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import recorder
import tracefmt
from recorder.flight.channel import FrameReader, Kind, Producer, send_frame
from recorder.flight.deathwatch import describe_exit
from recorder.flight.wire import Encoder, Message, control
from tracefmt.errors import TraceError, WriterClosedError
from tracefmt.light import LightStepRecord
from tracefmt.records import StepRecord
from tracefmt.writer import TraceWriter

__all__ = ["WriterProcess"]

_F_SETPIPE_SZ = 1031
#: the pid whose faulthandler points at a writer process (a forked child lets go of it)
_crash_owner: list[int] = []


def _forked_child() -> None:
    if _crash_owner and _crash_owner[0] != os.getpid():
        _crash_owner.clear()
        faulthandler.disable()  # the pipe is the parent's: a child's crash is not the trainer's


os.register_at_fork(after_in_child=_forked_child)


def _child_env() -> dict[str, str]:
    """The environment of the writer process: this one, with the packages' roots on its path,
    and one thread for numpy's BLAS (which would otherwise start one per core, for nothing)."""
    roots = [str(Path(m.__file__ or "").resolve().parents[1]) for m in (recorder, tracefmt)]
    old = os.environ.get("PYTHONPATH", "")
    parts = list(dict.fromkeys([*roots, *([old] if old else [])]))
    threads = {k: "1" for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return {**os.environ, **threads, "PYTHONPATH": os.pathsep.join(parts)}


class WriterProcess:
    """A flight sink (:class:`recorder.flight.ring.FlightSink`) backed by a writer process.

    Takes the :class:`~tracefmt.writer.TraceWriter` arguments, plus: ``ring_steps`` and
    ``ring_bytes``, the ring's bounds (oldest evicted first; a single step bigger than
    ``ring_bytes`` is kept alone, evicting everything else, and counted as ``oversized`` in
    :attr:`writer_stats`); ``shm_bytes``, the shared buffer (bigger records stream through it);
    ``deadline``, the most seconds the writer process spends writing after the trainer died.
    Use it from one thread at a time (a lock makes that so).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        run_id: str | None = None,
        rank: int = 0,
        world_size: int = 1,
        values_filter: str = "none",
        hist_bins: int = 0,
        provenance_extra: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        fsync: bool = True,
        ring_steps: int = 8,
        ring_bytes: int = 2 << 30,
        shm_bytes: int = 64 << 20,
        deadline: float = 60.0,
        start_timeout: float = 120.0,
        reply_timeout: float = 600.0,
    ) -> None:
        if ring_steps < 1 or ring_bytes < 1:
            raise ValueError(
                f"The ring needs at least one step and one byte, got {ring_steps}, {ring_bytes}."
            )
        if shm_bytes < 1 << 16:
            raise ValueError(f"shm_bytes must be at least 64 KiB, not {shm_bytes}.")
        self.path = Path(path).absolute()
        #: how long a flush, a release or room in the buffer may take before the writer
        #: process counts as stuck (a hung network file system): then a TraceError, never a hang
        self.reply_timeout = reply_timeout
        self._lock = threading.RLock()
        self._closed = False
        self._failure: str | None = None
        self._reported = False
        self._seq = 0
        self._bye: int | None = None  #: the sequence number of ``bye``, once sent
        self._replies: dict[int, dict[str, Any]] = {}
        self._ring_peak = 0
        self._stats: dict[str, Any] = {}
        self._last_written = -1
        self._encoder = Encoder()
        self._crash_w = -1
        extra = dict(provenance_extra or {})
        torch = sys.modules.get("torch")
        version = getattr(torch, "__version__", None)
        if "torch" not in extra and version:
            extra["torch"] = str(version)
        self._sock, child = socket.socketpair()
        memfd = os.memfd_create("tracefmt-flight", os.MFD_CLOEXEC)
        crash_r = -1
        if not faulthandler.is_enabled():
            crash_r, self._crash_w = os.pipe()
        try:
            os.ftruncate(memfd, shm_bytes)
            self._mm = mmap.mmap(memfd, shm_bytes)
            cmd = [
                sys.executable, "-m", "recorder.flight.writerproc",
                "--trainer", str(os.getpid()), "--sock", str(child.fileno()),
                "--shm", str(memfd), "--shm-bytes", str(shm_bytes), "--crash", str(crash_r),
                "--ring-steps", str(ring_steps), "--ring-bytes", str(ring_bytes),
                "--deadline", str(deadline),
            ]  # fmt: skip
            fds = [child.fileno(), memfd, *([crash_r] if crash_r >= 0 else [])]
            self._proc = subprocess.Popen(
                cmd,
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
                env=_child_env(),
            )
        except OSError as e:
            self._sock.close()
            if hasattr(self, "_mm"):
                self._mm.close()
            if self._crash_w >= 0:
                os.close(self._crash_w)
            raise TraceError(f"Cannot start the flight recorder's writer process: {e}.") from e
        finally:
            child.close()
            os.close(memfd)
            if crash_r >= 0:
                os.close(crash_r)
        self._producer = Producer(self._mm)
        self._reader = FrameReader(self._sock)
        args = {
            "path": str(self.path),
            "run_id": run_id,
            "rank": rank,
            "world_size": world_size,
            "values_filter": values_filter,
            "hist_bins": hist_bins,
            "provenance_extra": extra,
            "overwrite": overwrite,
            "fsync": fsync,
        }
        try:
            self._send(control("open", args=args))
            self._wait_reply(0, timeout=start_timeout)
        except BaseException:
            self._reported = True
            self._shutdown()
            raise
        if self._crash_w >= 0:
            self._take_crash_reports()

    def _take_crash_reports(self) -> None:
        fd = self._crash_w
        os.set_blocking(fd, False)  # a crash never blocks on a full pipe
        with contextlib.suppress(OSError):  # else the default 64 KiB, which holds most reports
            fcntl.fcntl(fd, _F_SETPIPE_SZ, 1 << 20)
        faulthandler.enable(file=fd, all_threads=True)
        _crash_owner[:] = [os.getpid()]

    # -- properties ----------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        """The writer process's pid."""
        return self._proc.pid

    @property
    def ring_peak_bytes(self) -> int:
        """The most bytes the ring held at once, as of the writer process's last answer."""
        return self._ring_peak

    @property
    def writer_stats(self) -> dict[str, Any]:
        """The writer process's counters as of its last answer to :meth:`flush`, :meth:`release`
        or :meth:`close`: steps written, seconds in ``write_step``, in ``flush`` and decoding."""
        return dict(self._stats)

    # -- the flight sink -------------------------------------------------------------------------
    def write_step(self, record: StepRecord) -> None:
        """Write ``record`` to the trace now (steps in strictly increasing order)."""
        with self._lock:
            self._check()
            if record.step <= self._last_written:
                raise ValueError(
                    f"Step {record.step} was written after step {self._last_written}; steps "
                    "must be written in increasing order."
                )
            record.check()
            self._send(self._encoder.step(record, hold=False))
            self._last_written = record.step

    def hold(self, record: StepRecord) -> None:
        """Keep ``record`` in the writer process's ring."""
        with self._lock:
            self._check()
            record.check()
            self._send(self._encoder.step(record, hold=True))

    def release(self) -> list[int]:
        """Write every held step newer than the last step written, oldest first; empty the ring.
        Returns the step numbers written."""
        with self._lock:
            written = [int(s) for s in self._request("release")["written"]]
            if written:
                self._last_written = max(self._last_written, written[-1])
            return written

    def write_light_step(self, record: LightStepRecord) -> None:
        with self._lock:
            self._check()
            if not hasattr(TraceWriter, "write_light_step"):
                raise TraceError(
                    "This installation of tracefmt cannot write light steps; update it to "
                    "record in flight mode."
                )
            record.check()
            self._send(self._encoder.light(record))

    def flush(self) -> None:
        """Return once everything sent before is written, flushed and fsynced by the writer
        process."""
        with self._lock:
            self._request("flush")

    def close(self) -> None:
        """Discard the unreleased ring, close the trace, end the writer process.  Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._failure is None:
                    self._request("bye", closing=True)
            finally:
                self._shutdown()
            if self._failure is not None and not self._reported:
                self._raise()

    def __enter__(self) -> WriterProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- talking to the writer process --------------------------------------------------------
    def _check(self, closing: bool = False) -> None:
        if self._closed and not closing:
            raise WriterClosedError(
                f"The flight recorder's writer for {str(self.path)!r} is closed; open a new one "
                "to write more steps."
            )
        if self._failure is None:
            self._pump(0)
        if self._failure is not None:
            self._raise()

    def _raise(self) -> None:
        self._reported = True
        raise TraceError(
            f"The flight recorder's writer process for {str(self.path)!r} {self._failure}. "
            "The steps it flushed before are on disk; the steps it held are lost, and nothing "
            "more is recorded."
        )

    def _pump(self, timeout: float) -> None:
        for frame in self._reader.read(timeout):
            if frame.kind == Kind.ACK:
                self._producer.tail = max(self._producer.tail, frame.a)
                self._ring_peak = frame.b
            elif frame.kind == Kind.REPLY:
                reply = json.loads(frame.payload)
                self._replies[frame.a] = reply
                self._stats = reply.get("stats", self._stats)
                self._ring_peak = frame.b
            elif frame.kind == Kind.ERROR and self._failure is None:
                self._failure = "failed: " + frame.payload.decode("utf-8", "replace").rstrip(".")
        said_bye = self._bye is not None and self._bye in self._replies
        if (
            self._failure is None
            and not said_bye
            and (self._reader.eof or self._proc.poll() is not None)
        ):
            self._failure = "ended unexpectedly (" + self._ended() + ")"

    def _ended(self) -> str:
        try:
            return describe_exit(self._proc.wait(timeout=5))
        except subprocess.TimeoutExpired:
            return "it closed its connection but is still running"

    def _send(self, msg: Message) -> None:
        self._producer.write(msg, self._publish, self._wait_space)

    def _publish(self, head: int) -> None:
        try:
            send_frame(self._sock, Kind.DATA, head)
        except OSError:
            self._pump(0)
            if self._failure is None:
                self._failure = "ended unexpectedly (" + self._ended() + ")"
            self._raise()

    def _wait_space(self) -> None:
        tail = self._producer.tail
        deadline = time.monotonic() + self.reply_timeout
        while self._producer.tail == tail:
            self._pump(0.25)
            if self._failure is None and time.monotonic() > deadline:
                self._failure = f"took no data for {self.reply_timeout:g} seconds (stuck?)"
            if self._failure is not None:
                self._raise()

    def _request(self, kind: str, closing: bool = False) -> dict[str, Any]:
        self._check(closing)
        self._seq += 1
        seq = self._seq
        if kind == "bye":
            self._bye = seq
        self._send(control(kind, seq))
        return self._wait_reply(seq, self.reply_timeout)

    def _wait_reply(self, seq: int, timeout: float | None = None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while seq not in self._replies:
            self._pump(0.25)
            if self._failure is not None and seq not in self._replies:
                self._raise()
            if deadline is not None and time.monotonic() > deadline:
                self._failure = f"did not answer within {timeout:g} seconds (stuck?)"
                self._raise()
        return self._replies.pop(seq)

    def _shutdown(self) -> None:
        """Let go of everything: faulthandler's pipe, the socket, the shared memory, the child."""
        if self._crash_w >= 0:
            if _crash_owner and _crash_owner[0] == os.getpid():
                faulthandler.disable()
                _crash_owner.clear()
            os.close(self._crash_w)
            self._crash_w = -1
        self._sock.close()
        self._producer.close()
        self._mm.close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
