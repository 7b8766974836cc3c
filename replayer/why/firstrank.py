"""Which rank saw it first.

Every trigger event of every rank is a sighting: its rank and step, and how it saw the value:
**created** it (a ``nonfinite_created`` event, or an origin that created or wrote it), only saw
it in its **state** (a NaN that DDP's all-reduce spread into the gradients of the other ranks),
a **spike**, or **other** (an exception, a user trigger, a death).  A ``remote_trigger`` event
names the rank that posted it and that rank's step and kind (its message's ``rank``, ``step``
and ``trigger``): a sighting of that rank's, which counts even when that rank wrote no file.

The first is the earliest step; at one step, created before state before the rest; then the
sighting a rank made itself before one only a remote trigger reports; then the lowest rank.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from replayer.why.explained import FirstSeen
from tracefmt.events import (
    GRAD_NORM_SPIKE,
    LOSS_SPIKE,
    NONFINITE_CREATED,
    NONFINITE_STATE,
    REMOTE_TRIGGER,
)

__all__ = ["Sighting", "first_seen", "how_seen"]

_HOW_ORDER = {"created": 0, "state": 1, "spike": 2, "other": 3}


class Sighting(NamedTuple):
    """One trigger event of one rank: where it fired, its kind and message fields, and whether
    the analysis found that this rank created the value (an origin that created or wrote it)."""

    rank: int
    step: int
    kind: str
    fields: Mapping[str, Any]
    created: bool = False


def how_seen(kind: str, created: bool = False) -> str:
    """``created``, ``state``, ``spike`` or ``other`` for an event of ``kind``."""
    if created or kind == NONFINITE_CREATED:
        return "created"
    if kind == NONFINITE_STATE:
        return "state"
    if kind in (LOSS_SPIKE, GRAD_NORM_SPIKE):
        return "spike"
    return "other"


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _candidates(s: Sighting) -> Iterable[tuple[tuple[int, int, int, int], FirstSeen]]:
    reason = str(s.fields.get("reason", ""))
    if s.kind == REMOTE_TRIGGER:
        rank, step = _int(s.fields.get("rank")), _int(s.fields.get("step"))
        trigger = s.fields.get("trigger")
        if rank is not None and step is not None and isinstance(trigger, str):
            how = how_seen(trigger)
            yield (
                (step, _HOW_ORDER[how], 1, rank),
                FirstSeen(rank, step, trigger, how, "remote_trigger", reason),
            )
        return
    how = how_seen(s.kind, s.created)
    yield (s.step, _HOW_ORDER[how], 0, s.rank), FirstSeen(s.rank, s.step, s.kind, how, "event", reason)


def first_seen(sightings: Iterable[Sighting]) -> FirstSeen | None:
    """The first sighting (see the module docstring), or None without any."""
    best: tuple[tuple[int, int, int, int], FirstSeen] | None = None
    for s in sightings:
        for key, seen in _candidates(s):
            if best is None or key < best[0]:
                best = (key, seen)
    return None if best is None else best[1]
