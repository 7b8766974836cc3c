"""The typed result of ``replayer why``: plain frozen records, so the CLI, tests and CI read fields.

A :class:`WhyReport` holds one :class:`Explanation` per trigger event of the run (narrowed by
:class:`WhyOptions`).  An explanation names the event (rank, step, kind, its message's fields),
its :class:`Cause` (where the non-finite value entered, or where the statistics departed from the
step before), the :class:`Link` path from there to the loss, the :class:`FirstSeen` rank of the
run, and the :class:`Rerecord` snippet that records the step again in full.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from replayer.errors import ReplayError

__all__ = [
    "CAUSE_KINDS",
    "Cause",
    "Explanation",
    "FirstSeen",
    "Link",
    "Rerecord",
    "Site",
    "TensorNumbers",
    "WhyOptions",
    "WhyReport",
]

#: What a :class:`Cause` says happened (``kind``):
CAUSE_KINDS = {
    "created": "an op (a module, in a light step) made NaN/Inf from finite inputs",
    "state_write": "an op wrote NaN/Inf into a parameter, gradient or optimizer state",
    "state_at_start": "a parameter or optimizer state held NaN/Inf when the step began",
    "state": "a gradient, update or parameter holds NaN/Inf; no module created it",
    "received": "NaN/Inf arrived through a collective from another rank",
    "input": "non-finite data entered the step (not a parameter or optimizer state)",
    "loss": "only the loss is not finite",
    "departure": "the first op or module whose statistics departed from the step before",
    "state_departure": "a parameter or optimizer state departed from the step before",
    "largest_departure": "no op departed by the ratio; the one that departed most",
}


@dataclass(frozen=True, slots=True)
class WhyOptions:
    """What ``replayer why`` looks at, and how far statistics must move to count as departed.

    ``rank`` / ``step``: explain only the events of that rank / step (the first rank is still
    found among every rank).  ``spike_ratio``: a tensor departed when its norm, or its largest
    magnitude, changed by at least this factor from the step before (and, for an op, by this
    factor more than its inputs did).  ``max_path``: links of the path to the loss kept (its
    two ends; the middle is counted).
    """

    rank: int | None = None
    step: int | None = None
    spike_ratio: float = 3.0
    max_path: int = 24

    def __post_init__(self) -> None:
        for name in ("rank", "step"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise ReplayError(f"WhyOptions({name}={value!r}) must be None or an int >= 0.")
        ratio = self.spike_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not (1 < ratio < math.inf):
            raise ReplayError(f"WhyOptions(spike_ratio={ratio!r}) must be a finite number > 1.")
        if isinstance(self.max_path, bool) or not isinstance(self.max_path, int) or self.max_path < 2:
            raise ReplayError(f"WhyOptions(max_path={self.max_path!r}) must be an int >= 2.")


@dataclass(frozen=True, slots=True)
class TensorNumbers:
    """The statistics of one tensor (full step) or light row at one step; None: not measured.

    ``role`` is the tensor's role (``parameter``...) or the light row's kind (``output``...);
    ``view_of`` names the measured tensor whose numbers these are, for a view the recorder did
    not measure itself.
    """

    name: str | None
    role: str
    tensor: int | None = None
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    norm: float | None = None
    nan: int | None = None
    inf: int | None = None
    view_of: str | None = None


@dataclass(frozen=True, slots=True)
class Site:
    """An op of a full step (``op``, ``name``) or a module of a light step (``op`` None), at one
    step, with the numbers of what it read and wrote (a light module: its parameters as they
    entered the step, and its output)."""

    step: int
    capture: str
    module: str
    phase: str | None
    op: int | None = None
    name: str | None = None
    inputs: tuple[TensorNumbers, ...] = ()
    outputs: tuple[TensorNumbers, ...] = ()

    @property
    def label(self) -> str:
        where = self.module or "<top>"
        if self.op is None:
            return f"module {where}"
        return f"op #{self.op} {self.name} in {where}"


@dataclass(frozen=True, slots=True)
class Cause:
    """Where it started (``kind``: one of :data:`CAUSE_KINDS`), in a sentence, at ``at``; the
    same op or module at the step before (``before``, when the trace holds it); the state tensor
    written or found non-finite (``state``); the departure factor (``ratio``, spikes)."""

    kind: str
    description: str
    at: Site
    before: Site | None = None
    state: str | None = None
    ratio: float | None = None


@dataclass(frozen=True, slots=True)
class Link:
    """One op (full step) or module (light step) on the path from the cause to the loss."""

    module: str
    op: int | None = None
    name: str | None = None
    phase: str | None = None


@dataclass(frozen=True, slots=True)
class FirstSeen:
    """The rank that saw it first: earliest step, then a rank that created the value before one
    that only saw it in its state.  ``how``: ``created``, ``state``, ``spike``, ``other``;
    ``source``: ``event`` (its own event) or ``remote_trigger`` (another rank's event naming it)."""

    rank: int
    step: int
    kind: str
    how: str
    source: str
    reason: str


@dataclass(frozen=True, slots=True)
class Rerecord:
    """How to record the step again in full: a Python snippet around the user's training loop,
    and the commands that look at the result."""

    python: str
    commands: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Explanation:
    """One trigger event, explained.

    ``category``: ``nonfinite``, ``spike`` or ``other`` (an exception, a user trigger, a death
    in a step without non-finite values: no origin to find).  ``capture``: what the trace holds
    of the step on that rank (``full``, ``light``, ``none``).  ``earlier``: for a state that was
    already non-finite when the step began, the cause found in the steps before.
    """

    rank: int
    step: int
    kind: str
    reason: str
    fields: Mapping[str, Any]
    category: str
    capture: str
    cause: Cause | None
    earlier: Cause | None
    path: tuple[Link, ...]
    path_elided: int
    first_seen: FirstSeen | None
    rerecord: Rerecord
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class WhyReport:
    """Every explained event of a run, and the rank that saw the first one first."""

    path: str
    ranks: tuple[int, ...]
    options: WhyOptions
    explanations: tuple[Explanation, ...]
    first_seen: FirstSeen | None
    notes: tuple[str, ...] = field(default=())

    @property
    def has_events(self) -> bool:
        return bool(self.explanations)

    def to_json(self) -> dict[str, Any]:
        """JSON data (print it with :func:`tracefmt.jsonout.dumps`: non-finite numbers as text)."""
        data = asdict(self)
        data["events"] = len(self.explanations)
        return data
