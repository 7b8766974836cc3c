"""How the writer process learns that its trainer died, and of what.

The trainer is the writer process's parent, not its child, so ``waitpid`` cannot tell the writer
how it ended.  What can, unprivileged, on Linux:

* **The trainer's exit status**, in ``waitpid`` form (``os.WTERMSIG``, ``os.WEXITSTATUS``), from
  two places that together cover the whole time after death:

  - while the trainer is a zombie (dead, not yet reaped by its parent): field 52 of
    ``/proc/PID/stat`` (``exit_code``, Linux 3.5+), read through a descriptor opened at start;
  - once its parent has reaped it: ``ioctl(pidfd, PIDFD_GET_INFO)`` with ``PIDFD_INFO_EXIT``
    (Linux 6.15+), on a pidfd (``os.pidfd_open``, Linux 5.3+) opened at start while the
    trainer was alive.

  On a kernel from 6.15 on, the status is therefore always found: SIGKILL, SIGSEGV, SIGTERM,
  ``os._exit(3)`` are each named exactly (80 of 80 SIGKILLs, 10 of 10 ``os._exit``, measured on
  Linux 6.18 with the parent ``wait()``-ing at once).  On an older kernel only the zombie window
  is left, and a parent that reaps at once (``subprocess.run``, torchrun's agent) often wins
  that race: the same runs without ``PIDFD_INFO_EXIT`` named 56 of 90 SIGKILLs and 27 of 40
  ``os._exit`` (2 busy vCPUs); the rest say the status is unknown.  ``exit_code`` is set early
  in the kernel's exit path, so a non-zero one is read as soon as the trainer's socket closes,
  before it is even a zombie.
* **A fatal signal's Python traceback**: the trainer points :mod:`faulthandler` at a pipe to the
  writer process (only when the user has not enabled faulthandler), so a SIGSEGV, SIGBUS, SIGFPE,
  SIGABRT or SIGILL arrives as ``Fatal Python error: Segmentation fault`` and the stacks of the
  trainer's threads.  That names the signal even where the exit status is lost, and the writer
  echoes the text to its stderr (the trainer's), where faulthandler would have written it.
* **The OOM killer**: SIGKILL does not say who sent it.  The number of processes the kernel's OOM
  killer killed in the trainer's cgroup (``memory.events`` ``oom_kill``, cgroup v2; else the
  system-wide ``/proc/vmstat`` count) is read at start and at death: when it grew, the OOM
  killer is the likely sender.  Another process of the cgroup killed meanwhile makes this a guess,
  and the event says "likely".

What cannot be told apart without the exit status: SIGKILL from ``os._exit`` or a C library's
``exit()`` (no code of the trainer runs in any of them).  The event then says so, with
``"signal": null``.  The trainer's death is seen through its pidfd as well as its socket: a
child it forked (a DataLoader worker) keeps a copy of the socket open, and would delay the
end of file until it exits.  Nothing helps when the writer process dies with the trainer (a
job scheduler killing the whole cgroup, or the OOM killer choosing the writer process).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import struct
import time
from typing import Any

from recorder.flight.channel import readable
from tracefmt.events import PROCESS_DIED, trigger_event
from tracefmt.model import Event

__all__ = ["TrainerWatch", "crash_signal", "death_event", "describe_exit", "oom_kills"]

# struct pidfd_info (linux/pidfd.h): u64 mask, u64 cgroupid, 11 x u32 ids, s32 exit_code at 60
_PIDFD_INFO_SIZE = 64
_PIDFD_INFO_EXIT = 1 << 3
_PIDFD_GET_INFO = (3 << 30) | (_PIDFD_INFO_SIZE << 16) | (0xFF << 8) | 11  # _IOWR(0xFF, 11, ...)
_FAULT_NAMES = {
    "Segmentation fault": "SIGSEGV",
    "Bus error": "SIGBUS",
    "Floating-point exception": "SIGFPE",
    "Floating point exception": "SIGFPE",
    "Aborted": "SIGABRT",
    "Illegal instruction": "SIGILL",
}
_FAULT_RE = re.compile(r"Fatal Python error: (" + "|".join(map(re.escape, _FAULT_NAMES)) + r")")
_WHAT = {
    "SIGSEGV": "crashed with SIGSEGV (a segmentation fault: an invalid memory access)",
    "SIGBUS": "crashed with SIGBUS (a bus error: an invalid memory access)",
    "SIGFPE": "crashed with SIGFPE (an arithmetic fault)",
    "SIGABRT": "aborted (SIGABRT: a failed assertion or abort() in native code)",
    "SIGILL": "crashed with SIGILL (an illegal instruction)",
    "SIGKILL": (
        "was killed by SIGKILL (sent by another process, such as a job scheduler, torchrun "
        "after its grace period or kill -9, or by the kernel's OOM killer)"
    ),
}
#: how much of a crash report an event keeps
MAX_TRACEBACK = 8192


def oom_kills(pid: int) -> int | None:
    """Processes killed by the OOM killer so far: in ``pid``'s cgroup (v2), else system-wide."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
            lines = f.read().splitlines()
        path = next(line[3:] for line in lines if line.startswith("0::"))
        with open(f"/sys/fs/cgroup{path}/memory.events", encoding="utf-8") as f:
            text = f.read()
    except (OSError, StopIteration):
        try:
            with open("/proc/vmstat", encoding="utf-8") as f:
                text = f.read()
        except OSError:
            return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return None


class TrainerWatch:
    """Watches the trainer ``pid`` (this process's parent) from the writer process."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.pidfd: int | None = None
        self._stat: int | None = None
        with contextlib.suppress(OSError, AttributeError):  # kernel < 5.3, or no such process
            self.pidfd = os.pidfd_open(pid)
        with contextlib.suppress(OSError):
            self._stat = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        #: the trainer was alive when the watch began (it started this process)
        self.alive_at_start = os.getppid() == pid
        self._oom_start = oom_kills(pid)

    def gone(self) -> bool:
        """Whether the trainer has exited (without waiting)."""
        if self.pidfd is not None:
            return bool(readable([self.pidfd], 0))
        return os.getppid() != self.pid

    def exit_status(self, timeout: float = 2.0) -> int | None:
        """The trainer's exit status (``waitpid`` form), or ``None`` when it cannot be read.

        Call it as soon as the trainer is seen gone: on a kernel without ``PIDFD_INFO_EXIT`` it
        races the trainer's parent reaping it.  ``exit_code`` is set early in the kernel's exit
        path, before the trainer's descriptors close, so a non-zero one is taken even before the
        trainer is a zombie.  Waits up to ``timeout`` for the exit to complete (and, where only
        the pidfd can tell, for the parent to reap it).
        """
        deadline = time.monotonic() + timeout
        info_works = self.pidfd is not None
        while True:
            status, reaped = self._from_proc()
            if status is not None:
                return status
            if info_works and self.pidfd is not None:
                status, info_works = self._from_pidfd(self.pidfd)
                if status is not None:
                    return status
            if (reaped and not info_works) or time.monotonic() >= deadline:
                return None
            time.sleep(0.0005)

    def _from_proc(self) -> tuple[int | None, bool]:
        """(status once set, whether the process is gone from /proc)."""
        if self._stat is None:
            return None, True
        try:
            data = os.pread(self._stat, 4096, 0)
        except OSError:
            return None, True
        fields = data[data.rfind(b")") + 2 :].split()
        if len(fields) < 50:
            return None, False
        code = int(fields[49])
        if code == 0 and fields[0] not in (b"Z", b"X"):
            return None, False  # not set yet, or exit(0) not yet complete
        return code, False

    @staticmethod
    def _from_pidfd(pidfd: int) -> tuple[int | None, bool]:
        """(status once reaped, whether this kernel has PIDFD_INFO_EXIT)."""
        buf = bytearray(_PIDFD_INFO_SIZE)
        struct.pack_into("<Q", buf, 0, _PIDFD_INFO_EXIT)
        try:
            fcntl.ioctl(pidfd, _PIDFD_GET_INFO, buf, True)
        except OSError:
            return None, False
        (mask,) = struct.unpack_from("<Q", buf, 0)
        if not mask & _PIDFD_INFO_EXIT:
            return None, True  # not reaped yet
        (code,) = struct.unpack_from("<i", buf, 60)
        return code, True

    def oom_kills_since_start(self) -> int | None:
        now = oom_kills(self.pid) if self._oom_start is not None else None
        return None if now is None or self._oom_start is None else max(now - self._oom_start, 0)

    def close(self) -> None:
        for fd in (self.pidfd, self._stat):
            if fd is not None:
                os.close(fd)
        self.pidfd = self._stat = None


def describe_exit(returncode: int) -> str:
    """``Popen.returncode`` in words: ``"killed by SIGKILL"``, ``"exit code 1"``."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def crash_signal(report: str) -> str | None:
    """The signal a faulthandler report names (``"SIGSEGV"``), or ``None``."""
    m = _FAULT_RE.search(report)
    return None if m is None else _FAULT_NAMES[m.group(1)]


def death_event(
    status: int | None, report: str, *, pid: int, rank: int, oom: int | None, alive: bool = False
) -> tuple[Event, str]:
    """The ``process_died`` event for a trainer that ended without closing the recorder, and
    the reason alone (a sentence).  ``alive``: the trainer closed its end of the channel but
    has not exited."""
    fields: dict[str, Any] = {"pid": pid, "signal": None, "exit_code": None}
    sig: str | None = None
    if status is not None and os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status)).name
        fields["core_dumped"] = os.WCOREDUMP(status)
        fields["source"] = "exit status"
    elif status is not None and os.WIFEXITED(status):
        fields["exit_code"] = os.WEXITSTATUS(status)
        fields["source"] = "exit status"
    elif crash_signal(report) is not None:
        sig = crash_signal(report)
        fields["source"] = "crash report"
    else:
        fields["source"] = "none"
    fields["signal"] = sig
    who = f"The training process (pid {pid})"
    if sig is not None:
        what = _WHAT.get(sig, f"was ended by signal {sig}")
        reason = f"{who} {what} without closing the recorder."
        if sig == "SIGKILL" and oom:
            reason += (
                f" The kernel's OOM killer killed {oom} process(es) of its cgroup since "
                "recording began, so it most likely ran out of memory."
            )
    elif fields["exit_code"] is not None:
        reason = (
            f"{who} exited with code {fields['exit_code']} without closing the recorder "
            "(os._exit, a native exit(), or the end of the script without close())."
        )
    elif alive:
        reason = (
            f"{who} let go of the recorder's writer process without closing it, and is still "
            "running: the recorder was dropped without close()."
        )
    else:
        reason = (
            f"{who} ended without closing the recorder: killed by SIGKILL (or the OOM killer) "
            "or os._exit. Its exit status could not be read (its parent reaped it first, and "
            "this kernel is older than 6.15) and it sent no crash report."
        )
    if oom is not None and sig in (None, "SIGKILL") and fields["exit_code"] is None:
        fields["oom_kills"] = oom
    if report:
        fields["traceback"] = report[-MAX_TRACEBACK:]
    return trigger_event(PROCESS_DIED, reason, rank=rank, **fields), reason
