"""What a mapper sees: the recorded op, ONNX names of its tensors, and a node emitter."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from replayer.export.onnx_types import onnx_type
from tracefmt.dtypes import DTYPE_INFO, DType
from tracefmt.model import OpNode, TensorRecord

#: Suffix of the graph input that holds the recorded output of a random op (``t45.recorded``).
RECORDED_SUFFIX = ".recorded"

_FLOATS = frozenset({DType.FLOAT16, DType.BFLOAT16, DType.FLOAT32, DType.FLOAT64})
_RANK = {
    DType.BOOL: 0,
    DType.UINT8: 1,
    DType.INT8: 1,
    DType.INT16: 2,
    DType.INT32: 3,
    DType.INT64: 4,
    DType.FLOAT16: 5,
    DType.BFLOAT16: 5,
    DType.FLOAT32: 6,
    DType.FLOAT64: 7,
}


class Unsupported(Exception):
    """Raised by a mapper when the recorded arguments are outside what it maps."""


def numpy_dtype(dtype: DType) -> np.dtype[Any]:
    """The numpy (or ml_dtypes) dtype of a logical dtype."""
    return DTYPE_INFO[dtype].logical


def is_float(dtype: DType) -> bool:
    return dtype in _FLOATS


def promote(*dtypes: DType) -> DType:
    """The dtype torch computes ``a op b`` in, for the dtypes that occur in the examples."""
    best = dtypes[0]
    for d in dtypes[1:]:
        if d not in _RANK or best not in _RANK:
            raise Unsupported(f"type promotion of {best.label} and {d.label}")
        if _RANK[d] > _RANK[best]:
            best = d
    return best


class OpContext:
    """Emits the ONNX nodes of one recorded op.

    Besides nodes, a mapper may say what the check needs to know about its op:

    * ``reduction``: the length of the longest sum behind one output element (the tolerance grows
      with it);
    * ``exact``: the outputs are bit-exact functions of the inputs (data movement, integer math);
    * ``layout``: the op only moves elements of its single input (a view); its ONNX nodes can be
      run on storage addresses to check the recorded shape, strides and offset;
    * ``random``: some outputs are random draws, read from the record (``recorded``);
    * ``uninitialized``: the outputs are uninitialized memory (only shape and dtype mean anything).
    """

    def __init__(
        self, op: OpNode, tensors: Sequence[TensorRecord], name_of: Callable[[int], str], node_name: str
    ) -> None:
        self.op = op
        self.tensors = tensors
        self._name_of = name_of
        self._node_name = node_name
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        #: Graph inputs the op reads that are not tensors of the step: (name, tensor it mirrors).
        self.recorded_inputs: list[tuple[str, int]] = []
        self.reduction = 1
        self.exact = False
        self.layout = False
        self.random = False
        self.uninitialized = False
        self._counter = 0
        self._by_arg: dict[tuple[int, int], int] = {}
        for t, key in zip(op.inputs, op.input_args, strict=False):
            self._by_arg.setdefault((key[0], key[1]), t)

    # -- recorded arguments ------------------------------------------------------------------
    def has_input(self, arg: int, item: int = -1) -> bool:
        """True when schema argument ``arg`` (list item ``item``) was a recorded tensor."""
        if item == -1:
            return any(a == arg for a, _ in self._by_arg)
        return (arg, item) in self._by_arg

    def _tensor_index(self, arg: int, item: int = -1) -> int:
        t = self._by_arg.get((arg, item))
        if t is None:
            raise Unsupported(f"argument {arg} is not a recorded tensor")
        return t

    def input(self, arg: int, item: int = -1) -> str:
        """ONNX name of the tensor passed as schema argument ``arg`` (list position ``item``)."""
        return self._name_of(self._tensor_index(arg, item))

    def input_tensor(self, arg: int, item: int = -1) -> TensorRecord:
        return self.tensors[self._tensor_index(arg, item)]

    def input_list(self, arg: int) -> list[str]:
        """ONNX names of a tensor-list argument, in list order."""
        items = sorted((i, t) for (a, i), t in self._by_arg.items() if a == arg and i >= 0)
        return [self._name_of(t) for _, t in items]

    def input_list_tensors(self, arg: int) -> list[TensorRecord]:
        items = sorted((i, t) for (a, i), t in self._by_arg.items() if a == arg and i >= 0)
        return [self.tensors[t] for _, t in items]

    def all_inputs(self) -> list[str]:
        """ONNX names of every recorded tensor input, in recorded order."""
        return [self._name_of(t) for t in self.op.inputs]

    def in_dtype(self, arg: int, item: int = -1) -> DType:
        return self.input_tensor(arg, item).dtype

    def in_shape(self, arg: int, item: int = -1) -> tuple[int, ...]:
        return self.input_tensor(arg, item).shape

    def attr(self, name: str, default: Any = None) -> Any:
        """A recorded non-tensor argument by schema name (``default`` when it was not passed)."""
        value = self.op.attrs.get(name, default)
        return default if value is None else value

    def has_attr(self, name: str) -> bool:
        return self.op.attrs.get(name) is not None

    # -- outputs -----------------------------------------------------------------------------
    def _slot_tensor(self, slot: int) -> int | None:
        for t in self.op.outputs:
            if self.tensors[t].meta.producer_slot == slot:
                return t
        return None

    def has_output(self, slot: int) -> bool:
        return self._slot_tensor(slot) is not None

    def outputs(self) -> list[str]:
        return [self._name_of(t) for t in self.op.outputs]

    def output(self, slot: int = 0) -> str:
        """ONNX name of output ``slot``; a fresh name when that output was not recorded."""
        t = self._slot_tensor(slot)
        return self._name_of(t) if t is not None else self.fresh(f"out{slot}_")

    def output_tensor(self, slot: int = 0) -> TensorRecord:
        t = self._slot_tensor(slot)
        if t is None:
            raise Unsupported(f"output {slot} was not recorded")
        return self.tensors[t]

    def out_dtype(self, slot: int = 0) -> DType:
        return self.output_tensor(slot).dtype

    def out_shape(self, slot: int = 0) -> tuple[int, ...]:
        return self.output_tensor(slot).shape

    def recorded(self, slot: int = 0) -> str:
        """A graph input holding the recorded value of output ``slot`` (for random ops)."""
        t = self._slot_tensor(slot)
        if t is None:
            raise Unsupported(f"output {slot} was not recorded")
        name = self._name_of(t) + RECORDED_SUFFIX
        self.recorded_inputs.append((name, t))
        return name

    # -- emitting ----------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        """A new intermediate value name, unique within this op."""
        self._counter += 1
        return f"{self._node_name}/{hint}{self._counter}"

    def node(
        self, op_type: str, inputs: Sequence[str], outputs: Sequence[str], domain: str = "", **attrs: Any
    ) -> list[str]:
        """Emit one node; returns its output names."""
        self._counter += 1
        name = self._node_name if not self.nodes else f"{self._node_name}#{self._counter}"
        node = helper.make_node(op_type, list(inputs), list(outputs), name=name, domain=domain or None)
        # Attributes apart from make_node's keywords: a recorded argument may be called "name".
        node.attribute.extend(helper.make_attribute(k, v) for k, v in sorted(attrs.items()))
        self.nodes.append(node)
        return list(outputs)

    def op1(self, op_type: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        """Emit a one-output node; returns the output name (fresh unless ``out`` is given)."""
        name = out if out is not None else self.fresh(op_type.lower())
        self.node(op_type, inputs, [name], **attrs)
        return name

    def const(self, value: Any, dtype: DType | np.dtype[Any] | type | None = None) -> str:
        """An initializer holding ``value`` (int64 for integer sequences, as Reshape wants)."""
        if isinstance(dtype, DType):
            dtype = numpy_dtype(dtype)
        raw = np.asarray(value)
        if dtype is None:
            integral = raw.dtype.kind in "iu" or (raw.size == 0 and raw.dtype.kind == "f")
            dtype = np.int64 if integral else raw.dtype
        array = np.asarray(value, dtype=dtype)
        name = self.fresh("const")
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def cast(self, name: str, source: DType, target: DType) -> str:
        """``name`` as ``target`` dtype (no node when it already is)."""
        if source == target:
            return name
        return self.op1("Cast", name, to=onnx_type(target))

    def operand(self, arg: int, attr: str, dtype: DType, default: Any = None) -> str:
        """Argument ``arg`` (named ``attr`` in the schema) as a tensor of ``dtype``: the recorded
        tensor cast to ``dtype``, or a constant of the recorded Python scalar."""
        if self.has_input(arg):
            return self.cast(self.input(arg), self.in_dtype(arg), dtype)
        value = self.attr(attr, default)
        if value is None or isinstance(value, (list, dict, str)):
            raise Unsupported(f"argument {attr!r} is neither a tensor nor a number")
        return self.const(value, dtype)
