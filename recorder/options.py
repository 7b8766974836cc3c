"""The recorder's options: what to capture, which full values to keep, how to write.

Plain frozen data, checked field by field when built, so a typo fails at ``record(...)`` with a
sentence saying what is allowed, not deep inside a training step.  Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal, TypedDict, cast

from recorder.flight.alarms import TriggerOptions
from recorder.flight.settings import (
    Mode,
    OnTrigger,
    TriggerPredicate,
    check_mode_options,
    parse_callable,
    parse_mode,
    parse_on_trigger,
    parse_triggers,
)
from recorder.selection import ALL_VALUES, ROLE_NAMES, ValuesSelection, parse_values, select

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "CAPTURE_KINDS",
    "ROLE_NAMES",
    "Backpressure",
    "Engine",
    "Mode",
    "OnTrigger",
    "Options",
    "RecordOptions",
    "ValuesSelection",
    "select",
]

CAPTURE_KINDS = frozenset({"graph", "stats", "values"})
#: What the training thread does when the writer queue is full.
Backpressure = Literal["block", "drop"]
#: Which capture engine records the ops: the C++ one (:mod:`recorder.engine`), the Python
#: dispatch mode (:mod:`recorder.capture`), or the C++ one where it can run.
Engine = Literal["auto", "native", "python"]

#: The most histogram bins a tensor may get.
MAX_HIST_BINS = 4096


def parse_capture(value: object) -> frozenset[str]:
    """``capture=``: one kind or a collection of kinds, ``"graph"`` among them."""
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, Iterable):
        raise TypeError(f"record(capture=...) takes a kind or a list of kinds, got {value!r}.")
    kinds = frozenset(value)
    unknown = sorted(map(repr, kinds - CAPTURE_KINDS))
    if unknown:
        raise ValueError(
            f"record(capture=...) got {', '.join(unknown)}; choose from "
            f"{', '.join(sorted(CAPTURE_KINDS))}."
        )
    if "graph" not in kinds:
        raise ValueError(
            "record(capture=...) must include 'graph': statistics and values are "
            "stored against the step's graph."
        )
    return kinds


def parse_flag(name: str, value: object) -> bool:
    """A ``True``/``False`` option (``1`` is refused: it is usually a misplaced count)."""
    if not isinstance(value, bool):
        raise TypeError(f"record() option {name!r} must be True or False, got {value!r}.")
    return value


def parse_count(name: str, value: object, *, minimum: int, maximum: int | None = None) -> int:
    """An integer option in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"record() option {name!r} must be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"record() option {name!r} must be at least {minimum}, got {value!r}.")
    if maximum is not None and value > maximum:
        raise ValueError(f"record() option {name!r} must be at most {maximum}, got {value!r}.")
    return value


def parse_optional_count(name: str, value: object, *, minimum: int) -> int | None:
    """An integer option of at least ``minimum``, or None (decided later)."""
    return None if value is None else parse_count(name, value, minimum=minimum)


def parse_seconds(name: str, value: object) -> float:
    """A positive number of seconds (``inf``: never; NaN is refused)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"record() option {name!r} must be a number of seconds, got {value!r}.")
    if not value > 0:
        raise ValueError(f"record() option {name!r} must be more than 0 seconds, got {value!r}.")
    return float(value)


def parse_engine(value: object) -> Engine:
    """``engine=``: ``"auto"``, ``"native"`` or ``"python"``."""
    if value == "auto" or value == "native" or value == "python":
        return value
    raise ValueError(
        f"record(engine={value!r}) must be 'auto' (the C++ capture where it can run, else the "
        "Python one), 'native' (the C++ capture or an error) or 'python' (the dispatch mode)."
    )


def parse_backpressure(value: object) -> Backpressure:
    """``backpressure=``: ``"block"`` or ``"drop"``."""
    if value == "block" or value == "drop":
        return value
    raise ValueError(
        f"record(backpressure={value!r}) must be 'block' (wait for the writer) or 'drop' "
        "(skip the step and count it)."
    )


@dataclass(frozen=True)
class Options:
    """What :func:`recorder.record` does besides where it writes: the one place the defaults are.

    ``record(...)`` builds this from its keywords (:meth:`build`); every field is parsed when the
    object is made, so a bad value fails at ``record(...)`` with a sentence naming the option.
    :func:`recorder.record` says what each option does; the comments here are reminders.
    """

    #: Any of ``"graph"`` (required), ``"stats"``, ``"values"``; a str or a collection of them.
    capture: frozenset[str] = frozenset({"graph", "stats"})
    #: Which full values to keep: ``None`` (none, unless ``capture`` has ``"values"``: then all),
    #: ``"all"``, ``"leaves"`` (what the step starts from, :class:`ValuesSelection`) or
    #: :func:`select`.  A selection adds ``"values"`` to ``capture``.
    values: ValuesSelection | None = None
    #: Also measure pure views (off: a view's numbers are its base's).
    views: bool = False
    #: Bins of the fixed-bin histogram per tensor (0: none; at most :data:`MAX_HIST_BINS`).
    hist_bins: int = 0
    #: Record the user's ``file:line`` per op (slower).
    source: bool = False
    #: When the writer queue is full: ``"block"`` waits, ``"drop"`` skips the step and counts it.
    backpressure: Backpressure = "block"
    #: Bounds of the writer queue, in steps and in bytes.
    max_queue_steps: int = 4
    max_queue_bytes: int = 1 << 30
    #: Flush after this many unflushed steps or this long since the last flush, whichever first.
    flush_every_steps: int = 10
    flush_every_seconds: float = 1.0
    #: This process's place in a distributed run (one file per rank).  None: from the launcher's
    #: ``RANK``/``WORLD_SIZE`` or the default process group (:mod:`recorder.distributed`), else 0 of 1.
    rank: int | None = None
    world_size: int | None = None
    #: Which capture engine: ``"auto"`` (C++ where it builds and can record the job, else the
    #: Python dispatch mode; a warning only when it could not be built), ``"native"`` (C++ or
    #: an error), ``"python"``.
    engine: Engine = "auto"
    #: ``"record"``, ``"flight"`` or ``"light"`` (:data:`Mode`).
    mode: Mode = "record"
    #: Flight mode: the full steps kept in memory, at most this many and this many bytes.
    ring_steps: int = 8
    ring_bytes: int = 2 << 30
    #: Flight mode: also write this many steps after the one that fired.
    after_steps: int = 0
    #: What a trigger does besides writing (:data:`OnTrigger`).
    on_trigger: OnTrigger = None
    #: A user's trigger (:data:`TriggerPredicate`).
    trigger: TriggerPredicate | None = None
    #: The triggers' settings (:class:`recorder.flight.alarms.TriggerOptions`; None: defaults).
    triggers: TriggerOptions | None = None
    #: Light capture measures each parameter's update (costs a copy of the parameters).
    light_updates: bool = True
    #: Flight and light modes: the trace (and the ring) live in a writer process that outlives this one.
    writer_process: bool = True

    def __post_init__(self) -> None:
        capture = parse_capture(self.capture)
        values = parse_values(self.values)
        if values is not None:
            capture |= {"values"}
        elif "values" in capture:
            values = ALL_VALUES
        parsed: dict[str, object] = {
            "capture": capture,
            "values": values,
            "views": parse_flag("views", self.views),
            "hist_bins": parse_count("hist_bins", self.hist_bins, minimum=0, maximum=MAX_HIST_BINS),
            "source": parse_flag("source", self.source),
            "backpressure": parse_backpressure(self.backpressure),
            "max_queue_steps": parse_count("max_queue_steps", self.max_queue_steps, minimum=1),
            "max_queue_bytes": parse_count("max_queue_bytes", self.max_queue_bytes, minimum=1),
            "flush_every_steps": parse_count("flush_every_steps", self.flush_every_steps, minimum=1),
            "flush_every_seconds": parse_seconds("flush_every_seconds", self.flush_every_seconds),
            "rank": parse_optional_count("rank", self.rank, minimum=0),
            "world_size": parse_optional_count("world_size", self.world_size, minimum=1),
            "engine": parse_engine(self.engine),
            "mode": parse_mode(self.mode),
            "ring_steps": parse_count("ring_steps", self.ring_steps, minimum=1),
            "ring_bytes": parse_count("ring_bytes", self.ring_bytes, minimum=1),
            "after_steps": parse_count("after_steps", self.after_steps, minimum=0),
            "on_trigger": parse_on_trigger(self.on_trigger),
            "trigger": parse_callable("trigger", self.trigger),
            "triggers": parse_triggers(self.triggers),
            "light_updates": parse_flag("light_updates", self.light_updates),
            "writer_process": parse_flag("writer_process", self.writer_process),
        }
        for name, value in parsed.items():
            object.__setattr__(self, name, value)
        check_mode_options(self)
        if self.rank is not None and self.world_size is not None and self.rank >= self.world_size:
            raise ValueError(f"record(rank={self.rank}) must be below world_size={self.world_size}.")

    @property
    def stats(self) -> bool:
        """Whether per-tensor statistics are captured."""
        return "stats" in self.capture

    @classmethod
    def build(cls, **given: Unpack[RecordOptions]) -> Options:
        """The options from ``record(...)``'s keywords; unset ones keep the field defaults."""
        unknown = sorted(set(given) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(
                f"record() got unknown option(s) {', '.join(map(repr, unknown))}; its options "
                f"are {', '.join(f.name for f in fields(cls))}."
            )
        # The keywords are wider than the fields (a str for capture, "all" for values); the
        # fields' parsers in __post_init__ narrow them.
        return cls(**cast("dict[str, Any]", given))


class RecordOptions(TypedDict, total=False):
    """The keywords of :func:`recorder.record` that become :class:`Options` (defaults there)."""

    capture: str | Collection[str]
    values: ValuesSelection | Literal["all", "leaves"] | None
    views: bool
    hist_bins: int
    source: bool
    backpressure: Backpressure
    max_queue_steps: int
    max_queue_bytes: int
    flush_every_steps: int
    flush_every_seconds: float
    rank: int | None
    world_size: int | None
    engine: Engine
    mode: Mode
    ring_steps: int
    ring_bytes: int
    after_steps: int
    on_trigger: OnTrigger
    trigger: TriggerPredicate | None
    triggers: TriggerOptions | None
    light_updates: bool
    writer_process: bool
