"""How large the terms behind each output element are: the scale an op's rounding is measured on.

A float sum of K terms carries a rounding error of up to about eps * K * sum|x_k| (each addition
rounds a partial sum no larger than sum|x_k|; Higham, *Accuracy and Stability of Numerical
Algorithms*, ch. 3-4), and a dot product one of up to about eps * K * sum|a_k||b_k|; in practice
(blocked and pairwise summation, random rounding) the error grows more like sqrt(K), which is
what :func:`replayer.check.compare.tolerance` allows.  When the terms cancel, the result is far
smaller than those sums and its own size says nothing about the rounding in it: the gradient of an
attention *key* bias is a sum over rows that is mathematically zero (softmax ignores a constant
shift), its float32 value is rounding noise of about 1e-13, and a second correct implementation
reproduces it only to within the noise.  Judged against its own size it "fails".

:func:`term_magnitudes` evaluates an op's ONNX nodes on the absolute values of their inputs,
with subtraction turned into addition and negation dropped.  For nodes made of sums, products,
matrix products, quotients and data movement (:data:`LINEAR_NODES`) that is, per output element,
sum|x| for a sum, sum|a||b| for a product, and in general the running-error scale of the
expression.  An op with any other node (``Exp``, ``Softmax``, normalisations...) gets none and is
judged against its output alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from replayer.check.runtime import RunError, run_ort
from replayer.check.stages import Batch

__all__ = ["LINEAR_NODES", "linear", "term_magnitudes"]

#: Standard ONNX nodes whose evaluation on absolute values gives the scale of their rounding.
LINEAR_NODES = frozenset(
    {
        "Add",
        "Sub",
        "Neg",
        "Mul",
        "Div",
        "Sum",
        "Mean",
        "MatMul",
        "Gemm",
        "Einsum",
        "ReduceSum",
        "ReduceMean",
        "Conv",
        "ConvTranspose",
        "AveragePool",
        "Identity",
        "Cast",
        "Constant",
        "Reshape",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Flatten",
        "Expand",
        "Concat",
        "Split",
        "Slice",
        "Gather",
        "Tile",
        "Pad",
        "Where",
    }
)
#: How each node changes when its inputs are absolute values: x - y and -x have the terms of
#: x + y and x; ``Gemm`` scales by |alpha| and |beta|.
_RENAMED = {"Sub": "Add", "Neg": "Identity"}


def _absolute(array: np.ndarray) -> np.ndarray:
    """Floating arrays (bfloat16 and float8 of ml_dtypes included) as absolute values; integer
    and boolean arrays (axes, shapes, indices, conditions) untouched."""
    return np.abs(array) if "float" in array.dtype.name else array


def _abs_node(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.op_type = _RENAMED.get(node.op_type, node.op_type)
    for attr in copy.attribute:
        if node.op_type == "Gemm" and attr.name in ("alpha", "beta"):
            attr.f = abs(attr.f)
        elif node.op_type == "Constant" and attr.type == onnx.AttributeProto.TENSOR:
            value = numpy_helper.to_array(attr.t)
            attr.t.CopyFrom(numpy_helper.from_array(_absolute(value), attr.t.name))
        elif node.op_type == "Constant" and attr.name == "value_float":
            attr.f = abs(attr.f)
        elif node.op_type == "Constant" and attr.name == "value_floats":
            attr.floats[:] = [abs(f) for f in attr.floats]
    return copy


def _abs_initializer(tensor: onnx.TensorProto) -> onnx.TensorProto:
    return numpy_helper.from_array(_absolute(numpy_helper.to_array(tensor)), tensor.name)


def linear(nodes: Sequence[onnx.NodeProto]) -> bool:
    """Whether every node is a standard one of :data:`LINEAR_NODES`."""
    return bool(nodes) and all(n.domain in ("", "ai.onnx") and n.op_type in LINEAR_NODES for n in nodes)


def term_magnitudes(batch: Batch) -> dict[str, np.ndarray] | None:
    """Per output (by value name): the nodes of ``batch`` evaluated on absolute values, as
    float64 with non-finite elements (an overflow of the sum of magnitudes) set to 0, so they
    fall back to the output's own scale.  ``None`` when a node is not in :data:`LINEAR_NODES`,
    an input is complex, or the evaluation fails."""
    if not linear(batch.nodes) or any(a.dtype.kind == "c" for a in batch.feeds.values()):
        return None
    nodes = [_abs_node(n) for n in batch.nodes]
    inits = [_abs_initializer(t) for t in batch.initializers]
    feeds = {name: _absolute(np.asarray(a)) for name, a in batch.feeds.items()}
    try:
        results = run_ort(nodes, inits, feeds, batch.outputs)
    except RunError:
        return None
    out = {}
    for name, value in results.items():
        mag = np.abs(np.asarray(value, dtype=np.float64))
        out[name] = np.where(np.isfinite(mag), mag, 0.0)
    return out
