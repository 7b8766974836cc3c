"""A torchinfo-style summary of a model from one recorded step: :func:`summarize`.

Each module of the model gets one :class:`ModuleSummary` row, rolled up over its subtree (a module
and every module inside it), from two sources:

* the step's **module metadata** (format 1.5, :mod:`tracefmt.moduletable`): class names and
  parameter counts, exactly as the recording program's model had them.  A trace without it (an
  older file, or one recorded without ``model=``) still gets its table: the modules are the ops'
  module paths and their parents, parameter counts come from the step's parameter tensors (each
  name once, under the module its name gives: a shared parameter counts under its first name),
  and classes and trainable counts are unknown.
* the step's **ops**, by their module path: the output shape (the first output of the last
  forward op in the subtree: what the module returned in its last call, when its last op made
  it), multiply-adds of the forward ops (:mod:`replayer.summary.multadds`), host time of the
  forward and of the backward ops (``op_stats.host_ns``; a backward op belongs to the module whose
  forward made its autograd node), activation bytes (the forward ops' outputs that are new
  storage: neither views nor in-place writes) and memory (``op_stats.mem_bytes`` of the forward and
  backward ops where measured; None where no op of the subtree was).

Ops of the optimizer and of no phase are left out of the module rows (their time is in the
totals).  Nothing here imports torch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tracefmt
from replayer.summary.multadds import op_mult_adds
from replayer.why.stepflow import VIEW_OPS, base_op_name, is_inplace
from tracefmt.dtypes import DTYPE_INFO
from tracefmt.errors import TraceError
from tracefmt.model import Phase, Role
from tracefmt.moduletable import ModuleTable, parent_path
from tracefmt.reader import Step

__all__ = ["ModelSummary", "ModuleSummary", "SummaryTotals", "summarize", "summarize_step"]


@dataclass(frozen=True)
class ModuleSummary:
    """One module, its numbers over its whole subtree.  ``listed``: the module is in the step's
    module metadata (a module the ops name but the metadata lacks has no class or counts)."""

    path: str
    depth: int
    class_name: str | None
    listed: bool
    output_shape: tuple[int, ...] | None
    params: int | None
    trainable: int | None
    own_params: int | None
    param_bytes: int | None
    mult_adds: int
    forward_ns: int | None
    backward_ns: int | None
    activation_bytes: int
    mem_bytes: int | None
    ops: int

    @property
    def name(self) -> str:
        """The last component of the path (``""`` for the root)."""
        return self.path.rpartition(".")[2]


@dataclass(frozen=True)
class SummaryTotals:
    """The whole step: parameters (each once), input, activation and parameter bytes, forward
    multiply-adds and the host time of each phase (None where nothing was measured)."""

    params: int | None
    trainable: int | None
    param_bytes: int | None
    input_bytes: int
    activation_bytes: int
    mult_adds: int
    forward_ns: int | None
    backward_ns: int | None
    optimizer_ns: int | None
    mem_bytes: int | None

    @property
    def total_bytes(self) -> int:
        """Input, activation and parameter bytes together (torchinfo's estimated total size)."""
        return self.input_bytes + self.activation_bytes + (self.param_bytes or 0)


@dataclass(frozen=True)
class ModelSummary:
    """The summary of one recorded step: module rows in tree order (a parent before its
    children, children in the model's order), totals, and notes on what the trace lacked."""

    trace: str
    step: int
    rank: int
    has_metadata: bool
    modules: tuple[ModuleSummary, ...]
    totals: SummaryTotals
    notes: tuple[str, ...] = ()

    def shown(self, depth: int | None = None) -> tuple[ModuleSummary, ...]:
        """The rows of modules at most ``depth`` deep (all for None); deeper ones stay in their
        parents' numbers."""
        return self.modules if depth is None else tuple(m for m in self.modules if m.depth <= depth)

    def to_json(self, depth: int | None = None) -> dict[str, object]:
        """Plain data for ``--json``: the rows :meth:`shown` gives, the totals and the notes."""
        totals = asdict(self.totals) | {"total_bytes": self.totals.total_bytes}
        return {
            "trace": self.trace,
            "step": self.step,
            "rank": self.rank,
            "module_metadata": self.has_metadata,
            "modules": [asdict(m) for m in self.shown(depth)],
            "totals": totals,
            "notes": list(self.notes),
        }


@dataclass
class _Acc:
    """What one module adds up while the summary is built."""

    last_forward: int = -1
    mult_adds: int = 0
    forward_ns: int | None = None
    backward_ns: int | None = None
    activation_bytes: int = 0
    mem_bytes: int | None = None
    ops: int = 0
    params: int = 0
    param_bytes: int = 0
    children: list[str] = field(default_factory=list)

    def add(self, other: _Acc) -> None:
        self.last_forward = max(self.last_forward, other.last_forward)
        self.mult_adds += other.mult_adds
        self.forward_ns = _plus(self.forward_ns, other.forward_ns)
        self.backward_ns = _plus(self.backward_ns, other.backward_ns)
        self.activation_bytes += other.activation_bytes
        self.mem_bytes = _plus(self.mem_bytes, other.mem_bytes)
        self.ops += other.ops
        self.params += other.params
        self.param_bytes += other.param_bytes


def _plus(a: int | None, b: int | None) -> int | None:
    """A sum where None is "not measured": None only when both are."""
    return a if b is None else b if a is None else a + b


def _ancestors(path: str) -> Iterable[str]:
    """``path`` and every module above it, up to the root ``""``."""
    current: str | None = path
    while current is not None:
        yield current
        current = parent_path(current)


def _nbytes(step: Step, t: int) -> int:
    meta = step.tensors[t].meta
    return meta.numel * DTYPE_INFO[meta.dtype].itemsize


def _order(step: Step, table: ModuleTable | None, param_paths: Iterable[str]) -> list[str]:
    """Every module path in tree order: the metadata's modules in its order, then modules that
    only the ops (or parameter names) give, by first appearance."""
    key: dict[str, tuple[int, int]] = {"": (0, -1)}
    for i, m in enumerate(table or ()):
        key.setdefault(m.path, (0, i))
    for op in step.ops:
        for path in _ancestors(op.module):
            key.setdefault(path, (1, op.index))
    for path in param_paths:
        for p in _ancestors(path):
            key.setdefault(p, (2, 0))
    children: dict[str, list[str]] = defaultdict(list)
    for path in key:
        parent = parent_path(path)
        if parent is not None:
            children[parent].append(path)
    order, stack = [], [""]
    while stack:
        path = stack.pop()
        order.append(path)
        stack.extend(sorted(children[path], key=lambda p: key[p], reverse=True))
    return order


def _graph_params(step: Step) -> dict[str, tuple[int, int]]:
    """Parameter tensors of the step by name: (elements, bytes), each name once."""
    out: dict[str, tuple[int, int]] = {}
    for t in step.tensors:
        name = t.meta.name
        if t.meta.role is Role.PARAMETER and name and name not in out:
            out[name] = (t.meta.numel, _nbytes(step, t.index))
    return out


def summarize_step(step: Step, table: ModuleTable | None, *, trace: str = "") -> ModelSummary:
    """The :class:`ModelSummary` of a loaded step and its module metadata (None: the trace has
    none for it; the table is then built from the ops and parameter tensors alone)."""
    graph_params = {} if table is not None else _graph_params(step)
    param_paths = {name.rpartition(".")[0]: None for name in graph_params}
    order = _order(step, table, param_paths)
    acc = {path: _Acc() for path in order}
    for name, (n, nbytes) in graph_params.items():
        own = acc[name.rpartition(".")[0]]
        own.params, own.param_bytes = own.params + n, own.param_bytes + nbytes
    optimizer_ns: int | None = None
    for op in step.ops:
        if op.phase is Phase.OPTIMIZER:
            optimizer_ns = _plus(optimizer_ns, op.host_ns)
        if op.phase not in (Phase.FORWARD, Phase.BACKWARD):
            continue
        a = acc[op.module]
        a.ops += 1
        a.mem_bytes = _plus(a.mem_bytes, op.mem_bytes)
        if op.phase is Phase.BACKWARD:
            a.backward_ns = _plus(a.backward_ns, op.host_ns)
            continue
        a.forward_ns = _plus(a.forward_ns, op.host_ns)
        a.last_forward = op.index
        a.mult_adds += op_mult_adds(op, step.tensors) or 0
        if base_op_name(op.name) not in VIEW_OPS and not is_inplace(op.name):
            a.activation_bytes += sum(_nbytes(step, t) for t in op.outputs)
    for path in reversed(order[1:]):  # children before parents: roll each subtree up
        acc[parent_path(path) or ""].add(acc[path])
    rows = tuple(_row(step, path, acc[path], table) for path in order)
    root = rows[0]
    totals = SummaryTotals(
        params=root.params,
        trainable=root.trainable,
        param_bytes=root.param_bytes,
        input_bytes=sum(
            _nbytes(step, t.index)
            for t in step.tensors
            if t.meta.role is Role.INPUT and t.meta.producer is None
        ),
        activation_bytes=root.activation_bytes,
        mult_adds=root.mult_adds,
        forward_ns=root.forward_ns,
        backward_ns=root.backward_ns,
        optimizer_ns=optimizer_ns,
        mem_bytes=root.mem_bytes,
    )
    return ModelSummary(
        trace, step.step, step.rank, table is not None, rows, totals, _notes(step, table, rows)
    )


def _row(step: Step, path: str, a: _Acc, table: ModuleTable | None) -> ModuleSummary:
    info = None if table is None else table.by_path.get(path)
    shape = None
    if a.last_forward >= 0 and step.ops[a.last_forward].outputs:
        shape = step.tensors[step.ops[a.last_forward].outputs[0]].meta.shape
    graph_counts = table is None
    return ModuleSummary(
        path=path,
        depth=0 if not path else path.count(".") + 1,
        class_name=None if info is None else info.class_name,
        listed=info is not None,
        output_shape=shape,
        params=info.params if info else a.params if graph_counts else None,
        trainable=info.trainable if info else None,
        own_params=info.own_params if info else None,
        param_bytes=info.param_bytes if info else a.param_bytes if graph_counts else None,
        mult_adds=a.mult_adds,
        forward_ns=a.forward_ns,
        backward_ns=a.backward_ns,
        activation_bytes=a.activation_bytes,
        mem_bytes=a.mem_bytes,
        ops=a.ops,
    )


def _notes(step: Step, table: ModuleTable | None, rows: tuple[ModuleSummary, ...]) -> tuple[str, ...]:
    notes = []
    if table is None:
        notes.append(
            "The step has no module metadata (a trace older than format 1.5, or recorded without "
            "record(..., model=...)): class names and trainable counts are unknown, and parameter "
            "counts come from the parameter tensors the step used (a shared parameter counts under "
            "its first name)."
        )
    else:
        unlisted = [r.path for r in rows if not r.listed]
        if unlisted:
            shown = ", ".join(repr(p) for p in unlisted[:5]) + (", ..." if len(unlisted) > 5 else "")
            notes.append(
                f"{len(unlisted)} module path(s) of the ops are not in the module metadata "
                f"({shown}): modules outside the model given to the recorder, shown without class "
                "or parameters."
            )
    if all(op.host_ns is None for op in step.ops):
        notes.append("The step has no op times (op_stats): time columns are empty.")
    if all(op.mem_bytes is None for op in step.ops):
        notes.append("The step has no per-op memory (op_stats.mem_bytes): the memory column is empty.")
    return tuple(notes)


def summarize(trace: str | Path, *, step: int | None = None, rank: int | None = None) -> ModelSummary:
    """The summary of ``step`` of ``rank`` in the trace at ``trace`` (a rank file or a run
    directory); by default the first full step of the lowest rank.  Raises
    :class:`~tracefmt.errors.TraceError` when the trace has no such step."""
    with tracefmt.open(trace) as t:
        f = t.rank_file(rank)
        if step is None:
            steps = t.steps(f.rank)
            if not steps:
                raise TraceError(
                    f"Rank {f.rank} of {str(trace)!r} has no full step to summarize (light steps "
                    "have no graph); 'tracefmt ls' lists what it has."
                )
            step = steps[0]
        loaded = t.step(step, f.rank)
        table = t.modules(step, f.rank)
    return summarize_step(loaded, table, trace=str(trace))
