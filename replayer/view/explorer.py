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

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replayer.export.mapping import load_selection
from replayer.view.layers import LayerLimits, assign_namespaces, widest_layer
from replayer.view.nanpath import nan_path, nan_path_overlay
from replayer.view.nodes import Encoder, Node, phase_label
from replayer.view.overlays import NodeData, Overlay, node_id, overlays_for, tensor_node_id
from replayer.view.parts import collection_text, split_parts
from tracefmt.model import OpNode, Phase, Role, TensorRecord
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


@dataclass(frozen=True)
class ExplorerGraph:
    """One step as Model Explorer graph JSON (:attr:`text`: a collection, the overview graph
    ``graph_id`` first, then the parts, see :mod:`replayer.view.parts`) and its node-data
    overlays (:attr:`overlays`, JSON texts too)."""

    graph_id: str
    text: str
    overlays: tuple[NodeData, ...]
    ops: int
    inputs: int
    #: The widest layer's namespace (in any graph) and its number of children.
    widest: tuple[str, int]
    phases: tuple[str, ...] = field(default=())
    #: The graph each node id is in.
    graph_of: dict[str, str] = field(default_factory=dict)
    #: Graphs in the collection and nodes in the first (the overview).
    graphs: int = 1
    overview_nodes: int = 0
    #: The node the page opens on (the NaN path's or the divergence's origin), if any.
    focus: str | None = None

    @functools.cached_property
    def data(self) -> dict[str, Any]:
        """The graph JSON parsed (for tests and tools; the server sends :attr:`text`)."""
        return dict(json.loads(self.text))

    @property
    def nodes(self) -> int:
        return self.ops + self.inputs


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
    n = len(tensors)
    param_of_tensor: dict[int, str] = {}
    modules: dict[tuple[Phase, str], list[str]] = {}
    paths = []
    for op in ops:
        if op.module:
            path = modules.get((op.phase, op.module))
            if path is None:
                path = [phase_label(op.phase), *op.module.split(".")]
                modules[(op.phase, op.module)] = path
            paths.append(path)
            continue
        path = [phase_label(op.phase)]
        named = {
            p
            for i in (*op.inputs, *op.outputs)
            if 0 <= i < n and (p := _param_of(tensors[i])) is not None
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


def build_graph(
    step: Step,
    ops: Sequence[OpNode],
    *,
    graph_id: str | None = None,
    limits: LayerLimits | None = None,
    progress: ProgressFn | None = None,
    extra: Sequence[Overlay] = (),
    focus: str | None = None,
) -> ExplorerGraph:
    """Model Explorer graph JSON of the ops ``ops`` of ``step`` (see the module docstring), with
    the overlays ``extra`` (keyed by node id) before the recorded ones and the page opening on
    the node ``focus``."""
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
    n_tensors = len(tensors)
    for pos, op in enumerate(ops):
        for t in op.inputs:
            if t not in made and t not in seen_inputs and 0 <= t < n_tensors:
                seen_inputs.add(t)
                item_paths.append(paths[pos])
                numbers.append(op.index)
                kinds.append(-t - 1)
        item_paths.append(paths[pos])
        numbers.append(op.index)
        kinds.append(pos)
    limits = limits or LayerLimits()
    namespaces = assign_namespaces(item_paths, numbers, limits)
    encoder = Encoder(tensors)
    for ns in set(namespaces):
        encoder.quote(ns)
    nodes: list[Node] = []
    for n, (kind, ns) in enumerate(zip(kinds, namespaces, strict=True)):
        if kind < 0:
            nodes.append(encoder.input_node(tensors[-kind - 1], ns))
        else:
            nodes.append(encoder.op_node(ops[kind], ns, made))
        if progress is not None and (n % 4096 == 0 or n == len(kinds) - 1):
            progress(n + 1, len(kinds))
    parts = split_parts(gid, nodes, limits.part_nodes)
    widest = max(
        (widest_layer([n.namespace for n in g_nodes]) for _, g_nodes in parts.graphs),
        key=lambda w: w[1],
    )
    text = collection_text(gid, parts, encoder.quoted)
    overlays = [o.rolled_up(parts.members) for o in extra]
    overlays += overlays_for(step, ops, sorted(seen_inputs), parts.members)
    target: str | dict[str, str] = parts.graph_of if len(parts.graphs) > 1 else gid
    return ExplorerGraph(
        gid,
        text,
        tuple(NodeData(o.key, o.name, o.to_json(target)) for o in overlays),
        len(ops),
        len(seen_inputs),
        widest,
        tuple(dict.fromkeys(phase_label(op.phase) for op in ops)),
        parts.graph_of,
        len(parts.graphs),
        len(parts.graphs[0][1]),
        focus if focus in parts.graph_of else None,
    )


def export_step(
    trace: Trace,
    step: int,
    *,
    rank: int | None = None,
    phase: str = "all",
    module: str | None = None,
    limits: LayerLimits | None = None,
    progress: ProgressFn | None = None,
    extra: Sequence[Overlay] = (),
    focus: str | None = None,
) -> ExplorerGraph:
    """Load one step of ``trace``, select its ops (``phase``, a ``module`` glob) and build its
    Model Explorer graph (:func:`build_graph`) with the overlays ``extra``.  A step whose flags
    say it holds NaN/Inf gets the NaN-path overlay (:mod:`replayer.view.nanpath`) first, and
    the page opens on the op where the NaN/Inf entered (unless ``focus`` names another node)."""
    loaded, ops = load_selection(trace, step, rank, phase, module)
    gid = f"step {loaded.step} rank {loaded.rank}" + ("" if phase == "all" else f" {phase}")
    path = nan_path(loaded)
    if path is not None:
        extra = (*extra, nan_path_overlay(path, ops))
        focus = focus or node_id(path.origin)
    return build_graph(
        loaded, ops, graph_id=gid, limits=limits, progress=progress, extra=extra, focus=focus
    )


def graph_json(graph: ExplorerGraph) -> str:
    """The graph JSON text (non-finite numbers never occur: statistics are strings)."""
    return graph.text


def write_export(graph: ExplorerGraph, path: str | Path) -> list[Path]:
    """Write the graph to ``path`` and each overlay next to it as ``<stem>.<overlay>.json``;
    return the files written, the graph first."""
    out = Path(path)
    out.write_text(graph.text, encoding="utf-8")
    written = [out]
    stem = out.name.removesuffix(".json")
    for overlay in graph.overlays:
        file = out.with_name(f"{stem}.{overlay.key}.json")
        file.write_text(overlay.text, encoding="utf-8")
        written.append(file)
    return written
