"""Multiply-adds of one recorded op, from the shapes of its tensors.

A multiply-add (MAC) is one ``a * b + c``; a dense matrix product of ``(n, k)`` by ``(k, m)``
takes ``n * k * m`` of them.  ``replayer summary`` adds them up per module, as torchinfo's
"Mult-Adds" column does; they count arithmetic, not time.  The formulas, with every shape read
from the recorded tensors (the op's inputs by argument position):

* ``mm(a, b)``, ``bmm(a, b)``: ``numel(a) * b.shape[-1]``;
* ``addmm(c, a, b)``, ``baddbmm``, ``addbmm``, ``_addmm_activation`` (and the in-place forms):
  ``numel(a) * b.shape[-1]`` (adding ``c`` is not counted);
* ``matmul(a, b)``: ``numel(out) * a.shape[-1]`` (batch dimensions broadcast);
* ``mv(a, x)``, ``addmv(c, a, x)``, ``dot(a, b)``, ``vdot(a, b)``: ``numel(a)``;
* ``linear(x, w, bias)``: ``numel(x) * w.shape[0]`` (``numel(x)`` for a 1-D ``w``);
* ``convolution`` (and ``_convolution``, ``conv1d``..``conv3d``, the backend forms):
  ``numel(out) * prod(w.shape[1:])``, i.e. every output element takes ``C_in / groups`` times
  the kernel size; transposed (``conv_transpose*``, ``transposed=True``):
  ``numel(x) * prod(w.shape[1:])``, every input element spread over ``C_out / groups`` times
  the kernel size;
* ``convolution_backward(gy, x, w, ...)``: the forward's count once for each of ``grad_input``
  and ``grad_weight`` that its ``output_mask`` asks for;
* the scaled dot-product attention kernels (``q, k, v`` first): ``prod(q.shape[:-1]) * S *
  (E + Ev)`` for ``S`` keys, query width ``E`` and value width ``Ev`` (``q @ k^T`` and
  ``p @ v``), dense: positions a causal mask hides are counted too.

Every other op counts 0 (elementwise ops, normalisations and softmax are not multiply-adds), and an
op whose tensors do not have the shapes the formula needs (a hostile trace) counts None.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from replayer.why.stepflow import base_op_name
from tracefmt.model import OpNode, TensorRecord

__all__ = ["MULT_ADD_OPS", "op_mult_adds"]

Shape = tuple[int, ...]
#: ``count(shapes of the inputs by argument position, shape of the first output, attributes)``
_Count = Callable[[dict[int, Shape], Shape | None, dict[str, object]], int | None]


def _contract(a: Shape, b: Shape) -> int | None:
    """``numel(a) * b.shape[-1]``: ``a`` of ``(..., n, k)`` times ``b`` of ``(..., k, m)``."""
    if not a or not b:
        return None
    return math.prod(a) * b[-1]


def _mm(args: dict[int, Shape], out: Shape | None, attrs: dict[str, object]) -> int | None:
    return _contract(args.get(0, ()), args.get(1, ()))


def _addmm(args: dict[int, Shape], out: Shape | None, attrs: dict[str, object]) -> int | None:
    return _contract(args.get(1, ()), args.get(2, ()))


def _matmul(args: dict[int, Shape], out: Shape | None, attrs: dict[str, object]) -> int | None:
    a = args.get(0, ())
    if not a or out is None:
        return None
    return math.prod(out) * a[-1]


def _vector(first: int) -> _Count:
    def count(args: dict[int, Shape], out: Shape | None, attrs: dict[str, object]) -> int | None:
        a = args.get(first)
        return None if a is None else math.prod(a)

    return count


def _linear(args: dict[int, Shape], out: Shape | None, attrs: dict[str, object]) -> int | None:
    x, w = args.get(0), args.get(1)
    if x is None or not w:
        return None
    return math.prod(x) * (w[0] if len(w) == 2 else 1)


def _conv_count(x: Shape, w: Shape, out: Shape | None, transposed: bool) -> int | None:
    if len(w) < 2 or not x:
        return None
    per = math.prod(w[1:])
    if transposed:
        return math.prod(x) * per
    return None if out is None else math.prod(out) * per


def _conv(
    transposed: bool | None,
) -> Callable[[dict[int, Shape], Shape | None, dict[str, object]], int | None]:
    """A convolution whose ``transposed`` is fixed by the op, or (None) read from its attributes."""

    def count(args: dict[int, Shape], out: Shape | None, attrs: dict[str, object]) -> int | None:
        flag = bool(attrs.get("transposed", False)) if transposed is None else transposed
        return _conv_count(args.get(0, ()), args.get(1, ()), out, flag)

    return count


def _conv_backward(args: dict[int, Shape], out: Shape | None, attrs: dict[str, object]) -> int | None:
    gy, x, w = args.get(0), args.get(1, ()), args.get(2, ())
    forward = _conv_count(x, w, gy, bool(attrs.get("transposed", False)))
    mask = attrs.get("output_mask", [True, True, True])
    if forward is None or not isinstance(mask, list):
        return None
    return forward * sum(1 for wanted in mask[:2] if wanted)


def _attention(args: dict[int, Shape], out: Shape | None, attrs: dict[str, object]) -> int | None:
    """(..., L, E) query, (..., S, E) key, (..., S, Ev) value: L*S*E for the scores, L*S*Ev for
    the weighted sum, per leading index."""
    q, k, v = args.get(0, ()), args.get(1, ()), args.get(2, ())
    if len(q) < 2 or len(k) < 2 or len(v) < 2:
        return None
    return math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


def _attention_blhe(args: dict[int, Shape], out: Shape | None, attrs: dict[str, object]) -> int | None:
    """The flash and memory-efficient kernels' layout, (B, L, H, E) query and (B, S, H, E) key and
    value: the same count with the key length at dimension -3."""
    q, k, v = args.get(0, ()), args.get(1, ()), args.get(2, ())
    if len(q) < 3 or len(k) < 3 or len(v) < 3:
        return None
    return math.prod(q[:-1]) * k[-3] * (q[-1] + v[-1])


#: Base op name (``aten::addmm.default`` -> ``addmm``) -> its count.
MULT_ADD_OPS: dict[str, _Count] = {
    "mm": _mm,
    "bmm": _mm,
    "addmm": _addmm,
    "addmm_": _addmm,
    "baddbmm": _addmm,
    "baddbmm_": _addmm,
    "addbmm": _addmm,
    "addbmm_": _addmm,
    "_addmm_activation": _addmm,
    "matmul": _matmul,
    "mv": _vector(0),
    "addmv": _vector(1),
    "addmv_": _vector(1),
    "dot": _vector(0),
    "vdot": _vector(0),
    "linear": _linear,
    "convolution": _conv(None),
    "_convolution": _conv(None),
    "conv1d": _conv(False),
    "conv2d": _conv(False),
    "conv3d": _conv(False),
    "conv_transpose1d": _conv(True),
    "conv_transpose2d": _conv(True),
    "conv_transpose3d": _conv(True),
    "mkldnn_convolution": _conv(False),
    "cudnn_convolution": _conv(False),
    "miopen_convolution": _conv(False),
    "_slow_conv2d_forward": _conv(False),
    "slow_conv3d_forward": _conv(False),
    "cudnn_convolution_transpose": _conv(True),
    "slow_conv_transpose2d": _conv(True),
    "slow_conv_transpose3d": _conv(True),
    "convolution_backward": _conv_backward,
    "_scaled_dot_product_flash_attention": _attention,
    "_scaled_dot_product_flash_attention_for_cpu": _attention,
    "_scaled_dot_product_efficient_attention": _attention,
    "_scaled_dot_product_cudnn_attention": _attention,
    "_scaled_dot_product_attention_math": _attention,
    "scaled_dot_product_attention": _attention,
    "_flash_attention_forward": _attention_blhe,
    "_efficient_attention_forward": _attention_blhe,
}


def op_mult_adds(op: OpNode, tensors: Sequence[TensorRecord]) -> int | None:
    """Multiply-adds of ``op`` (see the module docstring): 0 for ops without a formula, None
    when its recorded tensors lack the shapes its formula needs."""
    count = MULT_ADD_OPS.get(base_op_name(op.name))
    if count is None:
        return 0
    args: dict[int, Shape] = {}
    positions = op.input_args or tuple((i, -1) for i in range(len(op.inputs)))
    for t, (arg, item) in zip(op.inputs, positions, strict=False):
        if item == -1 and 0 <= t < len(tensors):
            args.setdefault(arg, tensors[t].meta.shape)
    out = tensors[op.outputs[0]].meta.shape if op.outputs and op.outputs[0] < len(tensors) else None
    return count(args, out, dict(op.attrs))
