"""The flight recorder's triggers: what in a step makes the ring worth writing.

Nothing here imports torch: the triggers read a step's light record (:mod:`tracefmt.light`) or
only its scalars, and return :class:`tracefmt.model.Event` objects made by
:func:`tracefmt.events.trigger_event`.  Four kinds fire here, in this order:

* ``nonfinite_created``: the first module, in execution order (light rows are written as each
  module's forward finishes, so a child comes before its parent), whose ``OUTPUT`` row counts
  NaN or Inf although its inputs were finite (no ``INPUTS_NONFINITE`` flag).  Modules whose
  non-finite outputs are there by design (a mask builder returning ``-inf``) are named by glob
  in :attr:`TriggerOptions.by_design`;
* ``nonfinite_state``: NaN or Inf in the loss, the gradient norm, or a parameter's gradient,
  update or value; the message names the first one and counts them all;
* ``loss_spike`` and ``grad_norm_spike``: a robust outlier score (:class:`SpikeDetector`);
* ``user_trigger``: the user's predicate ``trigger(step, scalars)`` returned something true.

Example::

    triggers = Triggers(TriggerOptions(predicate=lambda step, s: s.get("lr", 0) > 1), rank=0)
    for step, light in enumerate(light_steps):
        events = triggers.evaluate(step, light=light)   # [] on a quiet step

The spike scores and their defaults are explained in :mod:`recorder.flight.spike`.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

import numpy as np

from recorder.flight.spike import SpikeDetector, SpikeOptions, SpikeScore
from tracefmt.errors import TraceError
from tracefmt.events import (
    GRAD_NORM_SPIKE,
    LOSS_SPIKE,
    NONFINITE_CREATED,
    NONFINITE_STATE,
    USER_TRIGGER,
    trigger_event,
)
from tracefmt.light import LightFlags, LightKind, LightStepRecord
from tracefmt.model import Event
from tracefmt.nonfinite import light_report

__all__ = ["Predicate", "TriggerOptions", "Triggers", "gradient_norm"]

# plain ints: an IntEnum member costs an attribute lookup through enum's machinery per use
_GRADIENT = int(LightKind.GRADIENT)
_MOMENTS, _COUNTS = int(LightFlags.MOMENTS), int(LightFlags.COUNTS)

#: ``trigger(step, scalars)``: true (or a non-empty reason) fires a ``user_trigger`` event.
Predicate = Callable[[int, Mapping[str, float]], "bool | str | None"]


@dataclass(frozen=True)
class TriggerOptions:
    """Which triggers run.  ``None`` for a spike option turns that spike trigger off.

    ``grad_norm_scalar`` names the step scalar holding the gradient norm the user computed (the
    return value of ``clip_grad_norm_`` is the norm before clipping, the one worth watching);
    without it the norm is computed from the light record's gradient rows, which see gradients
    as the optimizer does, after any clipping.  ``by_design`` holds ``fnmatch`` globs of module
    paths whose non-finite outputs are intended and never count as created.
    """

    nonfinite: bool = True
    loss_spike: SpikeOptions | None = field(default_factory=SpikeOptions)
    grad_norm_spike: SpikeOptions | None = field(default_factory=SpikeOptions)
    predicate: Predicate | None = None
    grad_norm_scalar: str = "grad_norm"
    by_design: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("loss_spike", "grad_norm_spike"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, SpikeOptions):
                raise TypeError(f"TriggerOptions({name}=...) takes SpikeOptions or None, got {value!r}.")
        if self.predicate is not None and not callable(self.predicate):
            raise TypeError(
                f"TriggerOptions(predicate=...) must be callable as predicate(step, scalars), "
                f"got {self.predicate!r}."
            )
        globs = (self.by_design,) if isinstance(self.by_design, str) else tuple(self.by_design)
        object.__setattr__(self, "by_design", globs)
        if not all(isinstance(g, str) and g for g in globs):
            raise TypeError(f"TriggerOptions(by_design=...) takes module globs, got {self.by_design!r}.")


def gradient_norm(light: LightStepRecord) -> float | None:
    """The total gradient norm (the 2-norm over every parameter's gradient) from the light
    record's ``GRADIENT`` rows; NaN (or Inf) when a gradient holds NaN (or Inf), None without
    measured gradient rows."""
    rows = light.rows
    flags = rows["flags"]  # fields, not rows: a mask over rows would copy whole rows
    grads = (rows["kind"] == _GRADIENT) & ((flags & _MOMENTS) != 0)
    if not grads.any():
        return None
    counted = grads & ((flags & _COUNTS) != 0)
    if rows["nan"][counted].any():
        return math.nan
    if rows["inf"][counted].any():
        return math.inf
    norms = rows["norm"][grads].astype(np.float64)
    return float(np.sqrt(np.dot(norms, norms)))


class _Bad(NamedTuple):
    """One non-finite thing in the step's state, for the ``nonfinite_state`` message."""

    what: str
    name: str
    nan: int
    inf: int
    numel: int


def _scalar_bad(what: str, name: str, value: float) -> _Bad:
    return _Bad(what, name, int(math.isnan(value)), int(math.isinf(value)), 1)


class Triggers:
    """Evaluates a step's triggers; it keeps the spike detectors' windows between steps, so use
    one per training run and call :meth:`evaluate` once per step, in order."""

    def __init__(self, options: TriggerOptions | None = None, *, rank: int = 0) -> None:
        self.options = options if options is not None else TriggerOptions()
        self.rank = rank
        self.loss = SpikeDetector(self.options.loss_spike) if self.options.loss_spike else None
        self.grad_norm = (
            SpikeDetector(self.options.grad_norm_spike) if self.options.grad_norm_spike else None
        )

    def evaluate(
        self,
        step: int,
        *,
        light: LightStepRecord | None = None,
        scalars: Mapping[str, float] | None = None,
        loss: float | None = None,
        grad_norm: float | None = None,
    ) -> list[Event]:
        """The events the step fires, in the order of the module's list.

        ``scalars`` add to (and override) the light record's; ``loss`` defaults to the
        ``"loss"`` scalar; ``grad_norm`` to the :attr:`TriggerOptions.grad_norm_scalar` scalar,
        then to :func:`gradient_norm` of the light record.  An exception in the user's predicate
        is raised again as a ``TraceError`` that says so: a predicate that cannot be evaluated
        would otherwise hide every trigger it was meant to add.
        """
        merged = {**(dict(light.scalars) if light is not None else {}), **(scalars or {})}
        values = {k: _number(k, v) for k, v in merged.items()}
        if loss is None:
            loss = values.get("loss")
        if grad_norm is None:
            grad_norm = values.get(self.options.grad_norm_scalar)
        # a norm computed from the gradient rows is non-finite only when a row is, and the row
        # names the parameter: only a norm the user gave counts as state of its own
        given_norm = grad_norm
        if grad_norm is None and light is not None:
            grad_norm = gradient_norm(light)
        events: list[Event] = []
        if self.options.nonfinite:
            # the rows' rule (spec 6.5) only where a row counts NaN or Inf: most steps have none
            state_rows: Sequence[int] = ()
            if light is not None and (light.rows["nan"].any() or light.rows["inf"].any()):
                report = light_report(light.rows, {})
                events.extend(self._created(step, light, report.created))
                state_rows = report.state_rows
            events.extend(self._state(step, light, state_rows, loss, given_norm))
        if self.loss is not None and loss is not None:
            events.extend(self._spike(step, LOSS_SPIKE, "loss", self.loss.update(loss)))
        if self.grad_norm is not None and grad_norm is not None:
            score = self.grad_norm.update(grad_norm)
            events.extend(self._spike(step, GRAD_NORM_SPIKE, "gradient norm", score))
        if self.options.predicate is not None:
            events.extend(self._user(step, self.options.predicate, values))
        return events

    # -- the kinds ---------------------------------------------------------------------------
    def _created(self, step: int, light: LightStepRecord, created_rows: Sequence[int]) -> list[Event]:
        created = light.rows[list(created_rows)]
        hits = [
            r for r in created if not _by_design(light.names[int(r["name"])], self.options.by_design)
        ]
        if not hits:
            return []
        first = hits[0]
        module = light.names[int(first["name"])]
        nan, inf = int(first["nan"]), int(first["inf"])
        shown = repr(module) if module else "the root module"
        reason = (
            f"Module {shown} made {nan} NaN and {inf} Inf in its output from finite inputs "
            f"at step {step}"
        )
        if len(hits) > 1:
            reason += f" (the first of {len(hits)} modules that did)"
        return [
            trigger_event(
                NONFINITE_CREATED,
                reason + ".",
                rank=self.rank,
                step=step,
                module=module,
                nan=nan,
                inf=inf,
                numel=int(first["numel"]),
                count=len(hits),
            )
        ]

    def _state(
        self,
        step: int,
        light: LightStepRecord | None,
        state_rows: Sequence[int],
        loss: float | None,
        grad_norm: float | None,
    ) -> list[Event]:
        bad: list[_Bad] = []
        if loss is not None and not math.isfinite(loss):
            bad.append(_scalar_bad("loss", "loss", loss))
        if grad_norm is not None and not math.isfinite(grad_norm):
            bad.append(_scalar_bad("gradient norm", self.options.grad_norm_scalar, grad_norm))
        if light is not None and state_rows:
            for r in light.rows[list(state_rows)]:
                what = LightKind(int(r["kind"])).label
                name = light.names[int(r["name"])]
                bad.append(_Bad(what, name, int(r["nan"]), int(r["inf"]), int(r["numel"])))
        if not bad:
            return []
        first = bad[0]
        if first.numel == 1:
            thing = f"the {first.what} ({'nan' if first.nan else 'inf'})"
            if first.name != first.what:
                thing = f"the {first.what} {first.name!r} ({'nan' if first.nan else 'inf'})"
        else:
            thing = f"the {first.what} of {first.name!r} ({first.nan} NaN, {first.inf} Inf)"
        reason = f"At step {step} {thing} is not finite"
        if len(bad) > 1:
            reason += f", and {len(bad) - 1} more of the loss, gradients, updates and parameters"
        return [
            trigger_event(
                NONFINITE_STATE,
                reason + ".",
                rank=self.rank,
                step=step,
                module=first.name,
                what=first.what,
                nan=first.nan,
                inf=first.inf,
                count=len(bad),
            )
        ]

    def _spike(self, step: int, kind: str, label: str, s: SpikeScore) -> list[Event]:
        if not s.fired:
            return []
        if s.by == "score":
            reason = (
                f"At step {step} the {label} {s.value:.6g} is {s.score:.1f} robust standard "
                f"deviations above the {s.expected:.6g} expected from the last {s.samples} steps."
            )
        else:
            reason = (
                f"At step {step} the {label} {s.value:.6g} is {s.value / s.peak:.1f}x the largest "
                f"({s.peak:.6g}) of the recent values."
            )
        return [
            trigger_event(
                kind,
                reason,
                rank=self.rank,
                step=step,
                value=s.value,
                expected=s.expected,
                mad=s.mad,
                score=s.score,
                by=s.by,
            )
        ]

    def _user(self, step: int, predicate: Predicate, values: dict[str, float]) -> list[Event]:
        try:
            result = predicate(step, MappingProxyType(values))
        except Exception as e:
            raise TraceError(
                f"The trigger predicate {getattr(predicate, '__name__', predicate)!r} raised "
                f"{type(e).__name__} at step {step}: {e}. Fix the predicate: it is called at every "
                "rec.step() with the step number and a read-only mapping of the step's scalars."
            ) from e
        if not result:  # False, None, "" (a reason must say something)
            return []
        if isinstance(result, str):
            reason = result
        else:
            reason = f"The trigger predicate returned {result!r} at step {step}."
        return [trigger_event(USER_TRIGGER, reason, rank=self.rank, step=step)]


def _number(name: str, value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]  # numbers and one-element tensors
    except (TypeError, ValueError) as e:
        raise TypeError(f"The step scalar {name!r} is not a number: {value!r}.") from e


def _by_design(module: str, globs: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(module, g) for g in globs)
