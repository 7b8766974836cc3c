"""Export one recorded step as an ONNX model: what ran, op by op, for Netron and ONNX Runtime.

Each recorded tensor becomes one ONNX value (named by its parameter name where it has one, else
``t<index>``; a later version of a named tensor is ``name@v<version>``) with its shape and dtype in
``value_info``; each op becomes the standard ONNX nodes of its mapper in :mod:`replayer.export.ops`, or
one node in the custom domain ``ai.tracefmt.aten`` (:mod:`replayer.export.custom`).  Tensors that enter
the selection from outside become initializers (when their values were recorded) or graph inputs;
tensors the selection produces and nothing in it reads become graph outputs.  ``depth`` folds
modules below that depth into ``ai.tracefmt.Module`` nodes (:mod:`replayer.export.modules`).

Example::

    with tracefmt.open("runs/demo") as trace:
        model, stats = export_step(trace, step=3, phase="forward", depth=2)
    save_model(model, "step3.onnx")
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import helper, numpy_helper

from replayer.errors import ReplayError
from replayer.export.custom import ATEN_DOMAIN, DOMAIN_VERSION, MODULE_DOMAIN, emit_custom
from replayer.export.onnx_types import onnx_type
from replayer.export.ops import OpContext, Unsupported, mapper_for
from tracefmt.model import OpNode, Phase, TensorRecord
from tracefmt.reader import Step, Trace

OPSET = 21
IR_VERSION = 10
PHASES = ("forward", "backward", "optimizer", "other", "all")
#: Above this many bytes of initializers the model must keep them in an external data file.
EXTERNAL_LIMIT = 2**31 - 2**26
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ExportStats:
    """What an export did: ops mapped to standard ONNX, ops left as custom nodes (by name)."""

    ops: int
    standard: int
    custom: dict[str, int]
    nodes: int = 0
    modules: int = 0
    external: str | None = None


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


def _value_info(rec: TensorRecord, name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, onnx_type(rec.dtype), list(rec.shape))


def _initializer(rec: TensorRecord, name: str, external: _External | None) -> onnx.TensorProto:
    array = rec.values()
    if external is not None and array.nbytes >= external.threshold:
        return external.write(array, name, onnx_type(rec.dtype))
    return numpy_helper.from_array(array, name)


class _External:
    """Writes large initializers to one external data file next to the model."""

    def __init__(self, path: Path, threshold: int) -> None:
        self.path = path
        self.threshold = threshold
        self._offset = 0
        self._file = path.open("wb")

    def write(self, array: object, name: str, elem_type: int) -> onnx.TensorProto:
        import numpy as np

        data = np.asarray(array, order="C")
        tensor = onnx.TensorProto(name=name, data_type=elem_type, dims=list(data.shape))
        pad = (-self._offset) % 4096
        self._file.write(b"\0" * pad)
        self._offset += pad
        raw = data.view(np.uint8).reshape(-1)
        self._file.write(raw.tobytes())
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (
            ("location", self.path.name),
            ("offset", str(self._offset)),
            ("length", str(raw.size)),
        ):
            tensor.external_data.add(key=key, value=value)
        self._offset += raw.size
        return tensor

    def close(self) -> None:
        self._file.close()


def build_model(
    mapped: MappedStep,
    *,
    with_values: bool = True,
    depth: int | None = None,
    split_saved: bool = False,
    metadata: dict[str, str] | None = None,
    graph_name: str | None = None,
    external_data: str | os.PathLike[str] | None = None,
    external_threshold: int | None = None,
) -> tuple[onnx.ModelProto, ExportStats]:
    """The ONNX model of a mapped selection (see the module docstring).

    ``split_saved`` draws tensors that backward or optimizer ops read from the forward pass as
    separate graph inputs (``name:saved``) instead of long edges: Netron lays such graphs out in
    seconds instead of minutes.  ``external_data`` names a file for initializers of at least
    ``external_threshold`` bytes (default: all of them once they pass 2 GiB together).
    """
    step, names = mapped.step, mapped.names
    tensors = step.tensors
    produced: set[int] = set()
    consumed_outside: dict[int, None] = {}
    consumed: set[int] = set()
    forward_made: set[int] = set()
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    saved: dict[int, None] = {}
    recorded: list[tuple[str, int]] = []
    for unit in mapped.units:
        op = unit.op
        renames: dict[str, str] = {}
        for t in op.inputs:
            consumed.add(t)
            if t not in produced:
                consumed_outside.setdefault(t)
            elif split_saved and t in forward_made and op.phase is not Phase.FORWARD:
                saved.setdefault(t)
                renames[names[t]] = names[t] + ":saved"
        for node in unit.nodes:
            if renames:
                for i, name in enumerate(node.input):
                    if name in renames:
                        node.input[i] = renames[name]
            nodes.append(node)
        initializers.extend(unit.initializers)
        recorded.extend(unit.recorded_inputs)
        produced.update(op.outputs)
        if op.phase is Phase.FORWARD:
            forward_made.update(op.outputs)
    external = None
    sources = list(consumed_outside) + [t for _, t in recorded]
    if with_values:
        total = _source_bytes(tensors, sources)
        threshold = external_threshold
        if threshold is None:
            threshold = 1024 if total > EXTERNAL_LIMIT else None
        if threshold is not None:
            if external_data is None:
                raise ReplayError(
                    f"The step's recorded values take {total} bytes, more than an "
                    "ONNX file can hold; give an output path (external data) or "
                    "export without values."
                )
            external = _External(Path(external_data), threshold)
    graph_inputs = []
    try:
        for t in consumed_outside:
            rec = tensors[t]
            if with_values and rec.has_values:
                initializers.append(_initializer(rec, names[t], external))
            else:
                graph_inputs.append(_value_info(rec, names[t]))
        for name, t in recorded:
            rec = tensors[t]
            if with_values and rec.has_values:
                initializers.append(_initializer(rec, name, external))
            else:
                graph_inputs.append(_value_info(rec, name))
    finally:
        if external is not None:
            external.close()
    graph_inputs.extend(_value_info(tensors[t], names[t] + ":saved") for t in saved)
    outputs = [_value_info(tensors[t], names[t]) for t in sorted(produced) if t not in consumed]
    value_info = {names[t]: _value_info(tensors[t], names[t]) for t in sorted(produced) if t in consumed}
    modules = 0
    if depth is not None:
        from replayer.export.modules import collapse

        types = {**value_info, **{v.name: v for v in graph_inputs + outputs}}
        for init in initializers:
            types.setdefault(
                init.name, helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
            )
        nodes, initializers, modules = collapse(
            mapped.units, tensors, initializers, types, depth, {o.name for o in outputs}
        )
        visible = {o for n in nodes for o in n.output}
        value_info = {k: v for k, v in value_info.items() if k in visible}
    graph = helper.make_graph(
        nodes,
        graph_name or f"step_{step.step}",
        graph_inputs,
        outputs,
        initializer=initializers,
        value_info=list(value_info.values()),
    )
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(ATEN_DOMAIN, DOMAIN_VERSION)]
    if modules:
        opsets.append(helper.make_opsetid(MODULE_DOMAIN, DOMAIN_VERSION))
    model = helper.make_model(
        graph, producer_name="tracefmt-replayer", ir_version=IR_VERSION, opset_imports=opsets
    )
    helper.set_model_props(
        model, {"tracefmt.step": str(step.step), "tracefmt.rank": str(step.rank), **(metadata or {})}
    )
    custom: dict[str, int] = {}
    for unit in mapped.units:
        if not unit.standard:
            custom[unit.op.name] = custom.get(unit.op.name, 0) + 1
    n_ops = len(mapped.units)
    stats = ExportStats(
        ops=n_ops,
        standard=n_ops - sum(custom.values()),
        custom=custom,
        nodes=len(nodes),
        modules=modules,
        external=str(external.path) if external is not None else None,
    )
    return model, stats


def _source_bytes(tensors: Sequence[TensorRecord], sources: Sequence[int]) -> int:
    from tracefmt.dtypes import DTYPE_INFO

    return sum(
        tensors[t].meta.numel * DTYPE_INFO[tensors[t].dtype].itemsize
        for t in sources
        if tensors[t].has_values
    )


def export_ops(
    step: Step,
    ops: Sequence[OpNode],
    *,
    with_values: bool = True,
    depth: int | None = None,
    split_saved: bool = False,
    metadata: dict[str, str] | None = None,
    graph_name: str | None = None,
    progress: Progress | None = None,
    external_data: str | os.PathLike[str] | None = None,
    external_threshold: int | None = None,
) -> tuple[onnx.ModelProto, ExportStats]:
    """Build the ONNX model of ``ops`` (a selection of ``step``'s ops, in execution order)."""
    mapped = map_step(step, ops, progress)
    return build_model(
        mapped,
        with_values=with_values,
        depth=depth,
        split_saved=split_saved,
        metadata=metadata,
        graph_name=graph_name,
        external_data=external_data,
        external_threshold=external_threshold,
    )


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


def provenance_metadata(trace: Trace, phase: str) -> dict[str, str]:
    return {
        "tracefmt.run_id": trace.run_id,
        "tracefmt.phase": phase,
        "tracefmt.provenance": trace.provenance.to_json(),
    }


def export_step(
    trace: Trace,
    step: int,
    *,
    rank: int | None = None,
    phase: str = "all",
    module: str | None = None,
    depth: int | None = None,
    with_values: bool = True,
    split_saved: bool = False,
    progress: Progress | None = None,
    external_data: str | os.PathLike[str] | None = None,
    external_threshold: int | None = None,
) -> tuple[onnx.ModelProto, ExportStats]:
    """Export one recorded step of ``trace`` (see the module docstring)."""
    loaded, ops = load_selection(trace, step, rank, phase, module)
    return export_ops(
        loaded,
        ops,
        with_values=with_values,
        depth=depth,
        split_saved=split_saved,
        metadata=provenance_metadata(trace, phase),
        graph_name=f"step {step} rank {loaded.rank} {phase}",
        progress=progress,
        external_data=external_data,
        external_threshold=external_threshold,
    )


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Write ``model``; initializers already written as external data stay where they are."""
    Path(path).write_bytes(model.SerializeToString())
