"""How a writer stores a light step (format 1.4): its rows of ``light_stats``, ``light_events``
and ``light_scalars``, and the ``light_steps`` row that commits them at the next flush.

A light step's names are interned like every other text: its ``light_stats`` rows name their
module or parameter by string id, where the record names it by index into its own ``names``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tracefmt import _layout as L
from tracefmt._appender import Appender
from tracefmt._rows import LightStepRow, event_rows, scalar_rows
from tracefmt.light import LightStepRecord
from tracefmt.nonfinite import light_report


def append_light_step(
    tables: Appender, intern: Callable[[str | None], int], record: LightStepRecord
) -> LightStepRow:
    """Append ``record``'s rows (checked with :meth:`LightStepRecord.check`) and return its
    ``light_steps`` row, which the writer appends when it commits."""
    rows = np.array(record.rows, dtype=L.LIGHT_STATS_DTYPE)  # a copy: the names change below
    if len(rows):
        ids = np.full(len(record.names), L.NO_STRING, dtype=np.int32)
        for i in np.unique(rows["name"]).tolist():
            ids[i] = intern(record.names[i])
        rows["name"] = ids[rows["name"]]
    scalars = {k: float(v) for k, v in record.scalars.items()}
    flags = light_report(record.rows, scalars).flags
    events = event_rows(record.events, intern)
    scalar_table = scalar_rows(scalars, intern)
    return LightStepRow(
        step=record.step,
        stats_start=tables.append(L.LIGHT_STATS, rows),
        stats_count=len(rows),
        event_start=tables.append(L.LIGHT_EVENTS, events),
        event_count=len(events),
        scalar_start=tables.append(L.LIGHT_SCALARS, scalar_table),
        scalar_count=len(scalar_table),
        wall_time=float(record.wall_time),
        duration=float(record.duration),
        flags=flags,
    )
