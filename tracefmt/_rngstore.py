"""How a writer stores RNG states (format 1.6): each step's generators as rows of ``rng_states``,
their bytes in ``rng_bytes``, and for every step a ``step_rng_states`` row naming its rows.

A state equal to the one stored last for the same device points at the bytes stored then (a step
that draws no random numbers leaves its generators as they were); any other state is appended.
The ``step_rng_states`` rows wait with their steps' ``steps`` rows and are appended when the
writer commits, before those (spec section 8), so that row ``k`` of ``step_rng_states`` always
belongs to row ``k`` of ``steps``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from tracefmt._appender import Appender
from tracefmt._rnglayout import (
    RNG_BYTES,
    RNG_STATE_DTYPE,
    RNG_STATES,
    STEP_RNG_DTYPE,
    STEP_RNG_STATES,
    StepRngRow,
)
from tracefmt.dtypes import fingerprint
from tracefmt.rngstate import RngState, devices_problems


class RngStore:
    """The RNG states of one file being written, appended through ``tables``; device names are
    interned through the writer's ``intern``."""

    def __init__(self, tables: Appender, intern: Callable[[str | None], int]) -> None:
        self._tables, self._intern = tables, intern
        self._last: dict[str, tuple[bytes, int]] = {}  # device -> (state, its start in rng_bytes)
        self._pending: list[StepRngRow] = []

    def pend(self, states: Sequence[RngState]) -> None:
        """Store ``states`` (the generators of the step being written; none: an empty range) and
        queue the step's ``step_rng_states`` row.  Raises ``ValueError`` for states that break
        TF-RNG-002 (a device twice), before anything is written."""
        for _, message in devices_problems([s.device for s in states]):
            raise ValueError(message)
        rows = np.zeros(len(states), dtype=RNG_STATE_DTYPE)
        for i, s in enumerate(states):
            data = np.frombuffer(s.state, dtype=np.uint8)
            last = self._last.get(s.device)
            if last is not None and last[0] == s.state:
                start = last[1]
            else:
                start = self._tables.append(RNG_BYTES, data)
                self._last[s.device] = (s.state, start)
            rows[i] = (self._intern(s.device), start, data.size, fingerprint(data))
        start = self._tables.append(RNG_STATES, rows)
        self._pending.append(StepRngRow(rng_start=start, rng_count=len(rows)))

    def commit(self) -> None:
        """Append the queued steps' ``step_rng_states`` rows (the writer commits their steps next)."""
        pending, self._pending = self._pending, []
        self._tables.append(STEP_RNG_STATES, np.array(pending, dtype=STEP_RNG_DTYPE))
