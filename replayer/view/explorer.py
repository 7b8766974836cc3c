"""A recorded step as Model Explorer's graph JSON: layer by layer, so 100,000 ops open in seconds.

Every selected op is a node (id ``op<index>``, label its short aten name) with the full schema name,
its recorded arguments, phase, module, host time and memory in ``attrs`` and each output's name,
dtype, shape and statistics in ``outputsMetadata``.  Every tensor an op reads that no selected op
made (parameters, the batch, buffers, or another phase's tensors when one phase is selected) is a
node too (id ``t<index>``), placed next to its first reader.  Edges follow the recorded data flow.

Namespaces are the phase, then the module path (``backward/h/0/attn``); ops outside any module
that update one parameter (the optimizer's per-parameter ops) go under that parameter's path
(``optimizer/h/0/attn/c_attn/weight``), found from the parameter, gradient and optimizer-state
tensors they touch, or inherited from the op that made their input.  :mod:`replayer.view.layers`
then splits every layer wider than :class:`LayerLimits` allows, and a step of more nodes than
``LayerLimits.part_nodes`` becomes an overview and parts (:mod:`replayer.view.parts`), so the
first view processes only the overview.  The format is the one
``model-explorer step.json`` reads (spec: Model Explorer's ``graph_builder.py``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replayer.export.mapping import load_selection
from replayer.view.layers import LayerLimits, assign_namespaces, widest_layer
from replayer.view.overlays import Overlay, node_id, overlays_for, tensor_node_id
from replayer.view.parts import split_parts
from tracefmt.model import OpNode, Phase, Role, TensorRecord, TensorStats
from tracefmt.progress import ProgressFn
from tracefmt.reader import Step, Trace

__all__ = [
    "ExplorerGraph",
    "build_graph",
    "export_step",
    "graph_json",
    "node_id",
    "tensor_node_id",
    "write_export",
]

#: Roles whose tensors name the parameter an optimizer op updates.
_PARAM_ROLES = (Role.PARAMETER, Role.GRADIENT, Role.OPTIMIZER_STATE)
_STAT_FIELDS = ("min", "max", "mean", "std", "norm", "nan", "inf", "zero")


@dataclass(frozen=True)
class ExplorerGraph:
    """One step as Model Explorer graph JSON (:attr:`data`: the overview graph ``graph_id``
    first, then the parts, see :mod:`replayer.view.parts`) and its node-data overlays."""

    graph_id: str
    data: dict[str, Any]
    overlays: tuple[Overlay, ...]
    ops: int
    inputs: int
    #: The widest layer's namespace (in any graph) and its number of children.
    widest: tuple[str, int]
    phases: tuple[str, ...] = field(default=())
    #: The graph each node id is in.
    graph_of: dict[str, str] = field(default_factory=dict)

    @property
    def graphs(self) -> int:
        return len(self.data["graphs"])

    @property
    def nodes(self) -> int:
        return self.ops + self.inputs


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return json.dumps(value, default=str, allow_nan=True)


def _number(value: float | int | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


_ROLES = {r: r.label for r in Role}
_PHASES = {p: p.label for p in Phase}


def _stats_text(st: TensorStats) -> str:
    """``min -1 max 2 mean 0.5 std 1 norm 3 nan 0 inf 0 zero 0``: the recorded statistics."""
    parts = []
    for name in _STAT_FIELDS:
        value = getattr(st, name)
        if value is not None:
            parts.append(f"{name} {value:.6g}" if isinstance(value, float) else f"{name} {value}")
    return " ".join(parts)


def _tensor_attrs(t: TensorRecord, label: str) -> list[dict[str, str]]:
    meta = t.meta
    shape = ",".join(map(str, meta.shape))
    attrs = [
        {"key": "tensor_name", "value": label},
        {"key": "tensor_shape", "value": f"{meta.dtype.name.lower()}[{shape}]"},
    ]
    if meta.role is not Role.ACTIVATION:
        attrs.append({"key": "role", "value": _ROLES[meta.role]})
    st = t.stats
    if st is not None and (text := _stats_text(st)):
        attrs.append({"key": "stats", "value": text})
    return attrs


def _tensor_label(t: TensorRecord) -> str:
    if t.name:
        return f"{t.name}@v{t.meta.version}" if t.meta.version else t.name
    return f"t{t.index}"


def _param_of(t: TensorRecord) -> str | None:
    """The parameter a named parameter, gradient or optimizer-state tensor belongs to."""
    if t.name is None or t.role not in _PARAM_ROLES:
        return None
    if t.role is Role.PARAMETER:
        return t.name
    base, dot, _ = t.name.rpartition(".")  # w.grad, w.exp_avg, w.step
    return base if dot else t.name


def _paths(step: Step, ops: Sequence[OpNode]) -> list[list[str]]:
    """Each op's natural path: phase, module components, or for a module-less op that updates
    one parameter, that parameter's components."""
    tensors = step.tensors
    param_of_tensor: dict[int, str] = {}
    paths = []
    for op in ops:
        path = [_PHASES[op.phase]]
        if op.module:
            path += op.module.split(".")
        else:
            named = {
                p
                for i in (*op.inputs, *op.outputs)
                if 0 <= i < len(tensors) and (p := _param_of(tensors[i])) is not None
            }
            if not named:  # an intermediate: the parameter of the op that made it
                named = {param_of_tensor[i] for i in op.inputs if i in param_of_tensor}
            # A multi-tensor (_foreach_*) op touches every parameter: it stays ungrouped.
            found = named.pop() if len(named) == 1 else None
            if found is not None and op.phase is not Phase.FORWARD:
                path += found.split(".")
                for i in op.outputs:
                    param_of_tensor[i] = found
        paths.append(path)
    return paths


def _op_attrs(op: OpNode) -> list[dict[str, str]]:
    # The op number is the node id and the phase the namespace's first component.
    attrs = [{"key": "aten", "value": op.name}, {"key": "module", "value": op.module or "<root>"}]
    attrs += [{"key": f"arg.{k}", "value": _text(v)} for k, v in op.attrs.items()]
    if op.host_ns is not None:
        attrs.append({"key": "host_time_us", "value": f"{op.host_ns / 1000:.1f}"})
    if op.device_ns is not None:
        attrs.append({"key": "device_time_us", "value": f"{op.device_ns / 1000:.1f}"})
    if op.mem_bytes is not None:
        attrs.append({"key": "mem_bytes", "value": str(op.mem_bytes)})
    if op.source:
        attrs.append({"key": "source", "value": op.source})
    return attrs


def _short(name: str) -> str:
    return name.removeprefix("aten::").split(".")[0]


def build_graph(
    step: Step,
    ops: Sequence[OpNode],
    *,
    graph_id: str | None = None,
    limits: LayerLimits | None = None,
    progress: ProgressFn | None = None,
) -> ExplorerGraph:
    """Model Explorer graph JSON of the ops ``ops`` of ``step`` (see the module docstring)."""
    tensors = step.tensors
    gid = graph_id or f"step {step.step} rank {step.rank}"
    made: dict[int, tuple[int, int]] = {}  # tensor -> (op, output slot)
    for op in ops:
        for k, t in enumerate(op.outputs):
            made[t] = (op.index, k)
    # Items in execution order: each outside tensor just before its first reader.
    paths = _paths(step, ops)
    item_paths: list[list[str]] = []
    numbers: list[int] = []
    kinds: list[int] = []  # >= 0: op position in ops; < 0: -(tensor index) - 1
    seen_inputs: set[int] = set()
    for pos, op in enumerate(ops):
        for t in op.inputs:
            if t not in made and t not in seen_inputs and 0 <= t < len(tensors):
                seen_inputs.add(t)
                item_paths.append(paths[pos])
                numbers.append(op.index)
                kinds.append(-t - 1)
        item_paths.append(paths[pos])
        numbers.append(op.index)
        kinds.append(pos)
    limits = limits or LayerLimits()
    namespaces = assign_namespaces(item_paths, numbers, limits)
    nodes: list[dict[str, Any]] = []
    for n, (kind, ns) in enumerate(zip(kinds, namespaces, strict=True)):
        if kind < 0:
            nodes.append(_input_node(tensors[-kind - 1], ns))
        else:
            nodes.append(_op_node(ops[kind], ns, tensors, made))
        if progress is not None and (n % 4096 == 0 or n == len(kinds) - 1):
            progress(n + 1, len(kinds))
    parts = split_parts(gid, nodes, limits.part_nodes)
    data = {"label": gid, "graphs": parts.graphs}
    phases = tuple(dict.fromkeys(op.phase.label for op in ops))
    widest = max(
        (widest_layer([n["namespace"] for n in g["nodes"]]) for g in parts.graphs),
        key=lambda w: w[1],
    )
    return ExplorerGraph(
        gid,
        data,
        overlays_for(step, ops, sorted(seen_inputs), parts.members),
        len(ops),
        len(seen_inputs),
        widest,
        phases,
        parts.graph_of,
    )


def _input_node(t: TensorRecord, namespace: str) -> dict[str, Any]:
    label = _tensor_label(t)
    attrs = [{"key": "tensor", "value": str(t.index)}, {"key": "role", "value": _ROLES[t.role]}]
    if t.meta.producer is not None:
        attrs.append({"key": "made_by_op", "value": str(t.meta.producer)})
    return {
        "id": tensor_node_id(t.index),
        "label": label if len(label) <= 40 else "\u2026" + label[-39:],
        "namespace": namespace,
        "attrs": attrs,
        "incomingEdges": [],
        "outputsMetadata": [{"id": "0", "attrs": _tensor_attrs(t, label)}],
    }


def _edge(source: str, slot: int, target: int) -> dict[str, str]:
    return {"sourceNodeId": source, "sourceNodeOutputId": str(slot), "targetNodeInputId": str(target)}


def _op_node(
    op: OpNode, namespace: str, tensors: Sequence[TensorRecord], made: Mapping[int, tuple[int, int]]
) -> dict[str, Any]:
    edges = []
    for k, t in enumerate(op.inputs):
        if t in made:
            src, slot = made[t]
            edges.append(_edge(node_id(src), slot, k))
        elif 0 <= t < len(tensors):
            edges.append(_edge(tensor_node_id(t), 0, k))
    outputs = [
        {"id": str(k), "attrs": _tensor_attrs(tensors[t], _tensor_label(tensors[t]))}
        for k, t in enumerate(op.outputs)
        if 0 <= t < len(tensors)
    ]
    return {
        "id": node_id(op.index),
        "label": _short(op.name),
        "namespace": namespace,
        "attrs": _op_attrs(op),
        "incomingEdges": edges,
        "outputsMetadata": outputs,
    }


def export_step(
    trace: Trace,
    step: int,
    *,
    rank: int | None = None,
    phase: str = "all",
    module: str | None = None,
    limits: LayerLimits | None = None,
    progress: ProgressFn | None = None,
) -> ExplorerGraph:
    """Load one step of ``trace``, select its ops (``phase``, a ``module`` glob) and build its
    Model Explorer graph (:func:`build_graph`)."""
    loaded, ops = load_selection(trace, step, rank, phase, module)
    gid = f"step {loaded.step} rank {loaded.rank}" + ("" if phase == "all" else f" {phase}")
    return build_graph(loaded, ops, graph_id=gid, limits=limits, progress=progress)


def graph_json(graph: ExplorerGraph) -> str:
    """The graph JSON text (non-finite numbers never occur: statistics are strings)."""
    return json.dumps(graph.data, separators=(",", ":"), allow_nan=False)


def write_export(graph: ExplorerGraph, path: str | Path) -> list[Path]:
    """Write the graph to ``path`` and each overlay next to it as ``<stem>.<overlay>.json``;
    return the files written, the graph first."""
    out = Path(path)
    out.write_text(graph_json(graph), encoding="utf-8")
    written = [out]
    stem = out.name.removesuffix(".json")
    for overlay in graph.overlays:
        file = out.with_name(f"{stem}.{overlay.key}.json")
        file.write_text(overlay.to_json(graph.graph_of or graph.graph_id), encoding="utf-8")
        written.append(file)
    return written
