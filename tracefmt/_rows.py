"""The rows of the format's tables as named tuples, so code names a column instead of counting.

Each class has the fields of its row dtype in :mod:`tracefmt._layout`, in the same order (a test
holds them to it), so ``Row._make`` turns a row of ``ndarray.tolist()`` into a named record and a
record assigns straight into a row: ``rows[i] = OpRow(name=..., ...)``.  Reading a table as
``list(map(OpRow._make, rows.tolist()))`` costs about as much as the plain tuples did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, TypeVar

import numpy as np

from tracefmt import _layout as L
from tracefmt._modlayout import MODULES, STEP_MODULES, ModuleRow, StepModuleRow
from tracefmt._rnglayout import RNG_STATES, STEP_RNG_STATES, RngStateRow, StepRngRow
from tracefmt.model import Event


class StringRow(NamedTuple):
    """A row of ``strings/index``: where one interned string's UTF-8 bytes lie in ``strings/bytes``."""

    offset: int
    length: int


class GraphRow(NamedTuple):
    """A row of ``graphs``: the graph's ranges of ``ops``, ``edges``, ``tensors`` and ``dims``, and
    its structure's digest (16 bytes: an array when written, a list of ints when read)."""

    op_start: int
    op_count: int
    edge_start: int
    edge_count: int
    tensor_start: int
    tensor_count: int
    dim_start: int
    dim_count: int
    digest: Any


class OpRow(NamedTuple):
    """A row of ``ops``: string ids, the phase code and the op's ranges of its graph's edges."""

    name: int
    phase: int
    module: int
    attrs: int
    source: int
    in_start: int
    in_count: int
    out_start: int
    out_count: int


class EdgeRow(NamedTuple):
    """A row of ``edges``: a tensor, the argument position and the list item (or -1)."""

    tensor: int
    arg: int
    item: int


class TensorRow(NamedTuple):
    """A row of ``tensors``: codes, the tensor's place in ``dims``, string ids and its producer."""

    dtype: int
    role: int
    ndim: int
    dim_start: int
    device: int
    name: int
    producer: int
    producer_slot: int
    version: int
    storage_offset: int


class StepRow(NamedTuple):
    """A row of ``steps``: the step's graph, its ranges of the per-step tables, and totals."""

    step: int
    graph: int
    stats_start: int
    stats_count: int
    op_stats_start: int
    op_stats_count: int
    data_start: int
    data_count: int
    hist_start: int
    hist_count: int
    event_start: int
    event_count: int
    scalar_start: int
    scalar_count: int
    wall_time: float
    duration: float
    flags: int
    dropped: int


class StatsRow(NamedTuple):
    """A row of ``stats``: which statistics were computed (``flags``) and their values."""

    flags: int
    min: float
    max: float
    mean: float
    std: float
    norm: float
    nan: int
    inf: int
    zero: int
    fingerprint: int


class OpStatsRow(NamedTuple):
    """A row of ``op_stats``: an op's timing and memory, -1 where not measured."""

    host_ns: int
    device_ns: int
    mem_bytes: int


class OpStartRow(NamedTuple):
    """A row of ``op_starts`` (format 1.3): when the op of the same row of ``op_stats`` started on
    the host, in ns after its step's start; -1 where not measured."""

    host_start_ns: int


# The functional form: in the class form mypy refuses a field named ``count`` (it hides
# ``tuple.count``); in this one it types it.
DataRow = NamedTuple(  # noqa: UP014
    "DataRow", [("tensor", int), ("offset", int), ("count", int), ("fingerprint", int)]
)
DataRow.__doc__ = "A row of ``data_index``: where one tensor's values lie in its value heap."


class HistRow(NamedTuple):
    """A row of ``hists``: one tensor's histogram (``counts`` has the file's ``hist_bins``: a list
    of ints when read, an array when written)."""

    tensor: int
    lo: float
    hi: float
    counts: Any


class EventRow(NamedTuple):
    """A row of ``events``: string ids of kind and message, the op and tensor (or -1)."""

    kind: int
    op: int
    tensor: int
    message: int


class ScalarRow(NamedTuple):
    """A row of ``scalars``: a name's string id and its value."""

    name: int
    value: float


class OpAttrsRow(NamedTuple):
    """A row of ``op_attrs``: an op's own attributes (a string id) in one step."""

    op: int
    attrs: int


class TensorOffsetRow(NamedTuple):
    """A row of ``tensor_offsets``: a tensor's own storage offset in one step."""

    tensor: int
    storage_offset: int


class StepOverrideRow(NamedTuple):
    """A row of ``step_overrides``: the ranges of ``op_attrs`` and ``tensor_offsets`` of the step in
    the same row of ``steps``."""

    op_attrs_start: int
    op_attrs_count: int
    tensor_offset_start: int
    tensor_offset_count: int


class LightStepRow(NamedTuple):
    """A row of ``light_steps`` (format 1.4): a light step's ranges of ``light_stats``,
    ``light_events`` and ``light_scalars``, its times and its step flags."""

    step: int
    stats_start: int
    stats_count: int
    event_start: int
    event_count: int
    scalar_start: int
    scalar_count: int
    wall_time: float
    duration: float
    flags: int


class LightStatRow(NamedTuple):
    """A row of ``light_stats`` (format 1.4): what one module output or parameter measured."""

    name: int
    kind: int
    flags: int
    min: float
    max: float
    mean: float
    std: float
    norm: float
    nan: int
    inf: int
    numel: int


#: The named row of each table (``hists`` by its field names: its dtype depends on the file).
ROWS: dict[str, type[NamedTuple]] = {
    L.STRINGS_INDEX: StringRow,
    L.GRAPHS: GraphRow,
    L.OPS: OpRow,
    L.EDGES: EdgeRow,
    L.TENSORS: TensorRow,
    L.STEPS: StepRow,
    L.STATS: StatsRow,
    L.OP_STATS: OpStatsRow,
    L.DATA_INDEX: DataRow,
    L.HISTS: HistRow,
    L.EVENTS: EventRow,
    L.SCALARS: ScalarRow,
    L.OP_ATTRS: OpAttrsRow,
    L.TENSOR_OFFSETS: TensorOffsetRow,
    L.STEP_OVERRIDES: StepOverrideRow,
    L.OP_STARTS: OpStartRow,
    L.LIGHT_STEPS: LightStepRow,
    L.LIGHT_STATS: LightStatRow,
    L.LIGHT_EVENTS: EventRow,
    L.LIGHT_SCALARS: ScalarRow,
    MODULES: ModuleRow,
    STEP_MODULES: StepModuleRow,
    RNG_STATES: RngStateRow,
    STEP_RNG_STATES: StepRngRow,
}

R = TypeVar("R", bound=NamedTuple)


def named(rows: np.ndarray, row: type[R]) -> list[R]:
    """The rows of a table slice as ``row`` records."""
    return list(map(row._make, rows.tolist()))


def event_rows(events: Iterable[Event], intern: Callable[[str | None], int]) -> np.ndarray:
    """``events`` as rows of ``events`` (or ``light_events``), their texts interned."""
    return np.array(
        [
            EventRow(
                kind=intern(e.kind),
                op=L.NO_INDEX if e.op is None else e.op,
                tensor=L.NO_INDEX if e.tensor is None else e.tensor,
                message=intern(e.message),
            )
            for e in events
        ],
        dtype=L.EVENT_DTYPE,
    )


def scalar_rows(scalars: Mapping[str, float], intern: Callable[[str | None], int]) -> np.ndarray:
    """``scalars`` as rows of ``scalars`` (or ``light_scalars``), their names interned."""
    return np.array(
        [ScalarRow(name=intern(k), value=float(v)) for k, v in scalars.items()], dtype=L.SCALAR_DTYPE
    )
