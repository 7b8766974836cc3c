"""Model Explorer nodes as pre-encoded JSON fragments: a 100,000-op step's graph text in about a
second instead of building and encoding 100,000 nested dicts.

A :class:`Node` keeps the parts of a node that :mod:`replayer.view.parts` changes (its graph,
its incoming edges) as plain values and the rest (label, ``attrs``, each output's metadata) as
JSON text, encoded once; :func:`node_text` joins them.  Strings that repeat (op names, modules,
namespaces) are encoded once per distinct value (:class:`Encoder`).
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Mapping, Sequence
from typing import Any

from tracefmt.model import OpNode, Phase, Role, TensorRecord, TensorStats

__all__ = ["Edge", "Encoder", "Node", "edge_text", "node_text", "quote"]

_STAT_FIELDS = ("min", "max", "mean", "std", "norm", "nan", "inf", "zero")
_ROLES = {r: r.label for r in Role}
_PHASES = {p: p.label for p in Phase}

#: An incoming edge: source node id, the source's output slot, this node's input slot.
Edge = tuple[str, int, int]


class Node:
    """One node: ``id``, ``namespace``, ``head`` (the JSON members ``"label":..,"attrs":[..]``
    and, for a part node, ``"subgraphIds"``), incoming ``edges`` and ``outs`` (each output's
    metadata object as JSON text, by slot)."""

    __slots__ = ("edges", "head", "id", "label", "namespace", "outs")

    def __init__(
        self, id: str, label: str, namespace: str, head: str, edges: list[Edge], outs: list[str]
    ) -> None:
        self.id = id
        self.label = label
        self.namespace = namespace
        self.head = head
        self.edges = edges
        self.outs = outs


def quote(text: str) -> str:
    """``text`` as a JSON string (plain ASCII without quotes or backslashes needs no escapes:
    the usual case, without :func:`json.dumps`'s cost)."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return json.dumps(text)


def edge_text(edge: Edge) -> str:
    return (
        f'{{"sourceNodeId":"{edge[0]}","sourceNodeOutputId":"{edge[1]}",'
        f'"targetNodeInputId":"{edge[2]}"}}'
    )


def node_text(node: Node, quoted: Mapping[str, str]) -> str:
    """The node's JSON object (``quoted``: namespace -> its JSON string, see
    :meth:`Encoder.quote`)."""
    ns = quoted.get(node.namespace) or json.dumps(node.namespace)
    return (
        f'{{"id":"{node.id}","namespace":{ns},{node.head},"incomingEdges":['
        + ",".join(map(edge_text, node.edges))
        + '],"outputsMetadata":['
        + ",".join(node.outs)
        + "]}"
    )


def _attr(key: str, value: str) -> str:
    return f'{{"key":{quote(key)},"value":{quote(value)}}}'


def _arg_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return json.dumps(value, default=str, allow_nan=True)


_STATS = operator.attrgetter(*_STAT_FIELDS)
_ALL_STATS = "min %.6g max %.6g mean %.6g std %.6g norm %.6g nan %s inf %s zero %s"


def stats_text(st: TensorStats) -> str:
    """``min -1 max 2 mean 0.5 std 1 norm 3 nan 0 inf 0 zero 0``: the recorded statistics."""
    values = _STATS(st)
    if None not in values:  # the usual case, in one format
        return _ALL_STATS % values
    parts = []
    for name in _STAT_FIELDS:
        value = getattr(st, name)
        if value is not None:
            parts.append(f"{name} {value:.6g}" if isinstance(value, float) else f"{name} {value}")
    return " ".join(parts)


def tensor_label(t: TensorRecord) -> str:
    if t.name:
        return f"{t.name}@v{t.meta.version}" if t.meta.version else t.name
    return f"t{t.index}"


def short_name(name: str) -> str:
    return name.removeprefix("aten::").split(".")[0]


class Encoder:
    """Encodes nodes of one step, remembering the JSON of strings that repeat."""

    def __init__(self, tensors: Sequence[TensorRecord]) -> None:
        self.tensors = tensors
        self._quoted: dict[str, str] = {}
        self._op_heads: dict[str, tuple[str, str]] = {}
        self._modules: dict[str, str] = {}
        self._args: dict[tuple[str, type, Any], str] = {}
        self._shapes: dict[tuple[Any, tuple[int, ...]], str] = {}

    def quote(self, text: str) -> str:
        q = self._quoted.get(text)
        if q is None:
            q = self._quoted[text] = quote(text)
        return q

    @property
    def quoted(self) -> Mapping[str, str]:
        return self._quoted

    def output(self, slot: int, t: TensorRecord, label: str) -> str:
        """The metadata object of output ``slot``, tensor ``t`` (shown as ``label``)."""
        meta = t.meta
        key = (meta.dtype, meta.shape)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = f"{meta.dtype.name.lower()}[{','.join(map(str, meta.shape))}]"
        text = (
            f'{{"id":"{slot}","attrs":[{{"key":"tensor_name","value":{quote(label)}}},'
            f'{{"key":"tensor_shape","value":"{shape}"}}'
        )
        if meta.role is not Role.ACTIVATION:
            text += f',{{"key":"role","value":"{_ROLES[meta.role]}"}}'
        st = t.stats
        if st is not None and (s := stats_text(st)):
            text += f',{{"key":"stats","value":"{s}"}}'  # digits, letters, signs: no escapes
        return text + "]}"

    def arg(self, key: str, value: Any) -> str:
        """The ``arg.<key>`` attribute of an op argument."""
        kind = type(value)
        # Cached by type and value (1, 1.0 and True are equal keys otherwise); not -0.0 (== 0.0)
        # nor lists (unhashable).
        if kind not in (str, int, bool, float) or (kind is float and value == 0.0):
            return _attr(f"arg.{key}", _arg_text(value))
        cache_key = (key, kind, value)
        hit = self._args.get(cache_key)
        if hit is None:
            hit = self._args[cache_key] = _attr(f"arg.{key}", _arg_text(value))
        return hit

    def op_node(self, op: OpNode, namespace: str, made: Mapping[int, tuple[int, int]]) -> Node:
        tensors = self.tensors
        n = len(tensors)
        known = self._op_heads.get(op.name)
        if known is None:
            label = short_name(op.name)
            head = f'"label":{quote(label)},"attrs":[' + _attr("aten", op.name) + ","
            known = self._op_heads[op.name] = (head, label)
        head, label = known
        module = self._modules.get(op.module)
        if module is None:
            module = self._modules[op.module] = _attr("module", op.module or "<root>")
        head += module
        parts = [head]
        for name, v in op.attrs.items():
            parts.append(self.arg(name, v))
        if op.host_ns is not None:
            parts.append(f'{{"key":"host_time_us","value":"{op.host_ns / 1000:.1f}"}}')
        if op.device_ns is not None:
            parts.append(f'{{"key":"device_time_us","value":"{op.device_ns / 1000:.1f}"}}')
        if op.mem_bytes is not None:
            parts.append(f'{{"key":"mem_bytes","value":"{op.mem_bytes}"}}')
        if op.source:
            parts.append(_attr("source", op.source))
        edges: list[Edge] = []
        for k, t in enumerate(op.inputs):
            src = made.get(t)
            if src is not None:
                edges.append((f"op{src[0]}", src[1], k))
            elif 0 <= t < n:
                edges.append((f"t{t}", 0, k))
        outs = [
            self.output(k, tensors[t], tensor_label(tensors[t]))
            for k, t in enumerate(op.outputs)
            if 0 <= t < n
        ]
        return Node(f"op{op.index}", label, namespace, ",".join(parts) + "]", edges, outs)

    def input_node(self, t: TensorRecord, namespace: str) -> Node:
        label = tensor_label(t)
        shown = label if len(label) <= 40 else "\u2026" + label[-39:]
        attrs = [_attr("tensor", str(t.index)), _attr("role", _ROLES[t.role])]
        if t.meta.producer is not None:
            attrs.append(_attr("made_by_op", str(t.meta.producer)))
        head = f'"label":{json.dumps(shown)},"attrs":[' + ",".join(attrs) + "]"
        return Node(f"t{t.index}", shown, namespace, head, [], [self.output(0, t, label)])


def phase_label(phase: Phase) -> str:
    return _PHASES[phase]
