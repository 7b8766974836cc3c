"""Mapping a recorded step's ops to ONNX nodes, op by op: the half of the export the check shares.

:func:`load_selection` picks a step's ops (a phase, a module glob); :func:`map_step` turns each into
an :class:`OpUnit`, the standard ONNX nodes of its mapper in :mod:`replayer.export.ops` or one node
in the custom domain ``ai.tracefmt.aten`` (:mod:`replayer.export.custom`).  Each recorded tensor is
one ONNX value, named by :func:`value_names`.  :mod:`replayer.export.build` assembles the units into
a model; :mod:`replayer.check` runs them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field

import onnx

from replayer.errors import ReplayError
from replayer.export.custom import emit_custom
from replayer.export.ops import OpContext, Unsupported, mapper_for
from tracefmt.model import OpNode, Phase, TensorRecord
from tracefmt.progress import ProgressFn
from tracefmt.reader import Step, Trace

__all__ = [
    "PHASES",
    "MappedStep",
    "OpUnit",
    "Progress",
    "load_selection",
    "map_op",
    "map_step",
    "node_name",
    "select",
    "value_names",
]

PHASES = ("forward", "backward", "optimizer", "other", "all")
#: Called with (ops done, ops in all) while a step is mapped.
Progress = ProgressFn


@dataclass
class OpUnit:
    """The ONNX nodes of one recorded op and what the check needs to know about them."""

    op: OpNode
    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]
    recorded_inputs: list[tuple[str, int]]
    standard: bool
    reduction: int = 1
    exact: bool = False
    layout: bool = False
    random: bool = False
    uninitialized: bool = False
    why_custom: str | None = None


@dataclass
class MappedStep:
    """A selection of a step's ops, mapped: the input of model building and of the check."""

    step: Step
    units: list[OpUnit]
    names: list[str]
    produced: set[int] = field(default_factory=set)

    @property
    def ops(self) -> list[OpNode]:
        return [u.op for u in self.units]


def select(step: Step, phase: str = "all", module: str | None = None) -> list[OpNode]:
    """The ops of ``step`` in one phase (or ``all``) whose module path matches a glob."""
    if phase not in PHASES:
        raise ReplayError(f"Unknown phase {phase!r}; use one of {', '.join(PHASES)}.")
    want = None if phase == "all" else Phase[phase.upper()]
    return [
        op
        for op in step.ops
        if (want is None or op.phase is want)
        and (
            module is None
            or fnmatch.fnmatchcase(op.module, module)
            or fnmatch.fnmatchcase(op.module, module + ".*")
        )
    ]


def value_names(tensors: Sequence[TensorRecord]) -> list[str]:
    """Unique, readable ONNX value names: ``h.0.ln_1.weight``, ``wte.weight@v1``, ``t12``."""
    names: list[str] = []
    seen: set[str] = set()
    for t in tensors:
        base = t.name if t.name else f"t{t.index}"
        if t.name and t.meta.version:
            base = f"{base}@v{t.meta.version}"
        name = base if base not in seen else f"{base}#{t.index}"
        seen.add(name)
        names.append(name)
    return names


def node_name(op: OpNode) -> str:
    """``h.0.attn/bmm_71``: the module path, the op's short name and its index."""
    short = op.name.removeprefix("aten::").split(".")[0]
    return f"{op.module}/{short}_{op.index}" if op.module else f"{short}_{op.index}"


def _doc(step: Step, op: OpNode, unit_note: str | None) -> str:
    lines = [f"{op.name} (op {op.index}, {op.phase.label}) in module '{op.module or '<root>'}'"]
    if op.host_ns is not None:
        lines.append(f"host time: {op.host_ns / 1000:.1f} us")
    if op.device_ns is not None:
        lines.append(f"device time: {op.device_ns / 1000:.1f} us")
    if op.mem_bytes is not None:
        lines.append(f"memory delta: {op.mem_bytes} bytes")
    for t in op.outputs:
        st = step.tensors[t].stats
        if st is not None and st.min is not None:
            lines.append(
                f"out t{t}: min {st.min:.4g} max {st.max:.4g} mean {st.mean:.4g} "
                f"std {st.std:.4g} norm {st.norm:.4g} nan {st.nan} inf {st.inf}"
            )
    if unit_note:
        lines.append(unit_note)
    if op.source:
        lines.append(f"source: {op.source}")
    return "\n".join(lines)


def map_op(step: Step, op: OpNode, names: Sequence[str]) -> OpUnit:
    """The ONNX nodes of one op: its mapper's, or one custom node when it has none."""
    name = node_name(op)
    ctx = OpContext(op, step.tensors, names.__getitem__, name)
    mapper = mapper_for(op.name)
    why: str | None = "no mapping to standard ONNX"
    if mapper is not None:
        try:
            mapper(ctx)
            _check_outputs(ctx)
            why = None
        except Unsupported as e:
            why = f"not mapped: {e}"
        except Exception as e:  # a mapper bug must not stop the export: keep the op as custom
            why = f"mapper failed: {type(e).__name__}: {e}"
    if why is not None:
        ctx = OpContext(op, step.tensors, names.__getitem__, name)
        emit_custom(ctx)
    note = None
    if ctx.random:
        note = "random: replayed with the recorded draw (<output>.recorded)"
    elif why is not None:
        note = f"custom node ({why}); see spec/custom-ops.md"
    doc = _doc(step, op, note)
    for node in ctx.nodes:
        node.doc_string = doc
        for key, value in (
            ("tracefmt.op", str(op.index)),
            ("tracefmt.module", op.module),
            ("tracefmt.phase", op.phase.label),
        ):
            node.metadata_props.add(key=key, value=value)
    return OpUnit(
        op,
        ctx.nodes,
        ctx.initializers,
        ctx.recorded_inputs,
        why is None,
        ctx.reduction,
        ctx.exact,
        ctx.layout,
        ctx.random,
        ctx.uninitialized,
        why,
    )


def _check_outputs(ctx: OpContext) -> None:
    made = {o for n in ctx.nodes for o in n.output}
    missing = [o for o in ctx.outputs() if o not in made]
    if missing:
        raise Unsupported(f"the mapping does not produce {', '.join(missing)}")


def map_step(step: Step, ops: Sequence[OpNode], progress: Progress | None = None) -> MappedStep:
    """Map every op of a selection (in execution order)."""
    names = value_names(step.tensors)
    units = []
    produced: set[int] = set()
    for i, op in enumerate(ops):
        units.append(map_op(step, op, names))
        produced.update(op.outputs)
        if progress is not None and (i % 256 == 0 or i == len(ops) - 1):
            progress(i + 1, len(ops))
    return MappedStep(step, units, names, produced)


def load_selection(
    trace: Trace, step: int, rank: int | None, phase: str, module: str | None
) -> tuple[Step, list[OpNode]]:
    """Load a step and select its ops; a clear error when nothing is selected."""
    loaded = trace.step(step, rank)
    ops = select(loaded, phase, module)
    if not ops:
        raise ReplayError(
            f"Step {step} has no {phase} ops"
            + (f" in modules matching {module!r}" if module else "")
            + "."
        )
    return loaded, ops
