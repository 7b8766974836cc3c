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

import fnmatch
import pdb
import sys
import traceback
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import replace
from typing import Any, NamedTuple

import torch

from recorder.engine import hidden
from recorder.flight.alarms import TriggerOptions, Triggers
from recorder.flight.lightcapture import LightCapture, ModuleInputs
from recorder.flight.remote import RemoteTrigger, RemoteTriggers
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
from tracefmt.light import LightStepRecord, empty_light_rows
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

    hold: bool  #: keep it in the ring (else write it; the ring was released before it)
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
        stops = options.on_trigger is not None and trigger_options.nonfinite
        self._light = LightCapture(
            names, updates=options.light_updates, on_created=self._created if stops else None
        )
        self._by_design = trigger_options.by_design
        # the store's keys are named by run id: a '/' in a user's id would nest them
        key = None if run_id is None else run_id.replace("/", "_")
        self._remote = None if key is None else RemoteTriggers.from_default_group(key)
        self._after = 0
        self._last_fired = -1
        self._hooks: ExitStack | None = None
        self._active = False  #: the step before fired a non-finite kind
        self._stopped = -1  #: the step on_trigger last stopped in (once per step)
        self._pending: list[Event] = []  #: fired inside the step under way (in its forward)
        self._carried: list[Event] = []  #: fired with a full step the writer dropped
        self._remote_hits: list[RemoteTrigger] = []  #: other ranks' posts, by when they are due
        self._light_sent = -1  #: the last light step handed to the writer
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
        """Light mode installs the hooks at a scheduled step and keeps them over the scheduled
        steps that follow (removing them each step would reallocate the update buffers: a
        copy of the parameters per step); the first step off the schedule removes them."""
        self._step = step
        if not self.flight and scheduled and self._hooks is None:
            self._hooks = self._light.install()
        elif not scheduled:
            self._unhook()

    def skip(self) -> None:
        """A step not measured: off light mode's schedule, or after the writer failed."""
        self._unhook()
        self._light.reset()

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
        pending, self._pending = self._pending, []
        events = self._new(self._triggers.evaluate(step, light=light), pending)
        if events and not pending and self._remote is not None:
            self._remote.post(step, events[0].kind, _reason(events[0]))
        if self._remote is not None:
            while (hit := self._remote.poll()) is not None:
                if hit.rank != self.rank:
                    self._remote_hits.append(hit)
            # another rank's trigger, once this rank has reached its step (a rank running
            # ahead posts steps this one has not run yet), unless this rank wrote its ring
            # around then already
            due = [h for h in self._remote_hits if h.step <= step]
            self._remote_hits = [h for h in self._remote_hits if h.step > step]
            hit = next((h for h in due if h.step > self._last_fired), None)
            if hit is not None and not events:
                events.append(hit.event())
        if events:
            self._last_fired = step
            self._after = self.options.after_steps
            self.fired.extend(e for e in events if e not in pending)
        elif self._after:
            self._after -= 1
            scheduled = True
        carried, self._carried = self._carried, []
        light.events = (*carried, *(() if self.flight else events))
        self._submit_light(light)
        if events and self.flight:
            self._writer.release()
        disposition = Disposition(
            hold=self.flight and not events and not scheduled, events=tuple(events)
        )
        return light, disposition

    def _new(self, events: list[Event], pending: list[Event]) -> list[Event]:
        """The step's trigger events: those fired in its forward (``pending``), then the
        alarms' that start something.  While the step before was non-finite (a NaN stays in
        the parameters and spreads) non-finite alarms are the same episode, not triggers; and
        the module the forward already named is not named twice."""
        if any(e.kind == NONFINITE_CREATED for e in pending):
            events = [e for e in events if e.kind != NONFINITE_CREATED]
        active = any(e.kind in _PERSISTENT for e in [*pending, *events])
        fresh = [e for e in events if e.kind not in _PERSISTENT or not self._active]
        self._active = active
        return [*pending, *fresh]

    def _submit_light(self, light: LightStepRecord) -> None:
        self._writer.submit_light(light)
        self._light_sent = light.step

    def dropped(self, events: tuple[Event, ...]) -> None:
        """The writer dropped the full step that carried ``events`` (``backpressure="drop"``):
        they go into the trace with the next light step (they fired already: no new trigger)."""
        self._carried.extend(events)

    def after_submit(self, step: int, disposition: Disposition) -> None:
        """``on_trigger`` for a trigger found at the end of a step (the step is queued)."""
        if disposition.events and self.options.on_trigger is not None and self._stopped != step:
            self._stop(Fired(step, disposition.events))

    def exception(self, step: int, exc: BaseException) -> None:
        """An exception left the recording inside ``step``: write the ring and a light step
        with the exception event (and the events fired in its forward).  A step whose light
        record was sent already (the exception came at its end: a debugger quit, a raising
        ``on_trigger``) is followed by a light step of its own."""
        events, self._pending = list(self._pending), []
        if not isinstance(exc, TriggerFired):
            where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
            at = f" at {where[0].filename}:{where[0].lineno}" if where else ""
            reason = f"{type(exc).__name__} raised inside step {step}{at}: {exc}"
            event = trigger_event(
                EXCEPTION, reason[:2000], rank=self.rank, step=step, exception=type(exc).__name__
            )
            events.append(event)
            self.fired.append(event)
            if self._remote is not None:
                self._remote.post(step, EXCEPTION, _reason(event))
        if not events:
            return
        try:
            light = self._light.finish(step, {})
        except Exception:  # the device may be what failed: the events matter more than rows
            light = LightStepRecord(step, (), empty_light_rows(0))
        if step <= self._light_sent:
            light = LightStepRecord(self._light_sent + 1, (), empty_light_rows(0))
        light.events = tuple(events)
        self._submit_light(light)
        if self.flight:
            self._writer.release()

    # -- stopping the training thread --------------------------------------------------------
    def _created(self, path: str, module: torch.nn.Module, inputs: ModuleInputs, output: Any) -> None:
        """Light capture saw module ``path`` create NaN/Inf, inside the forward."""
        if self._active or any(fnmatch.fnmatchcase(path, g) for g in self._by_design):
            return  # the step before was non-finite already (the same episode), or by design
        step = self._step
        event = trigger_event(
            NONFINITE_CREATED,
            f"Module {path or '<root>'!r} ({type(module).__name__}) made NaN/Inf from finite "
            f"inputs in the forward of step {step}.",
            rank=self.rank,
            module=path,
            step=step,
        )
        self._pending.append(event)
        self.fired.append(event)
        if self._remote is not None:
            self._remote.post(step, NONFINITE_CREATED, _reason(event))
        self._stop(Fired(step, (event,), CreatedAt(path, module, inputs, output)))

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
        with hidden():  # what the user does here is not the step's
            if action == "pdb":
                print(
                    f"tracefmt: trigger at step {fired.step}: {summary}. `fired` holds the "
                    "events"
                    + (
                        "; `fired.created` the module, its inputs and output (`up` reaches "
                        "the training code)."
                        if fired.created
                        else "."
                    ),
                    file=sys.stderr,
                )
                _debugger().set_trace(sys._getframe())
                pass  # the debugger stops here, `fired` in scope
            elif callable(action):
                action(fired)


#: Trigger kinds whose condition outlasts a step: they fire when it starts, not at every step.
_PERSISTENT = frozenset({NONFINITE_CREATED, NONFINITE_STATE})


def _debugger() -> pdb.Pdb:
    """The debugger ``on_trigger="pdb"`` opens (its own function, so that tests drive it)."""
    return pdb.Pdb()


def _reason(event: Event) -> str:
    return str(message_fields(event).get("reason", event.kind))
