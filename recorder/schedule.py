"""Which steps to record: a pure function of the step number, shaped like ``torch.profiler.schedule``.

Nothing here imports torch, so a schedule can be built and tested anywhere.  A step the schedule
leaves out costs nothing: the recorder installs no mode, hook or copy for it.

Example::

    s = schedule(skip_first=10, wait=1, warmup=1, active=2, repeat=3)
    [s(i) for i in range(14)]   # NONE x 10, then NONE, WARMUP, RECORD, RECORD, ...
    schedule(every=100)(200) is Action.RECORD
    schedule(steps=[41206, 41207]).records(41207)
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Action", "Schedule", "schedule"]


class Action(enum.Enum):
    """What the recorder does for one step.

    ``WARMUP`` captures the step (hooks, mode and statistics run, so caches and lazily built kernels
    are warm) and then discards it; ``RECORD`` captures it and hands it to the writer.
    """

    NONE = "none"
    WARMUP = "warmup"
    RECORD = "record"


def _check_count(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"schedule() argument {name!r} must be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"schedule() argument {name!r} must be at least {minimum}, got {value}.")
    return value


@dataclass(frozen=True)
class Schedule:
    """A step schedule; call it with a step number (0-based) to get its :class:`Action`.

    Build one with :func:`schedule`.  Cycles (``wait`` + ``warmup`` + ``active`` steps, ``repeat``
    times, 0 meaning forever) start after ``skip_first`` steps, as in ``torch.profiler.schedule``.
    With ``every`` the cycle is ``every`` steps long and records its first step.  With ``steps``
    exactly those steps are recorded.
    """

    wait: int = 0
    warmup: int = 0
    active: int = 1
    repeat: int = 0
    skip_first: int = 0
    every: int | None = None
    steps: frozenset[int] | None = None

    def __call__(self, step: int) -> Action:
        if step < 0:
            raise ValueError(f"Step numbers are 0-based and non-negative, got {step}.")
        if self.steps is not None:
            return Action.RECORD if step in self.steps else Action.NONE
        if step < self.skip_first:
            return Action.NONE
        cycle_len = self.every or self.wait + self.warmup + self.active
        cycle, pos = divmod(step - self.skip_first, cycle_len)
        if self.repeat and cycle >= self.repeat:
            return Action.NONE
        if self.every is not None:
            return Action.RECORD if pos == 0 else Action.NONE
        if pos < self.wait:
            return Action.NONE
        if pos < self.wait + self.warmup:
            return Action.WARMUP
        return Action.RECORD

    def records(self, step: int) -> bool:
        """True when ``step`` is captured and written."""
        return self(step) is Action.RECORD

    def captures(self, step: int) -> bool:
        """True when ``step`` is captured at all (recorded or warm-up)."""
        return self(step) is not Action.NONE


def schedule(
    *,
    wait: int = 0,
    warmup: int = 0,
    active: int | None = None,
    repeat: int = 0,
    skip_first: int = 0,
    every: int | None = None,
    steps: Iterable[int] | None = None,
) -> Schedule:
    """Build a :class:`Schedule`.

    * ``schedule()`` or ``schedule(every=1)``: every step.
    * ``schedule(every=100)``: steps 0, 100, 200, ... (after ``skip_first``; ``repeat`` bounds the
      count).
    * ``schedule(wait=1, warmup=1, active=3, repeat=2, skip_first=10)``: as ``torch.profiler``.
    * ``schedule(steps=[41206, 41207])``: exactly these steps.

    ``every`` cannot be combined with ``wait``, ``warmup`` or ``active``; ``steps`` with nothing.
    Raises ``ValueError`` or ``TypeError`` for arguments that make no schedule.
    """
    if steps is not None:
        if every is not None or active is not None or wait or warmup or repeat or skip_first:
            raise ValueError(
                "schedule(steps=...) lists the steps to record; it cannot be combined "
                "with every, wait, warmup, active, repeat or skip_first."
            )
        if isinstance(steps, (str, bytes)):
            raise TypeError(f"schedule(steps=...) takes step numbers, got {steps!r}.")
        chosen = frozenset(_check_count("steps", s, minimum=0) for s in steps)
        return Schedule(steps=chosen)
    wait = _check_count("wait", wait, minimum=0)
    warmup = _check_count("warmup", warmup, minimum=0)
    repeat = _check_count("repeat", repeat, minimum=0)
    skip_first = _check_count("skip_first", skip_first, minimum=0)
    if every is not None:
        if active is not None or wait or warmup:
            raise ValueError(
                "schedule(every=N) records one step in N; it cannot be combined with "
                "wait, warmup or active (use those for torch.profiler-style cycles)."
            )
        every = _check_count("every", every, minimum=1)
        return Schedule(active=1, repeat=repeat, skip_first=skip_first, every=every)
    active = 1 if active is None else _check_count("active", active, minimum=1)
    return Schedule(wait=wait, warmup=warmup, active=active, repeat=repeat, skip_first=skip_first)
