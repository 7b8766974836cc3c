"""Library side of the CLI: what ``tracefmt info``, ``show`` and ``dump`` compute, as plain data.

The click layer in :mod:`tracefmt.cli` only parses, calls these functions and prints.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tracefmt import _layout as L
from tracefmt._modlayout import MODULES, STEP_MODULES
from tracefmt._rnglayout import RNG_BYTES, RNG_STATES, STEP_RNG_STATES
from tracefmt.dtypes import DType
from tracefmt.errors import TraceError
from tracefmt.light import LightStepSummary
from tracefmt.model import OpNode, Phase, TensorRecord
from tracefmt.reader import Step, StepSummary, Trace, rank_of_name

#: How datasets group into the byte budget ``tracefmt info`` reports.
KIND_OF_DATASET = {
    L.GRAPHS: "graph",
    L.OPS: "graph",
    L.EDGES: "graph",
    L.TENSORS: "graph",
    L.DIMS: "graph",
    L.OP_ATTRS: "graph",
    L.TENSOR_OFFSETS: "graph",
    L.STEP_OVERRIDES: "index",
    L.STATS: "stats",
    L.OP_STATS: "stats",
    L.OP_STARTS: "stats",
    L.HISTS: "stats",
    L.STEPS: "index",
    L.DATA_INDEX: "index",
    L.STRINGS_BYTES: "strings",
    L.STRINGS_INDEX: "strings",
    L.EVENTS: "events",
    L.SCALARS: "events",
    L.LIGHT_STEPS: "light",
    L.LIGHT_STATS: "light",
    L.LIGHT_EVENTS: "events",
    L.LIGHT_SCALARS: "events",
    MODULES: "graph",
    STEP_MODULES: "index",
    RNG_STATES: "rng",
    RNG_BYTES: "rng",
    STEP_RNG_STATES: "index",
}


@dataclass(frozen=True)
class KindBytes:
    """Logical bytes (numpy rows) and bytes on disk of one kind of data."""

    kind: str
    raw_bytes: int
    stored_bytes: int

    @property
    def ratio(self) -> float | None:
        """How many times smaller the data is on disk (``None`` when nothing is stored)."""
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else None


#: A rank's status in ``tracefmt info``: its file read, is present but unusable, or is absent.
RANK_OK, RANK_DAMAGED, RANK_MISSING = "ok", "damaged", "missing"


@dataclass(frozen=True)
class RankInfo:
    """One row of ``tracefmt info``.  A damaged or missing rank has ``problem`` set and no
    numbers (None); ``last_step`` is the rank's last committed step."""

    rank: int
    status: str = RANK_OK
    problem: str | None = None
    host: str | None = None
    path: str | None = None
    file_bytes: int | None = None
    steps: int | None = None
    first_step: int | None = None
    last_step: int | None = None
    graphs: int | None = None
    ops_per_step_min: int | None = None
    ops_per_step_median: float | None = None
    ops_per_step_max: int | None = None
    values_recorded: int | None = None
    steps_with_nan: int | None = None
    steps_with_inf: int | None = None
    #: format 1.4: light steps, and step numbers whose full or light step has an op (a module)
    #: that created NaN/Inf, or whose loss or state holds NaN/Inf
    light_steps: int | None = None
    steps_nonfinite_created: int | None = None
    steps_nonfinite_state: int | None = None
    events: int | None = None
    dropped: int | None = None
    values_filter: str | None = None
    bytes_by_kind: list[KindBytes] = field(default_factory=list)


@dataclass(frozen=True)
class TraceInfo:
    path: str
    run_id: str
    world_size: int
    ranks: list[int]
    expected_ranks: list[int]
    missing_ranks: list[int]
    damaged_ranks: dict[int, str]
    manifest: bool
    manifest_problem: str | None
    format_version: str
    provenance: dict[str, Any]
    rank_info: list[RankInfo]

    @property
    def complete(self) -> bool:
        """Whether every rank shown read (no damaged or missing row)."""
        return all(r.status == RANK_OK for r in self.rank_info)

    @property
    def raw_bytes(self) -> int:
        return sum(k.raw_bytes for r in self.rank_info for k in r.bytes_by_kind)

    @property
    def stored_bytes(self) -> int:
        return sum(k.stored_bytes for r in self.rank_info for k in r.bytes_by_kind)

    def bytes_by_kind(self) -> list[KindBytes]:
        """Bytes of each kind of data summed over the ranks (kinds in the order first seen)."""
        totals: dict[str, tuple[int, int]] = {}
        for r in self.rank_info:
            for k in r.bytes_by_kind:
                raw, stored = totals.get(k.kind, (0, 0))
                totals[k.kind] = (raw + k.raw_bytes, stored + k.stored_bytes)
        return [KindBytes(kind, raw, stored) for kind, (raw, stored) in totals.items()]


def _rank_info(trace: Trace, rank: int) -> RankInfo:
    """The row of a readable rank; a TraceError while reading it makes it a damaged row."""
    f = trace.rank_file(rank)
    host = (f.distributed.hostname if f.distributed else None) or f.provenance.host or None
    try:
        summaries, light = f.summaries(), f.light_summaries()
        kinds: dict[str, list[int]] = {}
        for ds in f.dataset_sizes():
            kind = KIND_OF_DATASET.get(ds.path, "values")
            acc = kinds.setdefault(kind, [0, 0])
            acc[0] += ds.raw_bytes
            acc[1] += ds.stored_bytes
    except TraceError as e:
        return RankInfo(rank, RANK_DAMAGED, str(e), host, str(f.path), os.path.getsize(f.path))
    ops = [s.num_ops for s in summaries] or [0]
    both: list[StepSummary | LightStepSummary] = [*summaries, *light]
    return RankInfo(
        rank=rank,
        host=host,
        path=str(f.path),
        file_bytes=os.path.getsize(f.path),
        steps=len(summaries),
        first_step=summaries[0].step if summaries else None,
        last_step=summaries[-1].step if summaries else None,
        graphs=len({s.graph for s in summaries}),
        ops_per_step_min=min(ops),
        ops_per_step_median=float(statistics.median(ops)),
        ops_per_step_max=max(ops),
        values_recorded=sum(s.num_values for s in summaries),
        steps_with_nan=sum(s.has_nan for s in summaries),
        steps_with_inf=sum(s.has_inf for s in summaries),
        light_steps=len(light),
        steps_nonfinite_created=len({s.step for s in both if s.nonfinite_created}),
        steps_nonfinite_state=len({s.step for s in both if s.nonfinite_state}),
        events=sum(s.num_events for s in summaries),
        dropped=sum(s.dropped for s in summaries),
        values_filter=f.values_filter,
        bytes_by_kind=[KindBytes(k, v[0], v[1]) for k, v in sorted(kinds.items())],
    )


def trace_info(trace: Trace, ranks: Sequence[int] | None = None) -> TraceInfo:
    """Everything ``tracefmt info`` shows: run, ranks, steps, ops per step, bytes by kind.

    One row per rank of ``ranks`` (default: every rank the run expects or has a file for), in
    rank order; a damaged or missing rank is a row with its problem, never an exception.
    """
    damaged, missing = trace.damaged_ranks, set(trace.missing_ranks)
    every = sorted({*trace.ranks, *damaged, *missing})
    rows = []
    for rank in every if ranks is None else sorted(set(ranks)):
        if rank in damaged:
            path = next(p for p in sorted(trace.damaged_files) if rank_of_name(p) == rank)
            size = path.stat().st_size if path.exists() else None
            rows.append(RankInfo(rank, RANK_DAMAGED, damaged[rank], None, str(path), size))
        elif rank in trace.ranks:
            rows.append(_rank_info(trace, rank))
        else:
            where = "the run expects it" if rank in missing else "it is not a rank of this run"
            rows.append(RankInfo(rank, RANK_MISSING, f"Rank {rank} has no file ({where})."))
    first = trace.rank_file()
    p = trace.provenance
    prov: dict[str, Any] = {
        "tracefmt": p.tracefmt,
        "h5py": p.h5py,
        "hdf5": p.hdf5,
        "numpy": p.numpy,
        "python": p.python,
        "created": p.created,
        "host": p.host,
        **dict(p.extra),
    }
    if p.torch:
        prov["torch"] = p.torch
    return TraceInfo(
        path=str(trace.path),
        run_id=trace.run_id,
        world_size=trace.world_size,
        ranks=list(trace.ranks),
        expected_ranks=list(trace.expected_ranks),
        missing_ranks=list(trace.missing_ranks),
        damaged_ranks=dict(damaged),
        manifest=trace.manifest is not None,
        manifest_problem=trace.manifest_problem,
        format_version=f"{first.version[0]}.{first.version[1]}",
        provenance=prov,
        rank_info=rows,
    )


def run_summaries(trace: Trace, rank: int | None = None) -> list[StepSummary | LightStepSummary]:
    """Summaries of the full and light steps (format 1.4) of ``rank``, or of every readable rank,
    ordered by (step, rank, full before light), with the kinds of their events."""
    rows: list[StepSummary | LightStepSummary] = []
    for r in trace.ranks if rank is None else (rank,):
        f = trace.rank_file(r)
        full, light = f.summaries(), f.light_summaries()
        kinds = f.event_kinds() if any(s.num_events for s in full) else [()] * len(full)
        rows += [dataclasses.replace(s, event_kinds=k) for s, k in zip(full, kinds, strict=True)]
        kinds = f.event_kinds(light=True) if any(s.num_events for s in light) else [()] * len(light)
        rows += [dataclasses.replace(s, event_kinds=k) for s, k in zip(light, kinds, strict=True)]
    return sorted(rows, key=lambda s: (s.step, s.rank, s.kind != "full"))


def select_ops(
    step: Step, *, module: str | None = None, op: str | None = None, phase: str | None = None
) -> list[OpNode]:
    """The ops of ``step`` matching a module glob, an op-name glob and a phase name."""
    want_phase = None
    if phase is not None:
        try:
            want_phase = Phase[phase.upper()]
        except KeyError:
            raise TraceError(
                f"Unknown phase {phase!r}; use one of {', '.join(p.label for p in Phase)}."
            ) from None
    out = []
    for node in step.ops:
        if want_phase is not None and node.phase is not want_phase:
            continue
        if module is not None and not fnmatch.fnmatchcase(node.module, module):
            continue
        if op is not None and not (
            fnmatch.fnmatchcase(node.name, op)
            or fnmatch.fnmatchcase(node.name.removeprefix("aten::"), op)
        ):
            continue
        out.append(node)
    return out


#: The orders ``tracefmt show --sort`` takes: execution order, host time, memory.
OP_ORDERS = ("order", "time", "memory")


def sort_ops(ops: Sequence[OpNode], by: str) -> list[OpNode]:
    """``ops`` in execution order (``"order"``), longest host time first (``"time"``) or most
    bytes allocated first (``"memory"``: ``mem_bytes``, spec section 5.8); ops without the
    measure come last, and ties keep execution order."""
    if by not in OP_ORDERS:
        raise TraceError(f"Unknown op order {by!r}; use one of {', '.join(OP_ORDERS)}.")
    if by == "order":
        return list(ops)
    field = "host_ns" if by == "time" else "mem_bytes"
    measured = [n for n in ops if getattr(n, field) is not None]
    measured.sort(key=lambda n: -getattr(n, field))
    return measured + [n for n in ops if getattr(n, field) is None]


def find_tensor(step: Step, key: str) -> TensorRecord:
    """A tensor of ``step`` by index (``"12"``) or by name (``"layers.0.weight"``; the last
    version of that name in the step)."""
    if key.isdigit():
        i = int(key)
        if i >= len(step.tensors):
            raise TraceError(
                f"Step {step.step} has {len(step.tensors)} tensors; there is no tensor {i}."
            )
        return step.tensors[i]
    named = [t for t in step.tensors if t.name == key]
    if not named:
        raise TraceError(
            f"Step {step.step} has no tensor named {key!r}; 'tracefmt show' lists tensor ids and names."
        )
    return named[-1]


def dump_tensor(tensor: TensorRecord, out: str | os.PathLike[str], *, raw: bool = False) -> Path:
    """Write a tensor's values to ``.npy`` (never pickled).

    bfloat16 and float8 have no numpy dtype a plain ``.npy`` reader knows, so by default they are
    widened to float32 (exact: every such value is a float32); ``raw=True`` writes the stored bits
    (uint16 / uint8) instead.
    """
    values = tensor.values()
    if tensor.dtype in _WIDEN and not raw:
        values = values.astype(np.float32)
    elif tensor.dtype in _WIDEN:
        values = values.view(np.uint16 if values.dtype.itemsize == 2 else np.uint8)
    path = Path(out)
    # Not np.ascontiguousarray: it returns at least one dimension, and a 0-d tensor has none.
    np.save(path, np.asarray(values, order="C"), allow_pickle=False)
    return path


_WIDEN = frozenset(
    {
        DType.BFLOAT16,
        DType.FLOAT8_E4M3FN,
        DType.FLOAT8_E4M3FNUZ,
        DType.FLOAT8_E5M2,
        DType.FLOAT8_E5M2FNUZ,
        DType.FLOAT8_E8M0FNU,
    }
)


def shapes_text(tensors: Sequence[TensorRecord]) -> str:
    """``f32[8,16], bf16[16,16]`` for a list of tensors; runs of equal ones as ``16x i64[64]``."""
    labels = [f"{_SHORT.get(t.dtype, t.dtype.label)}[{','.join(map(str, t.shape))}]" for t in tensors]
    parts: list[str] = []
    i = 0
    while i < len(labels):
        j = i
        while j < len(labels) and labels[j] == labels[i]:
            j += 1
        parts.append(labels[i] if j - i == 1 else f"{j - i}x {labels[i]}")
        i = j
    return ", ".join(parts)


_SHORT = {
    DType.FLOAT32: "f32",
    DType.FLOAT16: "f16",
    DType.BFLOAT16: "bf16",
    DType.FLOAT64: "f64",
    DType.INT64: "i64",
    DType.INT32: "i32",
    DType.BOOL: "bool",
    DType.UINT8: "u8",
    DType.INT8: "i8",
}
