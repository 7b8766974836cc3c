"""What a flight (or light) recorder does at each ``rec.step()``: light capture, triggers, the ring.

:class:`recorder.session.Recorder` keeps one :class:`FlightKeeper` in modes ``"flight"`` and
``"light"``.  At the end of every step the keeper finishes the step's light record, evaluates
the triggers (:mod:`recorder.flight.alarms`) and the other ranks' posts
(:mod:`recorder.flight.remote`), and says what becomes of the step's full capture
(:class:`Disposition`):

* no trigger: the step is **held** in the sink's ring (flight mode), or written when the
  schedule picks it or it falls in the ``after_steps`` after a trigger;
* a trigger here or on another rank: the ring is **released** (the steps before are written),
  then the step is written with the trigger's events, and this rank's trigger is posted for
  the other ranks.

``on_trigger`` then stops the training thread: ``"raise"`` raises :class:`TriggerFired`,
``"pdb"`` opens the debugger, a callable is called with a :class:`Fired`; the trace is flushed
first.  When light capture sees a module create a non-finite value (finite inputs, NaN/Inf
output), the same happens at once, inside the forward, before the optimizer applies anything:
the debugger or the callable gets the module and its inputs and output.
"""

from __future__ import annotations

import pdb
import sys
import traceback
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import replace
from typing import Any, NamedTuple

import torch

from recorder.flight.alarms import TriggerOptions, Triggers
from recorder.flight.lightcapture import LightCapture, ModuleInputs
from recorder.flight.remote import RemoteTriggers
from recorder.options import Options
from recorder.pipeline import BackgroundWriter
from recorder.tracking import Names
from tracefmt.errors import TraceError
from tracefmt.events import (
    EXCEPTION,
    NONFINITE_CREATED,
    NONFINITE_STATE,
    message_fields,
    trigger_event,
)
from tracefmt.light import LightStepRecord
from tracefmt.model import Event

__all__ = ["CreatedAt", "Disposition", "Fired", "FlightKeeper", "TriggerFired"]


class TriggerFired(TraceError):
    """Raised by ``on_trigger="raise"`` once the trace holds the steps before the trigger."""

    def __init__(self, message: str, fired: Fired) -> None:
        super().__init__(message)
        self.fired = fired


class CreatedAt(NamedTuple):
    """The module call that made NaN/Inf from finite inputs, as its forward hook saw it."""

    path: str
    module: torch.nn.Module
    inputs: ModuleInputs
    output: Any


class Fired(NamedTuple):
    """A trigger, as ``on_trigger`` gets it: the step, its events, and for a module that
    created a non-finite value in the forward, that module call."""

    step: int
    events: tuple[Event, ...]
    created: CreatedAt | None = None


class Disposition(NamedTuple):
    """What the recorder does with a step's full capture."""

    hold: bool  #: keep it in the ring (else write it)
    release: bool  #: write the ring first
    events: tuple[Event, ...]  #: the triggers that fired at this step


class FlightKeeper:
    """Light capture and triggers of one recording, for modes ``"flight"`` and ``"light"``."""

    def __init__(
        self, options: Options, names: Names, writer: BackgroundWriter, *, rank: int, run_id: str | None
    ) -> None:
        self.options = options
        self.flight = options.mode == "flight"
        self.rank = rank
        self._writer = writer
        trigger_options = options.triggers or TriggerOptions()
        if options.trigger is not None:
            trigger_options = replace(trigger_options, predicate=options.trigger)
        self._triggers = Triggers(trigger_options, rank=rank)
        self._light = LightCapture(
            names,
            updates=options.light_updates,
            on_created=self._created if options.on_trigger is not None else None,
        )
        self._remote = None if run_id is None else RemoteTriggers.from_default_group(run_id)
        self._after = 0
        self._last_fired = -1
        self._hooks: ExitStack | None = None
        self._active = False  #: the step before fired a non-finite kind
        self._stopped = -1  #: the step on_trigger last stopped in (once per step)
        #: every trigger event this rank fired or received, in order (also in the trace)
        self.fired: list[Event] = []
        self._step = 0

    def install(self) -> ExitStack:
        """What stays installed for the whole recording: in flight mode the light capture's
        hooks (every step is measured); in light mode the hooks come and go with the steps the
        schedule picks, so the others cost nothing."""
        stack = ExitStack()
        if self.flight:
            stack.enter_context(self._light.install())
        stack.callback(self._unhook)
        return stack

    def begin(self, step: int, *, scheduled: bool) -> None:
        self._step = step
        if not self.flight and scheduled and self._hooks is None:
            self._hooks = self._light.install()

    def skip(self) -> None:
        """A step light mode does not measure."""
        self._unhook()

    def _unhook(self) -> None:
        hooks, self._hooks = self._hooks, None
        if hooks is not None:
            hooks.close()

    # -- end of a step -----------------------------------------------------------------------
    def end_step(
        self,
        step: int,
        scalars: Mapping[str, Any],
        *,
        scheduled: bool,
        wall_time: float,
        duration: float,
    ) -> tuple[LightStepRecord, Disposition]:
        """The step's light record and what to do with its full capture; sends the light
        record to the writer, and a ring release before it when a trigger fired."""
        light = self._light.finish(step, scalars, wall_time=wall_time, duration=duration)
        self._unhook()
        events = self._new(self._triggers.evaluate(step, light=light))
        if events and self._remote is not None:
            self._remote.post(step, events[0].kind, _reason(events[0]))
        if self._remote is not None:
            while (hit := self._remote.poll()) is not None:
                # another rank's trigger, unless this rank wrote its ring around then already
                if hit.rank != self.rank and not events and hit.step > self._last_fired:
                    events.append(hit.event())
        if events:
            self._last_fired = step
            self._after = self.options.after_steps
            self.fired.extend(events)
        elif self._after:
            self._after -= 1
            scheduled = True
        if not self.flight:
            light.events = tuple(events)
        self._writer.submit_light(light)
        if events and self.flight:
            self._writer.release()
        disposition = Disposition(
            hold=self.flight and not events and not scheduled, release=bool(events), events=tuple(events)
        )
        return light, disposition

    def _new(self, events: list[Event]) -> list[Event]:
        """The events that start something: while the step before was non-finite (a NaN stays
        in the parameters and spreads), non-finite events are the same episode, not triggers."""
        persistent = [e for e in events if e.kind in _PERSISTENT]
        fresh = [e for e in events if e.kind not in _PERSISTENT or not self._active]
        self._active = bool(persistent)
        return fresh

    def after_submit(self, step: int, disposition: Disposition) -> None:
        """``on_trigger`` for a trigger found at the end of a step (the step is queued)."""
        if disposition.events and self.options.on_trigger is not None and self._stopped != step:
            self._stop(Fired(step, disposition.events))

    def exception(self, step: int, exc: BaseException) -> None:
        """An exception left the recording inside ``step``: write the ring and a light step
        with the exception event."""
        where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        at = f" at {where[0].filename}:{where[0].lineno}" if where else ""
        event = trigger_event(
            EXCEPTION,
            f"{type(exc).__name__} raised inside step {step}{at}: {exc}"[:2000],
            rank=self.rank,
            exception=type(exc).__name__,
        )
        light = self._light.finish(step, {})
        light.events = (event,)
        self.fired.append(event)
        if self._remote is not None:
            self._remote.post(step, EXCEPTION, _reason(event))
        self._writer.submit_light(light)
        if self.flight:
            self._writer.release()

    # -- stopping the training thread --------------------------------------------------------
    def _created(self, path: str, module: torch.nn.Module, inputs: ModuleInputs, output: Any) -> None:
        """Light capture saw module ``path`` create NaN/Inf, inside the forward."""
        if self._active:  # the step before was non-finite already: the same episode
            return
        event = trigger_event(
            NONFINITE_CREATED,
            f"module {path or '<root>'} ({type(module).__name__}) made NaN/Inf from finite inputs",
            rank=self.rank,
            module=path,
        )
        self._stop(Fired(self._step, (event,), CreatedAt(path, module, inputs, output)))

    def _stop(self, fired: Fired) -> None:
        self._stopped = fired.step
        if self.flight:
            self._writer.release()
        self._writer.flush()
        action = self.options.on_trigger
        summary = "; ".join(f"{e.kind}: {_reason(e).rstrip('.')}" for e in fired.events)
        if action == "raise":
            raise TriggerFired(
                f"The flight recorder fired at step {fired.step} ({summary}); the trace holds "
                "the steps before it.",
                fired,
            )
        if action == "pdb":
            print(
                f"tracefmt: trigger at step {fired.step}: {summary}. `fired` holds the events"
                + (
                    "; `fired.created` the module, its inputs and output (`up` reaches the "
                    "training code)."
                    if fired.created
                    else "."
                ),
                file=sys.stderr,
            )
            _debugger().set_trace(sys._getframe())
            return
        if callable(action):
            action(fired)


#: Trigger kinds whose condition outlasts a step: they fire when it starts, not at every step.
_PERSISTENT = frozenset({NONFINITE_CREATED, NONFINITE_STATE})


def _debugger() -> pdb.Pdb:
    """The debugger ``on_trigger="pdb"`` opens (its own function, so that tests drive it)."""
    return pdb.Pdb()


def _reason(event: Event) -> str:
    return str(message_fields(event).get("reason", event.kind))
