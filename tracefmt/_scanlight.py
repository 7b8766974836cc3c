"""Light steps (format 1.4) as columns: their rows of the ``steps``, ``light_stats``, ``events``
and ``scalars`` tables (spec/parquet.md), for a batch of rows of a rank file's light step index.

The checks are :mod:`tracefmt._lightread`'s, made on whole columns: a row kind this tracefmt does
not know, a row without a name and an event that names an op or a tensor are refused with a
:class:`~tracefmt.errors.TraceFormatError` naming the file and step.
"""

from __future__ import annotations

import numpy as np

from tracefmt import _layout as L
from tracefmt._rankfile import RankFile
from tracefmt._scanfull import STEP_KINDS, event_table, read_ranges, scalar_table
from tracefmt._scangraph import enum_labels, positions
from tracefmt._scantypes import Column, ColumnTable, LabelPool, Labels, Masked
from tracefmt.errors import TraceFormatError
from tracefmt.light import LightKind

__all__ = ["light_tables"]

KINDS = enum_labels(LightKind)


def light_tables(rf: RankFile, pool: LabelPool, rows: np.ndarray) -> dict[str, ColumnTable]:
    """The tables of the light steps in ``rows`` (rows of the light step index)."""
    steps = rows["step"].astype(np.int64)

    def where(k: int) -> str:
        return f"{rf.path}, step {int(steps[k])}"

    got, owner = read_ranges(rf, L.LIGHT_STATS, rows["stats_start"], rows["stats_count"], steps)
    kind = got["kind"].astype(np.int64)
    known = np.array([bool(label) for label in KINDS])
    bad = np.flatnonzero((kind >= len(KINDS)) | ~known[np.minimum(kind, len(KINDS) - 1)])
    if len(bad):
        raise TraceFormatError(
            f"{where(int(owner[bad[0]]))}: a light row has kind {int(kind[bad[0]])}, which this "
            f"tracefmt does not know (it knows {[int(k) for k in LightKind]}); a newer tracefmt may "
            "read it."
        )
    unnamed = np.flatnonzero(got["name"] < 0)
    if len(unnamed):
        raise TraceFormatError(
            f"{where(int(owner[unnamed[0]]))}: a light row has no name (string id -1)."
        )
    flags = got["flags"]
    moments, counts = (flags & L.LIGHT_MOMENTS) != 0, (flags & L.LIGHT_COUNTS) != 0
    stats: dict[str, Column] = {
        "step": steps[owner],
        "row": positions(rows["stats_count"].astype(np.int64)).astype(np.int32),
        "name": pool.labels(pool.sid_codes(got["name"])),
        "kind": Labels(kind.astype(np.int32), KINDS),
        "numel": got["numel"].astype(np.int64),
    }
    for name in ("min", "max", "mean", "std", "norm"):
        stats[name] = Masked(got[name].astype(np.float64), moments)
    for name in ("nan", "inf"):
        stats[name] = Masked(got[name].astype(np.int64), counts)
    stats["inputs_nonfinite"] = (flags & L.LIGHT_INPUTS_NONFINITE) != 0

    events, event_owner = read_ranges(
        rf, L.LIGHT_EVENTS, rows["event_start"], rows["event_count"], steps
    )
    bad = np.flatnonzero((events["op"] != L.NO_INDEX) | (events["tensor"] != L.NO_INDEX))
    if len(bad):
        raise TraceFormatError(
            f"{where(int(event_owner[bad[0]]))}: a light step's event names an op or a tensor; a "
            "light step has no graph, so both must be -1."
        )
    scalars, scalar_owner = read_ranges(
        rf, L.LIGHT_SCALARS, rows["scalar_start"], rows["scalar_count"], steps
    )
    return {
        "steps": _steps(rows, steps),
        "light_stats": ColumnTable("light_stats", len(got), stats),
        "events": event_table(events, steps[event_owner], rows["event_count"], 1, pool),
        "scalars": scalar_table(scalars, steps[scalar_owner], 1, pool),
    }


def _steps(rows: np.ndarray, steps: np.ndarray) -> ColumnTable:
    n = len(rows)
    nowhere = np.zeros(n, dtype=bool)
    zeros = np.zeros(n, dtype=np.int64)
    flags = rows["flags"]
    duration = rows["duration"].astype(np.float64)
    return ColumnTable(
        "steps",
        n,
        {
            "step": steps,
            "step_kind": Labels(np.ones(n, dtype=np.int32), STEP_KINDS),
            "graph": Masked(zeros, nowhere),
            "num_ops": Masked(zeros, nowhere),
            "num_tensors": Masked(zeros, nowhere),
            "num_values": Masked(zeros, nowhere),
            "num_events": rows["event_count"].astype(np.int64),
            "num_scalars": rows["scalar_count"].astype(np.int64),
            "num_light_rows": Masked(rows["stats_count"].astype(np.int64), ~nowhere),
            "wall_time": rows["wall_time"].astype(np.float64),
            "duration": Masked(duration, np.isfinite(duration)),
            "has_nan": (flags & L.STEP_HAS_NAN) != 0,
            "has_inf": (flags & L.STEP_HAS_INF) != 0,
            "nonfinite_created": (flags & L.STEP_NONFINITE_CREATED) != 0,
            "nonfinite_state": (flags & L.STEP_NONFINITE_STATE) != 0,
            "dropped": Masked(zeros, nowhere),
        },
    )
