"""The custom domains of the export (normative text: ``spec/custom-ops.md``).

* ``ai.tracefmt.aten``: an aten op with no standard ONNX mapping, one node per recorded op.  Its
  ``op_type`` is the op name without ``aten::`` (``native_layer_norm_backward``, ``add_:Tensor``);
  its attributes are the recorded non-tensor arguments by schema name, plus ``aten`` (the full op
  name), ``input_args`` and ``output_slots``.
* ``ai.tracefmt``: ``Module`` nodes that hold a collapsed module's nodes in a GRAPH attribute
  ``body``, so Netron can expand and collapse them in place.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import onnx
from onnx import helper

from replayer.export.ops import OpContext
from tracefmt.model import OpNode
from tracefmt.records import decode_json, encode_json

ATEN_DOMAIN = "ai.tracefmt.aten"
MODULE_DOMAIN = "ai.tracefmt"
DOMAIN_VERSION = 1
#: Attributes every custom aten node carries besides the recorded arguments.
RESERVED = frozenset({"aten", "input_args", "output_slots", "json_attrs"})

_OP_TYPE_SAFE = re.compile(r"[^A-Za-z0-9_]")


def op_type(name: str) -> str:
    """``aten::add_.Tensor`` -> ``add_:Tensor``, ``aten::mm.default`` -> ``mm``.

    The overload follows a ``:`` (Netron shows only what follows an op type's last ``.``), and is
    left out when it is ``default``; other characters outside ``[A-Za-z0-9_]`` become ``_``.
    """
    packet, _, overload = name.removeprefix("aten::").partition(".")
    base = _OP_TYPE_SAFE.sub("_", packet)
    return base if overload in ("", "default") else f"{base}:{_OP_TYPE_SAFE.sub('_', overload)}"


def _typed(value: Any) -> Any | None:
    """The ONNX attribute value of a recorded argument, or None when it needs JSON."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return value
        if all(isinstance(v, float) for v in value):
            return value
    return None


def custom_attributes(op: OpNode, output_slots: list[int]) -> dict[str, Any]:
    """The attributes of the custom node of ``op`` (see the module docstring)."""
    attrs: dict[str, Any] = {}
    as_json: list[str] = []
    for key, value in op.attrs.items():
        if key in RESERVED:
            key = f"arg_{key}"
        typed = _typed(value)
        if typed is None:
            attrs[key] = encode_json(value)
            as_json.append(key)
        else:
            attrs[key] = typed
    attrs["aten"] = op.name
    if op.input_args:  # ONNX cannot type an empty list: absent means empty
        attrs["input_args"] = [v for pair in op.input_args for v in pair]
    if output_slots:
        attrs["output_slots"] = output_slots
    if as_json:
        attrs["json_attrs"] = sorted(as_json)
    return attrs


def emit_custom(ctx: OpContext) -> None:
    """Emit ``op`` as one ``ai.tracefmt.aten`` node (the fallback of every unmapped op)."""
    op = ctx.op
    slots = [ctx.tensors[t].meta.producer_slot for t in op.outputs]
    ctx.node(
        op_type(op.name),
        ctx.all_inputs(),
        ctx.outputs(),
        domain=ATEN_DOMAIN,
        **custom_attributes(op, slots),
    )


def decode_custom(node: onnx.NodeProto) -> tuple[str, dict[str, Any], list[tuple[int, int]], list[int]]:
    """(aten name, recorded attributes, input_args pairs, output slots) of a custom aten node."""
    raw: Mapping[str, Any] = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    json_keys = {k.decode() if isinstance(k, bytes) else str(k) for k in raw.get("json_attrs", [])}
    attrs: dict[str, Any] = {}
    for key, value in raw.items():
        if key in RESERVED:
            continue
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        if key in json_keys:
            value = decode_json(str(value))
        elif isinstance(value, list):
            value = list(value)
        attrs[key.removeprefix("arg_") if key.startswith("arg_") and key[4:] in RESERVED else key] = (
            value
        )
    aten = raw.get("aten", b"")
    name = aten.decode() if isinstance(aten, bytes) else str(aten)
    flat = [int(v) for v in raw.get("input_args", [])]
    pairs = [(flat[i], flat[i + 1]) for i in range(0, len(flat) - 1, 2)]
    return name, attrs, pairs, [int(v) for v in raw.get("output_slots", [])]
