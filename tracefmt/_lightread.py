"""From light step rows to the domain (format 1.4): :class:`~tracefmt.light.LightStep` and
:class:`~tracefmt.light.LightStepSummary`.

:class:`~tracefmt._rankfile.RankFile` reads the rows (checked against their tables) and this module
says what they mean, refusing what a light step cannot hold: a row kind this tracefmt does not
know, a row without a name, an event that names an op or a tensor (a light step has no graph).
Reading many light steps reads each table's span once, where the spans are short enough
(:func:`~tracefmt._tableread.ranges_rows`), instead of three reads per step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from tracefmt import _layout as L
from tracefmt._rows import EventRow, LightStatRow, ScalarRow, named
from tracefmt.errors import TraceFormatError
from tracefmt.light import LightKind, LightRow, LightStep, LightStepSummary
from tracefmt.model import Event

_KINDS = {int(k): k for k in LightKind}


def decode_light_step(
    r: np.void,
    tables: Mapping[str, np.ndarray],
    *,
    rank: int,
    where: str,
    text: Callable[[int], str | None],
) -> LightStep:
    """The :class:`LightStep` of index row ``r`` and its ``tables`` (see :func:`light_tables`);
    ``text(sid)`` resolves a string id (None for -1) and raises for a bad one."""
    rows = []
    for k, row in enumerate(named(tables[L.LIGHT_STATS], LightStatRow)):
        kind, name = _KINDS.get(row.kind), text(row.name)
        if kind is None:
            raise TraceFormatError(
                f"{where}: light row {k} has kind {row.kind}, which this tracefmt does not know "
                f"(it knows {sorted(_KINDS)}); a newer tracefmt may read it."
            )
        if name is None:
            raise TraceFormatError(f"{where}: light row {k} has no name (string id -1).")
        moments, counts = row.flags & L.LIGHT_MOMENTS, row.flags & L.LIGHT_COUNTS
        rows.append(
            LightRow(
                name=name,
                kind=kind,
                numel=row.numel,
                min=row.min if moments else None,
                max=row.max if moments else None,
                mean=row.mean if moments else None,
                std=row.std if moments else None,
                norm=row.norm if moments else None,
                nan=row.nan if counts else None,
                inf=row.inf if counts else None,
                inputs_nonfinite=bool(row.flags & L.LIGHT_INPUTS_NONFINITE),
            )
        )
    events = []
    for e in named(tables[L.LIGHT_EVENTS], EventRow):
        if e.op != L.NO_INDEX or e.tensor != L.NO_INDEX:
            raise TraceFormatError(
                f"{where}: a light step's event names op {e.op} and tensor {e.tensor}; a light "
                "step has no graph, so both must be -1."
            )
        events.append(Event(text(e.kind) or "", text(e.message) or ""))
    flags = int(r["flags"])
    return LightStep(
        step=int(r["step"]),
        rank=rank,
        rows=tuple(rows),
        scalars={text(sc.name) or "": sc.value for sc in named(tables[L.LIGHT_SCALARS], ScalarRow)},
        events=tuple(events),
        wall_time=float(r["wall_time"]),
        duration=float(r["duration"]),
        has_nan=bool(flags & L.STEP_HAS_NAN),
        has_inf=bool(flags & L.STEP_HAS_INF),
        nonfinite_created=bool(flags & L.STEP_NONFINITE_CREATED),
        nonfinite_state=bool(flags & L.STEP_NONFINITE_STATE),
    )


def decode_light_summaries(rows: np.ndarray, rank: int) -> list[LightStepSummary]:
    """One :class:`LightStepSummary` per row of the light step index ``rows``."""
    flags = rows["flags"]
    columns = {
        "step": rows["step"].tolist(),
        "num_rows": rows["stats_count"].tolist(),
        "num_events": rows["event_count"].tolist(),
        "num_scalars": rows["scalar_count"].tolist(),
        "has_nan": ((flags & L.STEP_HAS_NAN) != 0).tolist(),
        "has_inf": ((flags & L.STEP_HAS_INF) != 0).tolist(),
        "nonfinite_created": ((flags & L.STEP_NONFINITE_CREATED) != 0).tolist(),
        "nonfinite_state": ((flags & L.STEP_NONFINITE_STATE) != 0).tolist(),
        "wall_time": rows["wall_time"].tolist(),
        "duration": rows["duration"].tolist(),
    }
    names = list(columns)
    return [
        LightStepSummary(rank=rank, **dict(zip(names, values, strict=True)))
        for values in zip(*columns.values(), strict=True)
    ]
