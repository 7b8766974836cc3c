"""Export one recorded step as an ONNX model: what ran, op by op, for Netron and ONNX Runtime.

Each recorded tensor becomes one ONNX value (named by its parameter name where it has one, else
``t<index>``) with its shape and dtype in ``value_info``; each op becomes the standard ONNX nodes of
its mapper in :mod:`replayer.ops`, or one node in the custom domain ``ai.tracefmt.aten``.  Tensors
that enter the selection from outside become graph inputs (initializers when their values were
recorded and ``with_values`` is set); tensors the selection produces and nothing in it consumes
become graph outputs.

Example::

    with tracefmt.open("runs/demo") as trace:
        model = export_step(trace, step=3, phase="forward")
    onnx.save(model, "step3.onnx")
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import onnx
from onnx import helper, numpy_helper

from replayer.errors import ReplayError
from replayer.onnx_types import onnx_type
from replayer.ops import OpContext, Unsupported, mapper_for
from tracefmt.model import OpNode, Phase, TensorRecord
from tracefmt.reader import Step, Trace

CUSTOM_DOMAIN = "ai.tracefmt.aten"
OPSET = 21
IR_VERSION = 10
PHASES = ("forward", "backward", "optimizer", "other", "all")


@dataclass(frozen=True)
class ExportStats:
    """What an export did: ops mapped to standard ONNX, ops left as custom nodes (by name)."""

    ops: int
    standard: int
    custom: dict[str, int]


def select(step: Step, phase: str = "all", module: str | None = None) -> list[OpNode]:
    """The ops of ``step`` in one phase (or ``all``) whose module path matches a glob."""
    if phase not in PHASES:
        raise ReplayError(f"Unknown phase {phase!r}; use one of {', '.join(PHASES)}.")
    want = None if phase == "all" else Phase[phase.upper()]
    return [op for op in step.ops
            if (want is None or op.phase is want)
            and (module is None or fnmatch.fnmatchcase(op.module, module)
                 or fnmatch.fnmatchcase(op.module, module + ".*"))]


def _names(tensors: Sequence[TensorRecord]) -> list[str]:
    """Unique, readable ONNX value names: ``layers.0.weight``, ``layers.0.weight@v1``, ``t12``."""
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


def _node_name(op: OpNode) -> str:
    short = op.name.removeprefix("aten::").split(".")[0]
    return f"{op.module}/{short}_{op.index}" if op.module else f"{short}_{op.index}"


def _onnx_attr(value: object) -> object:
    """A recorded attribute as an ONNX attribute value (JSON text for anything nested)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float, str)):
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool)
                                                  for v in value):
        return value
    if isinstance(value, list) and value and all(isinstance(v, float) for v in value):
        return value
    return json.dumps(value, allow_nan=True)


_OP_TYPE_SAFE = re.compile(r"[^A-Za-z0-9_.]")


def _custom(ctx: OpContext) -> None:
    op = ctx.op
    attrs = {k: _onnx_attr(v) for k, v in op.attrs.items() if v is not None}
    attrs["input_args"] = json.dumps(list(op.input_args))
    op_type = _OP_TYPE_SAFE.sub("_", op.name.removeprefix("aten::"))
    ctx.node(op_type, ctx.all_inputs(), ctx.outputs(), domain=CUSTOM_DOMAIN, **attrs)


def _doc(step: Step, op: OpNode) -> str:
    lines = [f"{op.name} (op {op.index}, {op.phase.label}) in module '{op.module or '<root>'}'"]
    if op.host_ns is not None:
        lines.append(f"host time: {op.host_ns / 1000:.1f} us")
    if op.device_ns is not None:
        lines.append(f"device time: {op.device_ns / 1000:.1f} us")
    for t in op.outputs:
        st = step.tensors[t].stats
        if st is not None and st.min is not None:
            lines.append(f"out t{t}: min {st.min:.4g} max {st.max:.4g} mean {st.mean:.4g} "
                         f"std {st.std:.4g} norm {st.norm:.4g} nan {st.nan} inf {st.inf}")
    if op.source:
        lines.append(f"source: {op.source}")
    return "\n".join(lines)


def export_ops(step: Step, ops: Sequence[OpNode], *, with_values: bool = True,
               metadata: dict[str, str] | None = None,
               graph_name: str | None = None) -> tuple[onnx.ModelProto, ExportStats]:
    """Build the ONNX model of ``ops`` (a selection of ``step``'s ops, in execution order)."""
    names = _names(step.tensors)
    produced: set[int] = set()
    consumed: set[int] = set()
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    custom: dict[str, int] = {}
    for op in ops:
        ctx = OpContext(op, step.tensors, names.__getitem__, _node_name(op))
        mapper = mapper_for(op.name)
        try:
            if mapper is None:
                raise Unsupported("no mapper")
            mapper(ctx)
        except Unsupported:
            ctx = OpContext(op, step.tensors, names.__getitem__, _node_name(op))
            _custom(ctx)
            custom[op.name] = custom.get(op.name, 0) + 1
        doc = _doc(step, op)
        for node in ctx.nodes:
            node.doc_string = doc
            for key, value in (("tracefmt.op", str(op.index)), ("tracefmt.module", op.module),
                               ("tracefmt.phase", op.phase.label)):
                node.metadata_props.add(key=key, value=value)
        nodes.extend(ctx.nodes)
        initializers.extend(ctx.initializers)
        consumed.update(t for t in op.inputs if t not in produced)
        produced.update(op.outputs)
    consumed_anywhere = {t for op in ops for t in op.inputs}
    outside = sorted(t for t in consumed if t not in produced)
    graph_inputs, value_info = [], []
    for t in outside:
        rec = step.tensors[t]
        if with_values and rec.has_values:
            initializers.append(numpy_helper.from_array(rec.values(), names[t]))
        else:
            graph_inputs.append(_value_info(rec, names[t]))
    outputs = [_value_info(step.tensors[t], names[t])
               for t in sorted(produced) if t not in consumed_anywhere]
    value_info = [_value_info(step.tensors[t], names[t])
                  for t in sorted(produced) if t in consumed_anywhere]
    graph = helper.make_graph(nodes, graph_name or f"step_{step.step}", graph_inputs, outputs,
                              initializer=initializers, value_info=value_info)
    model = helper.make_model(graph, producer_name="tracefmt-replayer", ir_version=IR_VERSION,
                              opset_imports=[helper.make_opsetid("", OPSET),
                                             helper.make_opsetid(CUSTOM_DOMAIN, 1)])
    helper.set_model_props(model, {"tracefmt.step": str(step.step), "tracefmt.rank": str(step.rank),
                                   **(metadata or {})})
    stats = ExportStats(ops=len(ops), standard=len(ops) - sum(custom.values()), custom=custom)
    return model, stats


def _value_info(rec: TensorRecord, name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, onnx_type(rec.dtype), list(rec.shape))


def export_step(trace: Trace, step: int, *, rank: int | None = None, phase: str = "all",
                module: str | None = None,
                with_values: bool = True) -> tuple[onnx.ModelProto, ExportStats]:
    """Export one recorded step of ``trace`` (see the module docstring)."""
    loaded = trace.step(step, rank)
    ops = select(loaded, phase, module)
    if not ops:
        raise ReplayError(f"Step {step} has no {phase} ops"
                          + (f" in modules matching {module!r}" if module else "") + ".")
    p = trace.provenance
    meta = {"tracefmt.run_id": trace.run_id, "tracefmt.phase": phase,
            "tracefmt.provenance": p.to_json()}
    return export_ops(loaded, ops, with_values=with_values, metadata=meta,
                      graph_name=f"step {step} rank {loaded.rank} {phase}")
