"""The flight recorder's channel to its writer process: a byte stream through shared memory, and
small frames over a Unix socket.

The shared memory is an anonymous ``memfd`` (``os.memfd_create``) that both processes map; the
writer process gets its descriptor through ``Popen(pass_fds=...)``.  Nothing registers it
anywhere (``multiprocessing.shared_memory`` would register it with a resource tracker that
unlinks it and warns at exit), and the kernel frees it when the last process lets go.

The trainer writes messages (:mod:`recorder.flight.wire`) into the buffer as one endless
stream: ``head`` counts every byte it ever wrote, and byte ``n`` of the stream lies at
``n % capacity``.  After a message it sends a ``DATA`` frame carrying ``head``.  The writer
process copies the new bytes out, advances ``tail`` and answers ``ACK(tail)``: the trainer may
overwrite everything below ``tail``.  A message bigger than the buffer streams through it in
pieces, the trainer waiting for acknowledgements as it goes.

Every frame is :data:`FRAME` (kind, payload length, two integers) followed by its payload (UTF-8:
JSON, or a sentence for ``ERROR``).
"""

from __future__ import annotations

import enum
import mmap
import select
import socket
import struct
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from recorder.flight.wire import Message

__all__ = [
    "FRAME",
    "Consumer",
    "Frame",
    "FrameReader",
    "Kind",
    "Producer",
    "readable",
    "send_frame",
]


def readable(fds: list[int], timeout: float | None) -> list[int]:
    """Which of ``fds`` can be read within ``timeout`` seconds (None: wait; 0: now).  Through
    ``poll``, not ``select``: a large job's descriptors go past ``select``'s limit of 1024."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    ms = None if timeout is None else max(0, int(timeout * 1000))
    return [fd for fd, _ in poller.poll(ms)]


FRAME = struct.Struct("<IIQQ")
#: the largest message the writer process accepts (a sanity bound on a corrupted length)
MAX_MESSAGE = 1 << 40


class Kind(enum.IntEnum):
    DATA = 1  #: trainer: ``a`` = head
    ACK = 2  #: writer: ``a`` = tail, ``b`` = the ring's peak bytes
    REPLY = 3  #: writer: ``a`` = the request's sequence number, ``b`` = ring peak; payload JSON
    ERROR = 4  #: writer: payload is a sentence saying what failed


class Frame(NamedTuple):
    kind: int
    a: int
    b: int
    payload: bytes


def send_frame(sock: socket.socket, kind: Kind, a: int = 0, b: int = 0, payload: bytes = b"") -> None:
    sock.sendall(FRAME.pack(int(kind), len(payload), a, b) + payload)


class FrameReader:
    """Frames from a socket; :attr:`eof` once the other side has closed it."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()
        self.eof = False

    def read(self, timeout: float | None) -> list[Frame]:
        """The frames that arrive within ``timeout`` seconds (0: only those there now)."""
        if not self.eof:
            ready = readable([self._sock.fileno()], timeout)
            while ready:
                try:
                    data = self._sock.recv(1 << 16, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                except OSError:  # ECONNRESET: the other side is gone
                    data = b""
                if not data:
                    self.eof = True
                    break
                self._buf += data
        frames = []
        while len(self._buf) >= FRAME.size:
            kind, n, a, b = FRAME.unpack_from(self._buf, 0)
            if len(self._buf) < FRAME.size + n:
                break
            frames.append(Frame(kind, a, b, bytes(self._buf[FRAME.size : FRAME.size + n])))
            del self._buf[: FRAME.size + n]
        return frames


class Producer:
    """The trainer's end of the stream."""

    def __init__(self, mm: mmap.mmap) -> None:
        self._buf: np.ndarray | None = np.frombuffer(mm, dtype=np.uint8)
        self.capacity = len(mm)
        self.head = 0
        self.tail = 0  #: what the writer process has acknowledged

    def write(self, msg: Message, publish: Callable[[int], None], wait: Callable[[], None]) -> None:
        """Copy ``msg`` into the stream; ``publish(head)`` tells the writer process, ``wait()``
        returns once it has acknowledged more (or raises)."""
        start = self.head
        for offset, data in msg.pieces:
            self._advance(start + offset - self.head, None, publish, wait)  # padding
            self._advance(data.size, data, publish, wait)
        self._advance(start + msg.total - self.head, None, publish, wait)
        publish(self.head)

    def _advance(
        self,
        n: int,
        src: np.ndarray | None,
        publish: Callable[[int], None],
        wait: Callable[[], None],
    ) -> None:
        buf = self._buf
        if buf is None:
            raise ValueError("The shared-memory stream is closed.")
        if src is None and n <= self.capacity - (self.head - self.tail):
            self.head += n  # padding is never read: nothing to copy
            return
        done = 0
        while done < n:
            free = self.capacity - (self.head - self.tail)
            if free == 0:
                publish(self.head)
                wait()
                continue
            at = self.head % self.capacity
            k = min(n - done, free, self.capacity - at)
            if src is not None:
                buf[at : at + k] = src[done : done + k]
            self.head += k
            done += k

    def close(self) -> None:
        self._buf = None  # releases the export, so the mmap can close


class Consumer:
    """The writer process's end: copies messages out of the stream as they arrive."""

    def __init__(self, mm: mmap.mmap) -> None:
        self._buf: np.ndarray | None = np.frombuffer(mm, dtype=np.uint8)
        self.capacity = len(mm)
        self.head = 0
        self.tail = 0
        self._msg: bytearray | None = None
        self._filled = 0
        self.received = 0  #: bytes of complete messages

    def take(self) -> list[bytearray]:
        """Every message complete up to :attr:`head`, copied out; the stream's space below
        :attr:`tail` is free again."""
        out = []
        while self.head > self.tail:
            if self._msg is None:
                if self.head - self.tail < 8:
                    break
                size = np.empty(8, dtype=np.uint8)
                self._copy(size, 8)
                total = int(size.view("<u8")[0])
                if not 16 <= total <= MAX_MESSAGE:
                    raise ValueError(f"A message of {total} bytes in the stream; the stream is corrupt.")
                self._msg = bytearray(total)
                self._msg[:8] = size.tobytes()
                self._filled = 8
            msg = self._msg
            k = min(len(msg) - self._filled, self.head - self.tail)
            dest = np.frombuffer(msg, dtype=np.uint8)[self._filled : self._filled + k]
            self._copy(dest, k)
            del dest
            self._filled += k
            if self._filled == len(msg):
                out.append(msg)
                self.received += len(msg)
                self._msg = None
        return out

    def _copy(self, dest: np.ndarray, n: int) -> None:
        buf = self._buf
        if buf is None:
            raise ValueError("The shared-memory stream is closed.")
        done = 0
        while done < n:
            at = self.tail % self.capacity
            k = min(n - done, self.capacity - at)
            dest[done : done + k] = buf[at : at + k]
            self.tail += k
            done += k

    @property
    def partial(self) -> bool:
        """A message has begun but not all of it has arrived."""
        return self._msg is not None

    def close(self) -> None:
        self._buf = None
