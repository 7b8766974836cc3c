"""What a trace holds of one rank, for ``replayer why``: its full and light steps, read when
asked and kept, and its trigger events.

Steps are found from the step indexes alone (:meth:`tracefmt.Trace.summaries`,
:meth:`~tracefmt.Trace.light_summaries`); only steps with events, and the steps an analysis looks
back at, are loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from tracefmt.events import TRIGGER_KINDS, message_fields
from tracefmt.light import LightStep
from tracefmt.reader import Step, Trace

__all__ = ["RankSteps", "TriggerEvent"]


class TriggerEvent(NamedTuple):
    """A trigger event as found in rank ``rank``'s step ``step`` (full or light)."""

    rank: int
    step: int
    kind: str
    fields: Mapping[str, Any]

    @property
    def reason(self) -> str:
        return str(self.fields.get("reason", ""))


class RankSteps:
    """The steps of one rank of ``trace``, loaded once each when asked."""

    def __init__(self, trace: Trace, rank: int) -> None:
        self.trace, self.rank = trace, rank
        self.full = {s.step: s for s in trace.summaries(rank)}
        self.lights = {s.step: s for s in trace.light_summaries(rank)}
        self._steps: dict[int, Step] = {}
        self._light: dict[int, LightStep] = {}

    @property
    def first(self) -> int | None:
        """The lowest step held, full or light."""
        held = [*self.full, *self.lights]
        return min(held) if held else None

    def step(self, n: int) -> Step | None:
        """Full step ``n``, or None when the trace holds none."""
        if n not in self.full:
            return None
        if n not in self._steps:
            self._steps[n] = self.trace.step(n, self.rank)
        return self._steps[n]

    def light(self, n: int) -> LightStep | None:
        """Light step ``n``, or None when the trace holds none."""
        if n not in self.lights:
            return None
        if n not in self._light:
            self._light[n] = self.trace.light_step(n, self.rank)
        return self._light[n]

    def capture(self, n: int) -> str:
        """``full``, ``light`` or ``none``: what is held of step ``n``."""
        return "full" if n in self.full else "light" if n in self.lights else "none"

    def shows_nonfinite(self, n: int) -> bool:
        """Whether step ``n``'s flags say NaN/Inf was created or sits in the state (section 6.5;
        the ``-inf`` of an attention mask does not count)."""
        return any(
            s is not None and (s.nonfinite_created or s.nonfinite_state)
            for s in (self.full.get(n), self.lights.get(n))
        )

    def events(self, step: int | None = None) -> list[TriggerEvent]:
        """The trigger events of every step (or of ``step``), in step order; an event written
        in both the full and the light step of a step counts once."""
        steps = {s for s, x in self.full.items() if x.num_events}
        steps |= {s for s, x in self.lights.items() if x.num_events}
        out: list[TriggerEvent] = []
        for n in sorted(steps):
            if step is not None and n != step:
                continue
            seen: set[tuple[str, str]] = set()
            full, light = self.step(n), self.light(n)
            for e in (*(full.events if full else ()), *(light.events if light else ())):
                if e.kind in TRIGGER_KINDS and (e.kind, e.message) not in seen:
                    seen.add((e.kind, e.message))
                    out.append(TriggerEvent(self.rank, n, e.kind, message_fields(e)))
        return out
