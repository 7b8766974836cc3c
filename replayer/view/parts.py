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

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from replayer.view.layers import SEPARATOR
from replayer.view.nodes import Node, node_text

__all__ = ["Parts", "collection_text", "split_parts"]


@dataclass(frozen=True)
class Parts:
    """The graphs of a step (the overview first), the graph each node id is in, and each part
    node's member node ids (what an overlay's value on a part node sums up)."""

    graphs: list[tuple[str, list[Node]]]
    graph_of: dict[str, str]
    members: dict[str, list[str]] = field(default_factory=dict)


def _parent(prefix: str) -> str:
    return prefix.rpartition(SEPARATOR)[0]


def _subtree_counts(nodes: Sequence[Node]) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Nodes under each layer (by namespace prefix; "" is the root) and each layer's sub-layers
    in order of first appearance."""
    direct: dict[str, int] = {}
    for n in nodes:
        ns = n.namespace
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


def _part_node(pid: str, graph_id: str, layers: list[str], nodes: int) -> tuple[Node, str]:
    """A part's node in the overview and the id of the part's graph."""
    first, last = (x.rpartition(SEPARATOR)[2] for x in (layers[0], layers[-1]))
    label = first if len(layers) == 1 else f"{first} \u2026 {last}"
    shown = (
        ", ".join(layers)
        if len(layers) <= 3
        else f"{layers[0]} \u2026 {layers[-1]} ({len(layers)} layers)"
    )
    sub = f"{graph_id}: {pid} {first}" + ("" if len(layers) == 1 else f"-{last}")
    attrs = [
        {"key": "layers", "value": shown},
        {"key": "nodes", "value": str(nodes)},
        {"key": "open", "value": "the square on this node opens its graph"},
    ]
    head = (
        f'"label":{json.dumps(label)},"attrs":{json.dumps(attrs, separators=(",", ":"))},'
        f'"subgraphIds":[{json.dumps(sub)}]'
    )
    node = Node(pid, label, _parent(layers[0]), head, [], [])
    return node, sub


def split_parts(graph_id: str, nodes: list[Node], max_nodes: int) -> Parts:
    """Split the nodes of one graph into an overview (id ``graph_id``) and parts of at most
    ``max_nodes`` nodes (plus their input nodes) each; one graph when all fit.  The nodes'
    edges are changed in place."""
    if len(nodes) <= max_nodes:
        return Parts([(graph_id, nodes)], dict.fromkeys((n.id for n in nodes), graph_id))
    count, children = _subtree_counts(nodes)
    bins = _bins(count, children, max_nodes)
    roots = {layer: k for k, run in enumerate(bins) for layer in run}
    cache: dict[str, int | None] = {}
    where = {n.id: _bin_of(n.namespace, roots, cache) for n in nodes}
    by_id = {n.id: n for n in nodes}
    part_ids: dict[int, str] = {}
    part_subs: dict[int, str] = {}
    part_nodes: dict[int, Node] = {}
    part_graphs: dict[int, list[Node]] = {}
    part_sources: dict[int, dict[tuple[str, int], None]] = {}
    stubs: dict[int, set[str]] = {}
    overview: list[Node] = []
    graph_of: dict[str, str] = {}
    members: dict[str, list[str]] = {}

    for n in nodes:
        root = where[n.id]
        if root is None:
            edges = []
            for e in n.edges:
                source = where.get(e[0])
                edges.append(e if source is None else (part_ids[source], 0, e[2]))
            n.edges = edges
            overview.append(n)
            graph_of[n.id] = graph_id
            continue
        if root not in part_ids:
            pid = part_ids[root] = f"part{len(part_ids)}"
            part_nodes[root], part_subs[root] = _part_node(
                pid, graph_id, bins[root], sum(count[x] for x in bins[root])
            )
            overview.append(part_nodes[root])
            graph_of[pid] = graph_id
            part_graphs[root] = []
            part_sources[root] = {}
            stubs[root] = set()
            members[pid] = []
        pid = part_ids[root]
        sub = part_subs[root]
        members[pid].append(n.id)
        graph_of[n.id] = sub
        nodes_here = part_graphs[root]
        sources = part_sources[root]
        edges = []
        for e in n.edges:
            src, slot, target = e
            src_root = where.get(src)
            if src_root == root:
                edges.append(e)
                continue
            sources[(src, slot) if src_root is None else (part_ids[src_root], 0)] = None
            stub = f"x{src}.{slot}"
            if stub not in stubs[root]:
                stubs[root].add(stub)
                src_node = by_id.get(src)
                label = f"from {src_node.label if src_node is not None else src}"
                outs = src_node.outs[slot : slot + 1] if src_node is not None else []
                origin = f"{graph_of.get(src, '?')}: {src}"
                head = (
                    f'"label":{json.dumps(label)},'
                    f'"attrs":[{{"key":"from","value":{json.dumps(origin)}}}]'
                )
                nodes_here.append(Node(stub, label, n.namespace, head, [], outs))
            edges.append((stub, slot, target))
        n.edges = edges
        nodes_here.append(n)
    for root, sources in part_sources.items():
        own = part_ids[root]
        part_nodes[root].edges = [
            (src, slot, k) for k, (src, slot) in enumerate(s for s in sources if s[0] != own)
        ]
    graphs = [(graph_id, overview)]
    graphs += [(part_subs[root], part_graphs[root]) for root in part_ids]
    return Parts(graphs, graph_of, members)


def collection_text(label: str, parts: Parts, quoted: Mapping[str, str]) -> str:
    """The graph collection's JSON text (``quoted``: namespaces already encoded)."""
    graphs = [
        f'{{"id":{json.dumps(gid)},"nodes":[' + ",".join(node_text(n, quoted) for n in nodes) + "]}"
        for gid, nodes in parts.graphs
    ]
    return f'{{"label":{json.dumps(label)},"graphs":[' + ",".join(graphs) + "]}"
