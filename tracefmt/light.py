"""Light steps (format 1.4): per-module and per-parameter statistics of a step, without its graph.

A flight recorder captures every step lightly (module and optimizer hooks, no per-op work) and
keeps full captures of the recent past in a ring.  A light step is one row per thing it measured:

* ``OUTPUT``: a module's forward output (``name`` is the module path, ``""`` the root module);
* ``GRADIENT``: a parameter's gradient as the optimizer saw it (``name`` is the parameter's FQN);
* ``UPDATE``: what the optimizer's step added to a parameter (new value minus old value);
* ``PARAMETER``: the parameter after the optimizer's step.

The update-to-parameter ratio of a parameter is its ``UPDATE`` row's norm over its
``PARAMETER`` row's norm.  Loss and user scalars and the step's events ride along as in a full
step.  Example::

    rows = np.zeros(2, dtype=LIGHT_ROW_DTYPE)
    rows["name"] = [0, 1]
    rows["kind"] = [LightKind.OUTPUT, LightKind.GRADIENT]
    record = LightStepRecord(step=7, names=["encoder.0", "encoder.0.weight"], rows=rows)
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from tracefmt._layout import (
    LIGHT_COUNTS,
    LIGHT_INPUTS_NONFINITE,
    LIGHT_MOMENTS,
    LIGHT_STATS_DTYPE,
)
from tracefmt.model import Event

__all__ = [
    "LIGHT_ROW_DTYPE",
    "LightFlags",
    "LightKind",
    "LightRow",
    "LightStep",
    "LightStepRecord",
    "LightStepSummary",
    "empty_light_rows",
]


class LightKind(enum.IntEnum):
    """What a light row measures (its ``kind`` column)."""

    OUTPUT = 1  #: a module's forward output (all its floating-point output tensors together)
    GRADIENT = 2  #: a parameter's gradient when the optimizer stepped
    UPDATE = 3  #: the optimizer step's change of a parameter (after minus before)
    PARAMETER = 4  #: a parameter after the optimizer step

    @property
    def label(self) -> str:
        return self.name.lower()


class LightFlags(enum.IntFlag):
    """Which fields of a light row are set, and what the recorder knew about its inputs."""

    MOMENTS = LIGHT_MOMENTS  #: min, max, mean, std and norm (over the finite values)
    COUNTS = LIGHT_COUNTS  #: nan and inf
    #: an ``OUTPUT`` row whose module received non-finite floating-point inputs: its own
    #: non-finite values may be propagated, not created
    INPUTS_NONFINITE = LIGHT_INPUTS_NONFINITE


#: One light row in memory.  ``name`` indexes :attr:`LightStepRecord.names` (in the file it is a
#: string id: the rows of ``light_stats`` have this dtype); ``numel`` counts the elements measured.
#: Fields: name, kind, flags, min, max, mean, std, norm, nan, inf, numel.
LIGHT_ROW_DTYPE = LIGHT_STATS_DTYPE


def empty_light_rows(n: int) -> np.ndarray:
    """``n`` light rows with nothing measured (flags 0, moments NaN); fill what you measure."""
    rows = np.zeros(n, dtype=LIGHT_ROW_DTYPE)
    for name in ("min", "max", "mean", "std", "norm"):
        rows[name] = np.nan
    return rows


@dataclass
class LightStepRecord:
    """A light step ready to write: ``rows`` (``LIGHT_ROW_DTYPE``) name their module or
    parameter by index into ``names``."""

    step: int
    names: Sequence[str]
    rows: np.ndarray
    scalars: Mapping[str, float] = field(default_factory=dict)
    events: Sequence[Event] = ()
    wall_time: float = 0.0
    duration: float = math.nan

    def check(self) -> None:
        """Raise ``ValueError`` when the record is inconsistent (what the writer checks first)."""
        if self.rows.dtype != LIGHT_ROW_DTYPE:
            raise ValueError(f"Light step {self.step}: rows have dtype {self.rows.dtype}.")
        if len(self.rows) and (
            int(self.rows["name"].min()) < 0 or int(self.rows["name"].max()) >= len(self.names)
        ):
            raise ValueError(f"Light step {self.step}: a row names no entry of its names.")
        kinds = {int(k) for k in np.unique(self.rows["kind"])}
        unknown = kinds - {int(k) for k in LightKind}
        if unknown:
            raise ValueError(f"Light step {self.step}: unknown row kinds {sorted(unknown)}.")
        for e in self.events:
            if e.op is not None or e.tensor is not None:
                raise ValueError(
                    f"Light step {self.step}: event {e.kind!r} names an op or tensor, but a "
                    "light step has no graph."
                )

    @property
    def nbytes(self) -> int:
        """Approximate in-memory size."""
        return int(self.rows.nbytes) + sum(len(n) + 50 for n in self.names)


@dataclass(frozen=True, slots=True)
class LightRow:
    """One row of a light step as read: what was measured of ``name`` (a module path, or a
    parameter's FQN), of which ``kind``.  Statistics that were not measured are None."""

    name: str
    kind: LightKind
    numel: int
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    norm: float | None = None
    nan: int | None = None
    inf: int | None = None
    #: an ``OUTPUT`` row whose module received non-finite inputs
    inputs_nonfinite: bool = False

    @property
    def finite(self) -> bool:
        """False when NaN or Inf values were counted (unknown counts count as finite)."""
        return not (self.nan or self.inf)


@dataclass(frozen=True)
class LightStep:
    """One light step of one rank, as read (format 1.4): its rows in the order they were
    measured, its scalars and events, and its step flags (spec section 6.5)."""

    step: int
    rank: int
    rows: tuple[LightRow, ...]
    scalars: Mapping[str, float]
    events: tuple[Event, ...]
    wall_time: float
    duration: float
    has_nan: bool = False
    has_inf: bool = False
    #: an ``OUTPUT`` row holds NaN/Inf although its module's inputs were finite
    nonfinite_created: bool = False
    #: a gradient, update or parameter row, or the loss, holds NaN/Inf
    nonfinite_state: bool = False

    def row(self, name: str, kind: LightKind) -> LightRow | None:
        """The row of ``name`` and ``kind``, or None."""
        return next((r for r in self.rows if r.name == name and r.kind is kind), None)

    def update_ratio(self, name: str) -> float | None:
        """Parameter ``name``'s update norm over its norm after the update (None when either
        was not measured, or the parameter's norm is 0)."""
        update, param = self.row(name, LightKind.UPDATE), self.row(name, LightKind.PARAMETER)
        if update is None or param is None or update.norm is None or not param.norm:
            return None
        return update.norm / param.norm


@dataclass(frozen=True)
class LightStepSummary:
    """One light step in ``tracefmt ls``, from the light step index alone (``event_kinds``
    filled in by whoever reads the events: :func:`tracefmt.summary.run_summaries`)."""

    step: int
    rank: int
    num_rows: int
    num_events: int
    num_scalars: int
    has_nan: bool
    has_inf: bool
    nonfinite_created: bool
    nonfinite_state: bool
    wall_time: float
    duration: float
    event_kinds: tuple[str, ...] = ()
    kind: str = "light"
