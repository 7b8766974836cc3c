"""What a writer is given: a step's graph and a self-contained in-memory record of one step.

A :class:`StepRecord` holds everything about one captured step (graph, statistics, values, events),
so a pipeline can keep it, drop it, or hand it to a :class:`~tracefmt.writer.TraceWriter` later
(the flight-recorder mode keeps the last K of them in memory).

Example::

    g = GraphBuilder()
    x = g.add_tensor(DType.FLOAT32, (8, 4), role=Role.INPUT, name="x")
    w = g.add_tensor(DType.FLOAT32, (3, 4), role=Role.PARAMETER, name="fc.weight")
    y = g.add_tensor(DType.FLOAT32, (8, 3), producer=g.num_ops)
    g.add_op("aten::mm.default", phase=Phase.FORWARD, module="fc", inputs=[x, w], outputs=[y])
    record = StepRecord(step=0, graph=g.finish(), stats=empty_stats(3))
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tracefmt._layout import OP_START_DTYPE, OP_STATS_DTYPE, STATS_DTYPE
from tracefmt.attrcodec import decode_attrs, decode_json, encode_attrs, encode_json
from tracefmt.dtypes import DTYPE_INFO, DType
from tracefmt.model import Event, Phase, Role
from tracefmt.moduletable import ModuleTable
from tracefmt.rngstate import RngState

__all__ = [
    "OP_STATS_DTYPE",
    "STATS_DTYPE",
    "Graph",
    "GraphBuilder",
    "OpSpec",
    "StepRecord",
    "decode_attrs",
    "decode_json",
    "empty_op_stats",
    "empty_stats",
    "encode_attrs",
    "encode_json",
]


@dataclass(frozen=True)
class TensorSpec:
    """A tensor of a graph being written; strings are kept as text until the writer interns them."""

    dtype: DType
    shape: tuple[int, ...]
    strides: tuple[int, ...] | None
    device: str
    role: Role
    name: str | None
    producer: int
    producer_slot: int
    version: int
    storage_offset: int


@dataclass(frozen=True)
class OpSpec:
    """An op of a graph being written.  ``inputs`` are (tensor, arg position, list item or -1)."""

    name: str
    phase: Phase
    module: str
    inputs: tuple[tuple[int, int, int], ...]
    outputs: tuple[int, ...]
    attrs: str | None
    source: str | None


class GraphBuilder:
    """Builds the graph of one step, op by op, in execution order."""

    def __init__(self) -> None:
        self._tensors: list[TensorSpec] = []
        self._ops: list[OpSpec] = []

    @property
    def num_ops(self) -> int:
        """Number of ops added so far: the index the next op will get."""
        return len(self._ops)

    @property
    def num_tensors(self) -> int:
        return len(self._tensors)

    def add_tensor(
        self,
        dtype: DType,
        shape: Sequence[int],
        *,
        strides: Sequence[int] | None = None,
        device: str = "cpu",
        role: Role = Role.ACTIVATION,
        name: str | None = None,
        producer: int | None = None,
        producer_slot: int = 0,
        version: int = 0,
        storage_offset: int = 0,
    ) -> int:
        """Add a tensor (a value: one version of one storage) and return its index.

        ``producer`` is the index of the op that outputs it (``None`` for a tensor that enters the
        step from outside: inputs, parameters, optimizer state as it was before the step).
        """
        shape_t = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape_t):
            raise ValueError(f"Tensor shape {shape_t} has a negative dimension.")
        if storage_offset < 0:
            raise ValueError(
                f"Storage offset {storage_offset} is negative; offsets count "
                "elements from the start of the storage."
            )
        strides_t = None if strides is None else tuple(int(s) for s in strides)
        if not shape_t:
            strides_t = ()  # a 0-d tensor has empty strides either way: one canonical form
        if strides_t is not None and len(strides_t) != len(shape_t):
            raise ValueError(f"Strides {strides_t} do not match shape {shape_t}.")
        self._tensors.append(
            TensorSpec(
                DType(dtype),
                shape_t,
                strides_t,
                device,
                Role(role),
                name,
                -1 if producer is None else int(producer),
                producer_slot,
                version,
                storage_offset,
            )
        )
        return len(self._tensors) - 1

    def add_op(
        self,
        name: str,
        *,
        phase: Phase,
        module: str = "",
        inputs: Sequence[int | tuple[int, int, int]] = (),
        outputs: Sequence[int] = (),
        attrs: Mapping[str, Any] | None = None,
        source: str | None = None,
    ) -> int:
        """Add an op and return its index.

        ``inputs`` are tensor indices (argument position = place in the list), or explicit
        ``(tensor, arg, item)`` triples where ``item`` is the position inside a list argument (-1
        when the argument is a single tensor).  ``attrs`` are the non-tensor arguments, as JSON data.
        """
        n = len(self._tensors)
        triples = tuple(
            (int(t), i, -1) if isinstance(t, int) else (int(t[0]), int(t[1]), int(t[2]))
            for i, t in enumerate(inputs)
        )
        outs = tuple(int(t) for t in outputs)
        for t in [tr[0] for tr in triples] + list(outs):
            if not 0 <= t < n:
                raise ValueError(f"Op {name!r} refers to tensor {t}, but the graph has {n} tensors.")
        self._ops.append(
            OpSpec(
                name,
                Phase(phase),
                module,
                triples,
                outs,
                None if not attrs else encode_attrs(attrs),
                source,
            )
        )
        return len(self._ops) - 1

    def finish(self) -> Graph:
        """Freeze the graph.  The builder may be reused afterwards only for a new graph."""
        for op_index, op in enumerate(self._ops):
            for t in op.outputs:
                producer = self._tensors[t].producer
                if producer not in (-1, op_index):
                    raise ValueError(
                        f"Tensor {t} is an output of op {op_index} ({op.name!r}) "
                        f"but names op {producer} as its producer."
                    )
        for t, spec in enumerate(self._tensors):
            if spec.producer >= len(self._ops):
                raise ValueError(f"Tensor {t} names producer op {spec.producer}, which was never added.")
        graph = Graph(tuple(self._ops), tuple(self._tensors))
        self._ops, self._tensors = [], []
        return graph


@dataclass(frozen=True)
class Graph:
    """A finished, immutable step graph.

    Graphs that differ only in their ops' attributes and their tensors' storage offsets have equal
    :attr:`digest`: the writer stores them as one graph, and each step's own attributes and
    offsets apart (spec section 7).
    """

    ops: tuple[OpSpec, ...]
    tensors: tuple[TensorSpec, ...]

    @property
    def num_ops(self) -> int:
        return len(self.ops)

    def variant(
        self,
        attrs: Mapping[int, Mapping[str, Any] | None] | None = None,
        storage_offsets: Mapping[int, int] | None = None,
    ) -> Graph:
        """This graph with some ops' attributes (op index: JSON data, as :meth:`GraphBuilder.add_op`
        takes them) and some tensors' storage offsets replaced.

        The structure stays, so the :attr:`digest` is carried over rather than computed again: a
        recorder whose steps repeat one graph builds each step's graph from the last one in a
        fraction of the time.
        """
        ops = list(self.ops)
        for i, value in (attrs or {}).items():
            ops[i] = replace(ops[i], attrs=None if not value else encode_attrs(value))
        tensors = list(self.tensors)
        for i, offset in (storage_offsets or {}).items():
            if offset < 0:
                raise ValueError(
                    f"Tensor {i}: storage offset {offset} is negative; offsets count "
                    "elements from the start of the storage."
                )
            tensors[i] = replace(tensors[i], storage_offset=int(offset))
        graph = Graph(tuple(ops), tuple(tensors))
        object.__setattr__(graph, "_digest", self.digest)
        return graph

    @property
    def num_tensors(self) -> int:
        return len(self.tensors)

    @property
    def digest(self) -> bytes:
        """128-bit BLAKE2b digest of the graph's structure (the writer's deduplication key):
        everything but the ops' ``attrs`` and the tensors' ``storage_offset``.

        Those two change from step to step in real training (an optimizer's step size, a data
        loader's slice bounds and the offsets of the views it slices); left in the digest, no
        training step would ever reuse a stored graph.  The encoding is the ``repr`` of plain
        tuples of ints and strings (enum members by value): a dataclass ``repr`` with enum names
        cost about four times as much.
        """
        cached: bytes | None = self.__dict__.get("_digest")
        if cached is None:
            ops = [
                (op.name, op.phase.value, op.module, op.inputs, op.outputs, op.source) for op in self.ops
            ]
            tensors = [
                (
                    t.dtype.value,
                    t.shape,
                    t.strides,
                    t.device,
                    t.role.value,
                    t.name,
                    t.producer,
                    t.producer_slot,
                    t.version,
                )
                for t in self.tensors
            ]
            h = hashlib.blake2b(digest_size=16)
            h.update(repr((ops, tensors)).encode())
            cached = h.digest()
            object.__setattr__(self, "_digest", cached)
        return cached


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def numpy_can_hold(shape: tuple[int, ...], dtype: np.dtype[Any]) -> bool:
    """Whether numpy can make an empty array of ``shape`` (it refuses when the product of the
    other dimensions overflows, even next to a zero)."""
    try:
        np.empty(shape, dtype=dtype)
    except (ValueError, MemoryError):
        return False
    return True


def empty_stats(n: int) -> np.ndarray:
    """A stats table for ``n`` tensors with nothing computed (flags 0); fill what you compute."""
    rows = np.zeros(n, dtype=STATS_DTYPE)
    for name in ("min", "max", "mean", "std", "norm"):
        rows[name] = np.nan
    return rows


def empty_op_stats(n: int) -> np.ndarray:
    """An op timing table for ``n`` ops with nothing measured (-1 everywhere)."""
    rows = np.empty(n, dtype=OP_STATS_DTYPE)
    for name in OP_STATS_DTYPE.names or ():
        rows[name] = -1
    return rows


@dataclass
class StepRecord:
    """Everything captured for one step, ready to write.

    ``stats`` has one row per graph tensor (``STATS_DTYPE``), ``op_stats`` one row per op
    (``OP_STATS_DTYPE``), ``op_starts`` one integer per op: when it started on the host, in ns after the
    step's start (-1: not measured); each may be ``None`` (nothing measured).  ``values`` maps a tensor
    index to its full values (any array whose bytes are the tensor's C-contiguous values: the logical
    dtype, or its raw bits).  ``histograms`` maps a tensor index to ``(lo, hi, counts)``.
    """

    step: int
    graph: Graph
    stats: np.ndarray | None = None
    op_stats: np.ndarray | None = None
    values: Mapping[int, np.ndarray] = field(default_factory=dict)
    histograms: Mapping[int, tuple[float, float, np.ndarray]] = field(default_factory=dict)
    events: Sequence[Event] = ()
    scalars: Mapping[str, float] = field(default_factory=dict)
    wall_time: float = 0.0
    duration: float = math.nan
    dropped: int = 0
    op_starts: np.ndarray | Sequence[int] | None = None
    modules: ModuleTable | None = None  #: the model's modules (format 1.5), None: not known
    rng_states: tuple[RngState, ...] = ()  #: generators' states at the step's start (format 1.6)

    def check(self) -> None:
        """Raise ``ValueError`` when the record does not fit its graph: table lengths, tensor and
        op indices, value sizes (what :meth:`tracefmt.writer.TraceWriter.write_step` checks before
        it writes anything)."""
        record, graph = self, self.graph
        if record.stats is not None and len(record.stats) != graph.num_tensors:
            raise ValueError(
                f"Step {record.step}: {len(record.stats)} stats rows for {graph.num_tensors} tensors."
            )
        for ops in (record.op_stats, record.op_starts):
            if ops is not None and len(ops) != graph.num_ops:
                raise ValueError(
                    f"Step {record.step}: {len(ops)} op timing rows for {graph.num_ops} ops."
                )
        for tensor in [*record.values, *record.histograms]:
            if not 0 <= tensor < graph.num_tensors:
                raise ValueError(
                    f"Step {record.step}: values or histogram for tensor {tensor}, "
                    f"but the graph has {graph.num_tensors} tensors."
                )
        for tensor, array in record.values.items():
            spec = graph.tensors[tensor]
            want = _numel(spec.shape) * DTYPE_INFO[spec.dtype].itemsize
            if array.nbytes != want:
                raise ValueError(
                    f"Step {record.step}: values of tensor {tensor} "
                    f"({spec.name or 'unnamed'}) have {array.nbytes} bytes; shape "
                    f"{spec.shape} of {spec.dtype.label} needs {want}."
                )
            if want == 0 and not numpy_can_hold(spec.shape, DTYPE_INFO[spec.dtype].logical):
                raise ValueError(
                    f"Step {record.step}: tensor {tensor} has shape {spec.shape}, "
                    "which no numpy array can take, so its (empty) values could not "
                    "be read back; record it without values."
                )
        for e in record.events:
            if e.op is not None and not 0 <= e.op < graph.num_ops:
                raise ValueError(f"Step {record.step}: event {e.kind!r} names op {e.op}.")
            if e.tensor is not None and not 0 <= e.tensor < graph.num_tensors:
                raise ValueError(f"Step {record.step}: event {e.kind!r} names tensor {e.tensor}.")

    def op_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """The rows the writer stores in ``op_stats`` and ``op_starts``: -1 where not given."""
        n = self.graph.num_ops
        stats = empty_op_stats(n) if self.op_stats is None else np.asarray(self.op_stats, OP_STATS_DTYPE)
        starts = np.full(n, -1, dtype=OP_START_DTYPE)
        if self.op_starts is not None:
            starts["host_start_ns"] = np.asarray(self.op_starts, dtype=np.int64)
        return stats, starts

    @property
    def nbytes(self) -> int:
        """Approximate in-memory size, for bounded queues and ring buffers."""
        total = sum(int(v.nbytes) for v in self.values.values())
        total += 0 if self.stats is None else int(self.stats.nbytes)
        total += 0 if self.op_stats is None else int(self.op_stats.nbytes)
        total += 0 if self.op_starts is None else 8 * len(self.op_starts)
        return total + 200 * (self.graph.num_ops + self.graph.num_tensors)
