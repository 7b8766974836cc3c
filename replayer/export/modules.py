"""Module hierarchy: fold the ops of modules below a depth into ``ai.tracefmt.Module`` nodes.

A module's path has one component per level (``h.0.attn`` is at depth 3).  With ``depth=K`` the
ops of modules at depth <= K stay in the main graph, and every consecutive run of ops inside one
module at depth K+1 becomes a ``Module`` node whose GRAPH attribute ``body`` holds them, with its
own sub-modules folded the same way, level by level.  Netron draws a node with a graph attribute
with a +/- button that expands it in place; ONNX treats the node as a custom op.

The node's inputs are the values its ops read from outside (the body's inputs have the same names),
its outputs the values they make that something outside reads.  Constants and parameters that only
the module reads move into the body as its initializers.  A run of a single op is left unwrapped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import onnx
from onnx import helper

from replayer.export.custom import MODULE_DOMAIN
from tracefmt.model import OpNode, Phase, Role, TensorRecord


@dataclass
class _Item:
    path: list[str]
    nodes: list[onnx.NodeProto]
    phase: str
    host_ns: int


class _Folder:
    def __init__(
        self,
        items: list[_Item],
        initializers: Sequence[onnx.TensorProto],
        types: Mapping[str, onnx.ValueInfoProto],
        depth: int,
        graph_outputs: set[str],
    ) -> None:
        self.items = items
        self.types = types
        self.depth = depth
        self.graph_outputs = graph_outputs
        self.inits = {i.name: i for i in initializers}
        self.consumers: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            for node in item.nodes:
                for name in node.input:
                    if name:
                        self.consumers.setdefault(name, []).append(index)
        self.modules = 0
        self._seen: dict[str, int] = {}

    def fold(
        self, lo: int, hi: int, level: int, owned: set[str]
    ) -> tuple[list[onnx.NodeProto], list[str]]:
        """Nodes of items[lo:hi] at ``level``, and the initializers left at this level."""
        out: list[onnx.NodeProto] = []
        i = lo
        while i < hi:
            key = self.items[i].path[level] if len(self.items[i].path) > level else None
            j = i + 1
            while (
                j < hi
                and key is not None
                and len(self.items[j].path) > level
                and self.items[j].path[level] == key
            ):
                j += 1
            if key is None:
                out.extend(self.items[i].nodes)
            elif level + 1 <= self.depth or j - i == 1:
                nodes, rest = self.fold(i, j, level + 1, owned)
                out.extend(nodes)
                owned = set(rest)
            else:
                claimed = {n for n in owned if all(i <= c < j for c in self.consumers.get(n, []))}
                owned = owned - claimed
                out.append(self._module(i, j, level + 1, claimed))
            i = j
        return out, sorted(owned)

    def _module(self, lo: int, hi: int, level: int, claimed: set[str]) -> onnx.NodeProto:
        path = ".".join(self.items[lo].path[:level])
        body_nodes, body_inits = self.fold(lo, hi, level, claimed)
        made: set[str] = set()
        inputs: dict[str, None] = {}
        for item in self.items[lo:hi]:
            for node in item.nodes:
                for name in node.input:
                    if name and name not in made and name not in claimed:
                        inputs.setdefault(name)
                made.update(o for o in node.output if o)
        outputs = [
            o
            for item in self.items[lo:hi]
            for node in item.nodes
            for o in node.output
            if o
            and (o in self.graph_outputs or any(not lo <= c < hi for c in self.consumers.get(o, [])))
        ]
        inner = {o for n in body_nodes for o in n.output} - set(outputs)
        body = helper.make_graph(  # Netron shows a graph name's last '.' part: use '/'
            body_nodes,
            path.replace(".", "/"),
            [self._type(n) for n in inputs],
            [self._type(n) for n in outputs],
            initializer=[self.inits[n] for n in body_inits],
            value_info=[self.types[n] for n in sorted(inner) if n in self.types],
        )
        count = self._seen.get(path, 0)
        self._seen[path] = count + 1
        self.modules += 1
        items = self.items[lo:hi]
        phases = sorted({it.phase for it in items})
        node = helper.make_node(
            "Module",
            list(inputs),
            outputs,
            domain=MODULE_DOMAIN,
            name=path if count == 0 else f"{path}#{count}",
            body=body,
            module=path,
            ops=len(items),
            phase=",".join(phases),
        )
        host = sum(it.host_ns for it in items)
        node.doc_string = (
            f"module '{path}': {len(items)} ops ({', '.join(phases)}), "
            f"host time {host / 1000:.1f} us; expand with + in Netron, or export "
            "with a larger --depth"
        )
        return node

    def _type(self, name: str) -> onnx.ValueInfoProto:
        known = self.types.get(name)
        return known if known is not None else helper.make_empty_tensor_value_info(name)


class Unit(Protocol):
    """What folding needs of a mapped op (:class:`replayer.export.build.OpUnit`)."""

    op: OpNode
    nodes: list[onnx.NodeProto]


def module_paths(units: Sequence[Unit], tensors: Sequence[TensorRecord]) -> list[list[str]]:
    """The module path of each op, as components.  Optimizer ops run outside any module; they are
    grouped under ``optimizer`` by the parameter whose state they update (found from the names
    of the tensors they read; an op reading only unnamed temporaries joins the previous op's
    group), so a step's optimizer folds into one node per parameter."""
    params = sorted(
        (t.name for t in tensors if t.role is Role.PARAMETER and t.name), key=len, reverse=True
    )
    out: list[list[str]] = []
    last: list[str] = []
    for unit in units:
        op = unit.op
        if op.module or op.phase is not Phase.OPTIMIZER:
            out.append(op.module.split(".") if op.module else [])
            continue
        found = None
        for t in op.inputs:
            name = tensors[t].name
            if name:
                found = next((p for p in params if name == p or name.startswith(p + ".")), None)
                if found:
                    break
        last = ["optimizer", found] if found else last
        out.append(list(last))
    return out


def collapse(
    units: Sequence[Unit],
    tensors: Sequence[TensorRecord],
    initializers: Sequence[onnx.TensorProto],
    types: Mapping[str, onnx.ValueInfoProto],
    depth: int,
    graph_outputs: set[str],
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], int]:
    """Fold ``units`` below ``depth``; returns the top-level nodes, the initializers left at the
    top level and the number of ``Module`` nodes made."""
    items = [
        _Item(path, list(unit.nodes), unit.op.phase.label, unit.op.host_ns or 0)
        for unit, path in zip(units, module_paths(units, tensors), strict=True)
    ]
    folder = _Folder(items, initializers, types, max(depth, 0), graph_outputs)
    nodes, rest = folder.fold(0, len(items), 0, set(folder.inits))
    return nodes, [folder.inits[n] for n in rest], folder.modules


def top_level_count(units: Sequence[Unit], tensors: Sequence[TensorRecord], depth: int) -> int:
    """How many top-level nodes :func:`collapse` would leave at ``depth`` (no model is built)."""
    items = [(path, len(u.nodes)) for u, path in zip(units, module_paths(units, tensors), strict=True)]

    def count(lo: int, hi: int, level: int) -> int:
        total, i = 0, lo
        while i < hi:
            path = items[i][0]
            key = path[level] if len(path) > level else None
            j = i + 1
            while j < hi and key is not None and len(items[j][0]) > level and items[j][0][level] == key:
                j += 1
            if key is None:
                total += items[i][1]
            elif level + 1 <= depth or j - i == 1:
                total += count(i, j, level + 1)
            else:
                total += 1
            i = j
        return total

    return count(0, len(items), 0)
