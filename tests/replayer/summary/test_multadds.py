"""The multiply-add formulas of ``replayer summary``, op by op, on hand-made ops."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from replayer.summary import op_mult_adds
from tracefmt.dtypes import DType
from tracefmt.model import OpNode, Phase, TensorMeta, TensorRecord


def _op(
    name: str,
    inputs: Sequence[tuple[int, ...] | None],
    out: tuple[int, ...] | None,
    attrs: Mapping[str, Any] | None = None,
) -> tuple[OpNode, list[TensorRecord]]:
    """Op ``name`` whose argument ``i`` is a tensor of shape ``inputs[i]`` (None: not a tensor)
    and whose first output has shape ``out``."""
    tensors: list[TensorRecord] = []
    ins, args = [], []
    for arg, shape in enumerate(inputs):
        if shape is not None:
            ins.append(len(tensors))
            args.append((arg, -1))
            tensors.append(
                TensorRecord(len(tensors), TensorMeta(DType.FLOAT32, shape), None, None, False)
            )
    outs = []
    if out is not None:
        outs.append(len(tensors))
        tensors.append(TensorRecord(len(tensors), TensorMeta(DType.FLOAT32, out), None, None, False))
    node = OpNode(
        0, f"aten::{name}", Phase.FORWARD, "m", tuple(ins), tuple(outs), tuple(args), attrs or {}
    )
    return node, tensors


@pytest.mark.parametrize(
    ("name", "inputs", "out", "attrs", "expected"),
    [
        ("mm.default", [(8, 4), (4, 3)], (8, 3), None, 8 * 4 * 3),
        ("addmm.default", [(3,), (8, 4), (4, 3)], (8, 3), None, 8 * 4 * 3),
        ("bmm.default", [(2, 8, 4), (2, 4, 3)], (2, 8, 3), None, 2 * 8 * 4 * 3),
        ("baddbmm.default", [(2, 8, 3), (2, 8, 4), (2, 4, 3)], (2, 8, 3), None, 2 * 8 * 4 * 3),
        ("addbmm.default", [(8, 3), (2, 8, 4), (2, 4, 3)], (8, 3), None, 2 * 8 * 4 * 3),
        ("matmul.default", [(5, 8, 4), (4, 3)], (5, 8, 3), None, 5 * 8 * 4 * 3),
        ("matmul.default", [(4,), (4,)], (), None, 4),
        ("linear.default", [(2, 8, 4), (3, 4), (3,)], (2, 8, 3), None, 2 * 8 * 4 * 3),
        ("mv.default", [(8, 4), (4,)], (8,), None, 32),
        ("addmv.default", [(8,), (8, 4), (4,)], (8,), None, 32),
        ("dot.default", [(7,), (7,)], (), None, 7),
        # conv2d: 2 images, 3 -> 8 channels, 3x3 kernel, output 16x16
        ("convolution.default", [(2, 3, 16, 16), (8, 3, 3, 3), (8,)], (2, 8, 16, 16),
         {"transposed": False}, 2 * 8 * 16 * 16 * 3 * 9),
        # grouped: each output channel sees 3 / 3 = 1 input channel
        ("convolution.default", [(2, 3, 16, 16), (6, 1, 3, 3), None], (2, 6, 14, 14),
         {"transposed": False, "groups": 3}, 2 * 6 * 14 * 14 * 9),
        # transposed: every input element spreads over C_out x kernel
        ("convolution.default", [(2, 4, 8, 8), (4, 5, 2, 2), None], (2, 5, 16, 16),
         {"transposed": True}, 2 * 4 * 8 * 8 * 5 * 4),
        ("convolution_backward.default", [(2, 8, 16, 16), (2, 3, 16, 16), (8, 3, 3, 3)], (2, 3, 16, 16),
         {"transposed": False, "output_mask": [True, True, False]}, 2 * (2 * 8 * 16 * 16 * 3 * 9)),
        ("convolution_backward.default", [(2, 8, 16, 16), (2, 3, 16, 16), (8, 3, 3, 3)], None,
         {"transposed": False, "output_mask": [False, True, True]}, 2 * 8 * 16 * 16 * 3 * 9),
        # attention: batch 2, 4 heads, 16 queries over 16 keys, widths 8
        ("_scaled_dot_product_flash_attention_for_cpu.default",
         [(2, 4, 16, 8), (2, 4, 16, 8), (2, 4, 16, 8)], (2, 4, 16, 8), None, 2 * 4 * 16 * 16 * 16),
        # the flash kernel's own layout (B, L, H, E): 16 queries over 32 keys, 4 heads
        ("_flash_attention_forward.default",
         [(2, 16, 4, 8), (2, 32, 4, 8), (2, 32, 4, 8)], (2, 16, 4, 8), None, 2 * 16 * 4 * 32 * 16),
        ("relu.default", [(8, 4)], (8, 4), None, 0),
        ("native_layer_norm.default", [(8, 4), None, (4,), (4,)], (8, 4), None, 0),
    ],
)  # fmt: skip
def test_formula(
    name: str,
    inputs: list[tuple[int, ...] | None],
    out: tuple[int, ...] | None,
    attrs: dict[str, Any] | None,
    expected: int,
) -> None:
    op, tensors = _op(name, inputs, out, attrs)
    assert op_mult_adds(op, tensors) == expected


def test_missing_shapes_count_none_not_a_crash() -> None:
    op, tensors = _op("mm.default", [(8, 4)], (8, 3))  # the second operand is not there
    assert op_mult_adds(op, tensors) is None
    op, tensors = _op("convolution.default", [(2, 3, 8, 8), (8,)], None, {"transposed": False})
    assert op_mult_adds(op, tensors) is None
