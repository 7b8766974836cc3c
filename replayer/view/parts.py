"""A large step as a collection of graphs: an overview, and its big layers as separate graphs.

Model Explorer processes every node of the graph it shows before it draws anything (its worker
builds the layer tree, the edges between layers and the identical-layer index for all of them),
so the first view of a 50,000-op step took 10-17 s even with its top level collapsed.  It does
not process the other graphs of a collection until one is opened.  :func:`split_parts` therefore
cuts the layer tree top-down: while a layer holds more than ``max_nodes`` nodes, each of its
sub-layers with at most ``max_nodes`` becomes a *part*, a graph of its own, and stands in the
overview as one node whose ``subgraphIds`` open it (the small square on the node, or the graph
list at the top of the page); a layer with more is cut further.  The overview keeps the layer
tree above the parts, so the first view processes a few hundred nodes at any step size.

Inside a part, a tensor made outside it comes in through an input node (id ``x<source id>.<slot>``,
label ``from <source label>``) next to its first reader.  In the overview, a part node's
incoming edges come from the parts and nodes whose outputs it reads, one per source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from replayer.view.layers import SEPARATOR

__all__ = ["Parts", "split_parts"]


@dataclass(frozen=True)
class Parts:
    """The graphs of a step (the overview first), the graph each node id is in, and each part
    node's member node ids (what an overlay's value on a part node sums up)."""

    graphs: list[dict[str, Any]]
    graph_of: dict[str, str]
    members: dict[str, list[str]] = field(default_factory=dict)


def _parent(prefix: str) -> str:
    return prefix.rpartition(SEPARATOR)[0]


def _subtree_counts(nodes: Sequence[dict[str, Any]]) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Nodes under each layer (by namespace prefix; "" is the root) and each layer's sub-layers
    in order of first appearance."""
    direct: dict[str, int] = {}
    for n in nodes:
        ns = n["namespace"]
        direct[ns] = direct.get(ns, 0) + 1
    count: dict[str, int] = {"": 0}
    children: dict[str, list[str]] = {}
    for ns, k in direct.items():
        count[""] += k
        if not ns:
            continue
        prefix = ""
        for part in ns.split(SEPARATOR):
            child = f"{prefix}{SEPARATOR}{part}" if prefix else part
            if child not in count:
                count[child] = 0
                children.setdefault(prefix, []).append(child)
            count[child] += k
            prefix = child
    return count, children


def _bins(count: dict[str, int], children: dict[str, list[str]], max_nodes: int) -> list[list[str]]:
    """The layers that become parts: below each layer of more than ``max_nodes`` nodes, runs of
    consecutive sub-layers of at most ``max_nodes`` nodes together (one part each run)."""
    bins: list[list[str]] = []
    stack = [""]
    while stack:
        layer = stack.pop()
        run: list[str] = []
        size = 0
        for child in children.get(layer, ()):
            if count[child] > max_nodes:
                stack.append(child)
                continue
            if run and size + count[child] > max_nodes:
                bins.append(run)
                run, size = [], 0
            run.append(child)
            size += count[child]
        if run:
            bins.append(run)
    return bins


def _bin_of(namespace: str, roots: dict[str, int], cache: dict[str, int | None]) -> int | None:
    if namespace in cache:
        return cache[namespace]
    result = None
    prefix = namespace
    while prefix:
        if prefix in roots:
            result = roots[prefix]
        prefix = _parent(prefix)
    cache[namespace] = result
    return result


def _part_node(pid: str, graph_id: str, layers: list[str], nodes: int) -> dict[str, Any]:
    first, last = (x.rpartition(SEPARATOR)[2] for x in (layers[0], layers[-1]))
    return {
        "id": pid,
        "label": first if len(layers) == 1 else f"{first} \u2026 {last}",
        "namespace": _parent(layers[0]),
        "attrs": [
            {
                "key": "layers",
                "value": ", ".join(layers)
                if len(layers) <= 3
                else f"{layers[0]} \u2026 {layers[-1]} ({len(layers)} layers)",
            },
            {"key": "nodes", "value": str(nodes)},
            {"key": "open", "value": "the square on this node opens its graph"},
        ],
        "subgraphIds": [f"{graph_id}: {pid} {first}" + ("" if len(layers) == 1 else f"-{last}")],
        "incomingEdges": [],
    }


def split_parts(graph_id: str, nodes: list[dict[str, Any]], max_nodes: int) -> Parts:
    """Split the nodes of one graph into an overview (id ``graph_id``) and parts of at most
    ``max_nodes`` nodes (plus their input nodes) each; one graph when all fit."""
    if len(nodes) <= max_nodes:
        return Parts(
            [{"id": graph_id, "nodes": nodes}], dict.fromkeys((n["id"] for n in nodes), graph_id)
        )
    count, children = _subtree_counts(nodes)
    bins = _bins(count, children, max_nodes)
    roots = {layer: k for k, run in enumerate(bins) for layer in run}
    cache: dict[str, int | None] = {}
    where = {n["id"]: _bin_of(n["namespace"], roots, cache) for n in nodes}
    labels = {n["id"]: n["label"] for n in nodes}
    outputs = {n["id"]: n.get("outputsMetadata", ()) for n in nodes}
    part_ids: dict[int, str] = {}
    part_nodes: dict[int, dict[str, Any]] = {}
    part_graphs: dict[int, list[dict[str, Any]]] = {}
    part_sources: dict[int, dict[tuple[str, str], None]] = {}
    stubs: dict[int, set[str]] = {}
    overview: list[dict[str, Any]] = []
    graph_of: dict[str, str] = {}
    members: dict[str, list[str]] = {}

    def unit(node: str) -> tuple[str, str] | None:
        root = where.get(node)
        return None if root is None else (part_ids[root], "0")

    for n in nodes:
        root = where[n["id"]]
        if root is None:
            edges = []
            for e in n["incomingEdges"]:
                source = unit(e["sourceNodeId"])
                if source is not None:
                    e = {**e, "sourceNodeId": source[0], "sourceNodeOutputId": source[1]}
                edges.append(e)
            overview.append({**n, "incomingEdges": edges})
            graph_of[n["id"]] = graph_id
            continue
        if root not in part_ids:
            pid = part_ids[root] = f"part{len(part_ids)}"
            part_nodes[root] = _part_node(pid, graph_id, bins[root], sum(count[x] for x in bins[root]))
            overview.append(part_nodes[root])
            graph_of[pid] = graph_id
            part_graphs[root] = []
            part_sources[root] = {}
            stubs[root] = set()
            members[pid] = []
        pid = part_ids[root]
        sub = part_nodes[root]["subgraphIds"][0]
        members[pid].append(n["id"])
        graph_of[n["id"]] = sub
        nodes_here = part_graphs[root]
        edges = []
        for e in n["incomingEdges"]:
            src = e["sourceNodeId"]
            if where.get(src) == root:
                edges.append(e)
                continue
            source_unit = unit(src) or (src, e["sourceNodeOutputId"])
            part_sources[root][source_unit] = None
            slot = e["sourceNodeOutputId"]
            stub = f"x{src}.{slot}"
            if stub not in stubs[root]:
                stubs[root].add(stub)
                meta = [m for m in outputs.get(src, ()) if m.get("id") == slot]
                nodes_here.append(
                    {
                        "id": stub,
                        "label": f"from {labels.get(src, src)}",
                        "namespace": n["namespace"],
                        "attrs": [{"key": "from", "value": f"{graph_of.get(src, '?')}: {src}"}],
                        "incomingEdges": [],
                        "outputsMetadata": meta,
                    }
                )
            edges.append({**e, "sourceNodeId": stub})
        nodes_here.append({**n, "incomingEdges": edges})
    for root, sources in part_sources.items():
        own = part_ids[root]
        part_nodes[root]["incomingEdges"] = [
            {"sourceNodeId": src, "sourceNodeOutputId": slot, "targetNodeInputId": str(k)}
            for k, (src, slot) in enumerate(s for s in sources if s[0] != own)
        ]
    graphs = [{"id": graph_id, "nodes": overview}]
    graphs += [
        {"id": part_nodes[root]["subgraphIds"][0], "nodes": part_graphs[root]} for root in part_ids
    ]
    return Parts(graphs, graph_of, members)
