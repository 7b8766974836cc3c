"""What the flight recorder's options accept (``record(mode=..., on_trigger=..., ...)``).

Torch-free, like :mod:`recorder.options`, which builds its one :class:`~recorder.options.Options`
object from these parsers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, Literal, cast

from recorder.flight.alarms import TriggerOptions

__all__ = [
    "FLIGHT_ONLY",
    "Mode",
    "OnTrigger",
    "TriggerPredicate",
    "check_mode_options",
    "parse_callable",
    "parse_mode",
    "parse_on_trigger",
    "parse_triggers",
]

#: What the recorder does with the steps: write those the schedule picks (``"record"``); capture
#: every step, keep the last ones in a ring and write them when a trigger fires (``"flight"``);
#: or only light capture, on the schedule's steps (``"light"``).
Mode = Literal["record", "flight", "light"]
#: What a trigger does besides writing the ring: nothing, raise, stop in pdb, or call this.
OnTrigger = Literal["raise", "pdb"] | Callable[[Any], object] | None
#: A user's trigger: called at each ``rec.step()`` with the step number and its scalars; true
#: (or a non-empty reason string) fires.
TriggerPredicate = Callable[[int, Mapping[str, float]], "bool | str | None"]


def parse_mode(value: object) -> Mode:
    """``mode=``: ``"record"``, ``"flight"`` or ``"light"``."""
    if value == "record" or value == "flight" or value == "light":
        return value
    raise ValueError(
        f"record(mode={value!r}) must be 'record' (write the steps the schedule picks), "
        "'flight' (keep the last steps in memory, write them when a trigger fires) or 'light' "
        "(per-module statistics only)."
    )


def parse_on_trigger(value: object) -> OnTrigger:
    """``on_trigger=``: None, ``"raise"``, ``"pdb"`` or a callable."""
    if value is None or value == "raise" or value == "pdb" or callable(value):
        return cast("OnTrigger", value)
    raise ValueError(
        f"record(on_trigger={value!r}) must be None (write and go on), 'raise', 'pdb' or a "
        "function taking the trigger."
    )


def parse_callable(name: str, value: object) -> Any:
    """An optional function."""
    if value is not None and not callable(value):
        raise TypeError(f"record({name}=...) takes a function or None, got {value!r}.")
    return value


def parse_triggers(value: object) -> TriggerOptions | None:
    """``triggers=``: None or :class:`recorder.flight.alarms.TriggerOptions`."""
    if value is not None and not isinstance(value, TriggerOptions):
        raise TypeError(
            f"record(triggers=...) takes recorder.TriggerOptions(...) or None, got {value!r}."
        )
    return value


#: Options that mean something only in modes ``"flight"`` and ``"light"``.
FLIGHT_ONLY = frozenset(
    {
        "ring_steps",
        "ring_bytes",
        "after_steps",
        "on_trigger",
        "trigger",
        "triggers",
        "light_updates",
        "writer_process",
    }
)


def check_mode_options(options: Any) -> None:
    """Refuse flight options given without a flight mode (they would silently do nothing)."""
    if options.mode != "record":
        return
    given = [
        f.name
        for f in fields(options)
        if f.name in FLIGHT_ONLY and getattr(options, f.name) != f.default
    ]
    if given:
        raise ValueError(
            f"record() option(s) {', '.join(map(repr, sorted(given)))} apply to "
            "mode='flight' or mode='light' only; pass mode= as well."
        )
