"""Collapsible layers for Model Explorer: a namespace path for every node, no layer too wide.

Model Explorer builds its layer tree from each node's ``namespace`` (``forward/h/0/attn``) and lays
out one layer at a time; the cost of a view follows the number of children of the layer it shows,
and a layer of a few thousand children freezes or crashes the page (its "Maximum call stack size
exceeded").  :func:`assign_namespaces` takes each node's natural path (phase, then module path
components) and, wherever a layer would have more than ``max_children`` children (nodes and
sub-layers), moves consecutive runs of ``chunk`` children into artificial layers named by the op
range they hold (``ops 1200-1299``), level upon level until every layer fits.  Children keep their
order of first appearance, so a chunk holds ops that ran together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from replayer.errors import ReplayError

__all__ = ["LayerLimits", "assign_namespaces", "chunk_label", "widest_layer"]

#: What separates the components of a namespace in Model Explorer.
SEPARATOR = "/"


@dataclass(frozen=True)
class LayerLimits:
    """How wide a layer may be: at most ``max_children`` children; a wider one is split into
    artificial layers of ``chunk`` children each.  A step of more than ``part_nodes`` nodes is
    shown as an overview with its big layers as graphs of their own of at most that many nodes
    (:mod:`replayer.view.parts`)."""

    max_children: int = 400
    chunk: int = 100
    part_nodes: int = 2500

    def __post_init__(self) -> None:
        if self.max_children < 2:
            raise ReplayError(f"max_children must be at least 2, not {self.max_children}.")
        if not 2 <= self.chunk <= self.max_children:
            raise ReplayError(
                f"chunk must be between 2 and max_children ({self.max_children}), not {self.chunk}."
            )
        if self.part_nodes < 1:
            raise ReplayError(f"part_nodes must be at least 1, not {self.part_nodes}.")


class _Layer:
    __slots__ = ("children", "hi", "lo", "name", "sub")

    def __init__(self, name: str) -> None:
        self.name = name
        #: sub-layers and leaf items (ints: positions in the item sequence), in first appearance
        self.children: list[_Layer | int] = []
        self.sub: dict[str, _Layer] = {}
        self.lo = 0
        self.hi = 0


def chunk_label(lo: int, hi: int) -> str:
    """The name of an artificial layer holding the ops numbered ``lo`` to ``hi``."""
    return f"ops {lo}-{hi}" if lo != hi else f"op {lo}"


def _component(text: str) -> str:
    return text.replace(SEPARATOR, "_") or "_"


def _build(paths: Sequence[Sequence[str]]) -> _Layer:
    root = _Layer("")
    for i, path in enumerate(paths):
        layer = root
        for part in path:
            name = _component(part)
            child = layer.sub.get(name)
            if child is None:
                child = layer.sub[name] = _Layer(name)
                layer.children.append(child)
            layer = child
        layer.children.append(i)
    return root


def _span(child: _Layer | int, numbers: Sequence[int]) -> tuple[int, int]:
    if isinstance(child, int):
        return numbers[child], numbers[child]
    return child.lo, child.hi


def _limit(root: _Layer, numbers: Sequence[int], limits: LayerLimits) -> None:
    """Chunk every layer wider than the limit, bottom-up (iteratively: module trees and chunk
    levels can be deep)."""
    order: list[_Layer] = []
    stack = [root]
    while stack:
        layer = stack.pop()
        order.append(layer)
        stack.extend(c for c in layer.children if isinstance(c, _Layer))
    for layer in reversed(order):  # children before parents
        spans = [_span(c, numbers) for c in layer.children]
        if spans:
            layer.lo = min(s[0] for s in spans)
            layer.hi = max(s[1] for s in spans)
        while len(layer.children) > limits.max_children:
            grouped: list[_Layer | int] = []
            used: set[str] = set()
            for start in range(0, len(layer.children), limits.chunk):
                part = layer.children[start : start + limits.chunk]
                ranges = [_span(c, numbers) for c in part]
                lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
                name = label = chunk_label(lo, hi)
                n = 2
                while name in used:  # interleaved sub-layers can share a range
                    name = f"{label} ({n})"
                    n += 1
                used.add(name)
                chunk = _Layer(name)
                chunk.children = part
                chunk.lo, chunk.hi = lo, hi
                grouped.append(chunk)
            layer.children = grouped
        layer.sub = {}


def assign_namespaces(
    paths: Sequence[Sequence[str]], numbers: Sequence[int], limits: LayerLimits | None = None
) -> list[str]:
    """The namespace of each item: its path, with artificial layers inserted where a layer would
    be wider than ``limits`` allows.

    ``paths[i]`` is item ``i``'s natural path (components; ``/`` in a component becomes ``_``) and
    ``numbers[i]`` the op number that names it in chunk labels.  Items are in execution order.

    >>> assign_namespaces([["forward", "a"], ["forward"]], [0, 1])
    ['forward/a', 'forward']
    """
    if len(paths) != len(numbers):
        raise ReplayError(f"{len(paths)} paths but {len(numbers)} numbers.")
    limits = limits or LayerLimits()
    root = _build(paths)
    _limit(root, numbers, limits)
    out = [""] * len(paths)
    stack: list[tuple[_Layer, str]] = [(root, "")]
    while stack:
        layer, prefix = stack.pop()
        for child in layer.children:
            if isinstance(child, int):
                out[child] = prefix
            else:
                stack.append((child, f"{prefix}{SEPARATOR}{child.name}" if prefix else child.name))
    return out


def widest_layer(namespaces: Sequence[str]) -> tuple[str, int]:
    """The namespace with the most children (nodes directly in it and distinct sub-layers) as
    Model Explorer will build the tree, and that number: what the layer limit bounds."""
    leaves: dict[str, int] = {}
    for ns in namespaces:
        leaves[ns] = leaves.get(ns, 0) + 1
    children: dict[str, set[str]] = {}
    for ns in leaves:  # distinct namespaces: few, however many nodes
        parts = ns.split(SEPARATOR) if ns else []
        for depth in range(len(parts)):
            parent = SEPARATOR.join(parts[:depth])
            children.setdefault(parent, set()).add(parts[depth])
    best, most = "", 0
    for ns in set(children) | set(leaves):
        n = len(children.get(ns, ())) + leaves.get(ns, 0)
        if n > most:
            best, most = ns, n
    return best, most
