"""What a mapper sees: the recorded op, ONNX names of its tensors, and a node emitter."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tracefmt.model import OpNode, TensorRecord


class Unsupported(Exception):
    """Raised by a mapper when the recorded arguments are outside what it maps."""


class OpContext:
    """Emits the ONNX nodes of one recorded op."""

    def __init__(self, op: OpNode, tensors: Sequence[TensorRecord], name_of: Callable[[int], str],
                 node_name: str) -> None:
        self.op = op
        self.tensors = tensors
        self._name_of = name_of
        self._node_name = node_name
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._counter = 0

    # -- recorded arguments ------------------------------------------------------------------
    def input(self, arg: int, item: int = -1) -> str:
        """ONNX name of the tensor passed as schema argument ``arg`` (list position ``item``)."""
        for t, (a, i) in zip(self.op.inputs, self.op.input_args, strict=True):
            if a == arg and i == item:
                return self._name_of(t)
        raise Unsupported(f"argument {arg} is not a recorded tensor")

    def all_inputs(self) -> list[str]:
        """ONNX names of every recorded tensor input, in recorded order."""
        return [self._name_of(t) for t in self.op.inputs]

    def has_input(self, arg: int) -> bool:
        return any(a == arg for a, _ in self.op.input_args)

    def input_list(self, arg: int) -> list[str]:
        """ONNX names of a tensor-list argument, in list order."""
        items = sorted((i, t) for t, (a, i) in zip(self.op.inputs, self.op.input_args, strict=True)
                       if a == arg)
        return [self._name_of(t) for _, t in items]

    def input_tensor(self, arg: int) -> TensorRecord:
        for t, (a, _) in zip(self.op.inputs, self.op.input_args, strict=True):
            if a == arg:
                return self.tensors[t]
        raise Unsupported(f"argument {arg} is not a recorded tensor")

    def require_same_dtype(self, *args: int) -> None:
        """Standard ONNX ops take operands of one type; torch's promotion is not mapped."""
        if len({self.input_tensor(a).dtype for a in args}) > 1:
            raise Unsupported("mixed operand dtypes")

    def attr(self, name: str, default: Any = None) -> Any:
        """A recorded non-tensor argument by schema name."""
        return self.op.attrs.get(name, default)

    def outputs(self) -> list[str]:
        return [self._name_of(t) for t in self.op.outputs]

    def output(self, slot: int = 0) -> str:
        if slot >= len(self.op.outputs):
            raise Unsupported(f"output {slot} was not recorded")
        return self._name_of(self.op.outputs[slot])

    def output_tensor(self, slot: int = 0) -> TensorRecord:
        if slot >= len(self.op.outputs):
            raise Unsupported(f"output {slot} was not recorded")
        return self.tensors[self.op.outputs[slot]]

    # -- emitting ----------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        """A new intermediate value name, unique within this op."""
        self._counter += 1
        return f"{self._node_name}/{hint}{self._counter}"

    def node(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str],
             **attrs: Any) -> None:
        self._counter += 1
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs),
                                           name=f"{self._node_name}#{self._counter}"
                                           if self._counter > 1 else self._node_name,
                                           **attrs))

    def const(self, value: np.ndarray | int | float | Sequence[int], dtype: Any = None) -> str:
        """An initializer holding ``value`` (int64 for integer sequences, as Reshape wants)."""
        array = np.asarray(value, dtype=dtype if dtype is not None else
                           (np.int64 if np.asarray(value).dtype.kind in "iu" else None))
        name = self.fresh("const")
        self.initializers.append(numpy_helper.from_array(array, name))
        return name
