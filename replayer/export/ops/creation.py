"""Tensors made from nothing: ranges, constants, uninitialized memory, masks and random draws.

Random ops are replayed from the record: where the trace holds the draw (a dropout mask, say),
the op becomes an ``Identity`` of a graph input ``<output>.recorded`` holding it, so ONNX Runtime
reproduces the step exactly; ``replayer check`` tests the draw for plausibility (values in range,
mean near the probability).  Without recorded values the op becomes the ONNX random op.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from onnx import numpy_helper

from replayer.export.onnx_types import onnx_type
from replayer.export.ops import OpContext, RefArgs, Unsupported, plausible, register
from replayer.export.ops.opcontext import numpy_dtype
from tracefmt.dtypes import DType


def _fill(ctx: OpContext, value: object, slot: int = 0) -> None:
    dtype = ctx.out_dtype(slot)
    shape = list(ctx.out_shape(slot))

    fill = numpy_helper.from_array(np.asarray([value], dtype=numpy_dtype(dtype)))
    ctx.node("ConstantOfShape", [ctx.const(shape)], [ctx.output(slot)], value=fill)


@register(
    "aten::ones.default",
    "aten::ones_like.default",
    "aten::new_ones.default",
    "aten::zeros.default",
    "aten::zeros_like.default",
    "aten::new_zeros.default",
    "aten::zero_.default",
    "aten::zero.default",
)
def ones_zeros(ctx: OpContext) -> None:
    ctx.exact = True
    _fill(ctx, 1 if "ones" in ctx.op.name else 0)


@register(
    "aten::full.default",
    "aten::full_like.default",
    "aten::new_full.default",
    "aten::fill_.Scalar",
    "aten::fill.Scalar",
)
def full(ctx: OpContext) -> None:
    ctx.exact = True
    value = ctx.attr("fill_value", ctx.attr("value"))
    if not isinstance(value, (int, float, bool)):
        raise Unsupported("fill value")
    _fill(ctx, value)


@register("aten::fill_.Tensor", "aten::fill.Tensor")
def fill_tensor(ctx: OpContext) -> None:
    ctx.exact = True
    dtype = ctx.out_dtype()
    value = ctx.cast(ctx.input(1), ctx.in_dtype(1), dtype)
    ctx.node("Expand", [value, ctx.const(list(ctx.out_shape()))], [ctx.output()])


@register("aten::scalar_tensor.default")
def scalar_tensor(ctx: OpContext) -> None:
    ctx.exact = True
    value = ctx.attr("s")
    if not isinstance(value, (int, float, bool)):
        raise Unsupported("scalar value")
    _fill(ctx, value)


@register(
    "aten::empty.memory_format",
    "aten::empty_like.default",
    "aten::new_empty.default",
    "aten::empty_strided.default",
    "aten::new_empty_strided.default",
    "aten::empty_permuted.default",
    "aten::empty.default",
)
def empty(ctx: OpContext) -> None:
    """Uninitialized memory: zeros of the recorded shape (the check compares shape and dtype)."""
    ctx.exact = ctx.uninitialized = True
    _fill(ctx, 0)


@register("aten::arange.default", "aten::arange.start", "aten::arange.start_step")
def arange(ctx: OpContext) -> None:
    ctx.exact = True
    dtype = ctx.out_dtype()
    start, end, step = ctx.attr("start", 0), ctx.attr("end"), ctx.attr("step", 1)
    if not all(isinstance(v, (int, float)) for v in (start, end, step)):
        raise Unsupported("arange bounds")
    ctx.node(
        "Range", [ctx.const(start, dtype), ctx.const(end, dtype), ctx.const(step, dtype)], [ctx.output()]
    )


@register("aten::tril.default", "aten::triu.default", "aten::tril_.default", "aten::triu_.default")
def trilu(ctx: OpContext) -> None:
    ctx.exact = True
    upper = int("triu" in ctx.op.name)
    ctx.node(
        "Trilu", [ctx.input(0), ctx.const(int(ctx.attr("diagonal", 0)))], [ctx.output()], upper=upper
    )


# -- random --------------------------------------------------------------------------------------
def _replay_recorded(ctx: OpContext, slot: int = 0) -> bool:
    """Emit ``Identity(<output>.recorded)`` when the draw was recorded; False when it was not."""
    if not ctx.has_output(slot) or not ctx.output_tensor(slot).has_values:
        return False
    ctx.random = True
    ctx.node("Identity", [ctx.recorded(slot)], [ctx.output(slot)])
    return True


@register(
    "aten::bernoulli_.float",
    "aten::bernoulli.p",
    "aten::bernoulli_.Tensor",
    "aten::bernoulli.default",
    "aten::bernoulli.Tensor",
)
def bernoulli(ctx: OpContext) -> None:
    ctx.exact = True
    if _replay_recorded(ctx):
        return
    dtype = ctx.out_dtype()
    if ctx.op.name == "aten::bernoulli.default":
        probs = ctx.input(0)
    elif ctx.has_input(1):
        probs = ctx.op1("Expand", ctx.input(1), ctx.const(list(ctx.out_shape())))
    else:
        probs = ctx.op1(
            "Expand", ctx.const(float(ctx.attr("p", 0.5)), dtype), ctx.const(list(ctx.out_shape()))
        )
    ctx.node("Bernoulli", [probs], [ctx.output()], dtype=onnx_type(dtype))


@register(
    "aten::rand.default",
    "aten::rand.generator",
    "aten::randn.default",
    "aten::randn.generator",
    "aten::rand_like.default",
    "aten::randn_like.default",
    "aten::uniform_.default",
    "aten::normal_.default",
)
def rand(ctx: OpContext) -> None:
    ctx.exact = True
    if _replay_recorded(ctx):
        return
    dtype = ctx.out_dtype()
    shape = list(ctx.out_shape())
    if "randn" in ctx.op.name or "normal" in ctx.op.name:
        ctx.node(
            "RandomNormal",
            [],
            [ctx.output()],
            shape=shape,
            dtype=onnx_type(dtype),
            mean=float(ctx.attr("mean", 0.0)),
            scale=float(ctx.attr("std", 1.0)),
        )
    else:
        ctx.node(
            "RandomUniform",
            [],
            [ctx.output()],
            shape=shape,
            dtype=onnx_type(dtype),
            low=float(ctx.attr("from", 0.0)),
            high=float(ctx.attr("to", 1.0)),
        )


@register(
    "aten::randint.default",
    "aten::randint.generator",
    "aten::randint.low",
    "aten::randint.low_generator",
    "aten::random_.from",
    "aten::random_.to",
    "aten::randperm.default",
    "aten::randperm.generator",
)
def randint(ctx: OpContext) -> None:
    ctx.exact = True
    if _replay_recorded(ctx):
        return
    if "randperm" in ctx.op.name:
        raise Unsupported("randperm without its recorded values")
    draw = ctx.fresh("uniform")
    ctx.node(
        "RandomUniform",
        [],
        [draw],
        shape=list(ctx.out_shape()),
        dtype=onnx_type(DType.FLOAT64),
        low=float(ctx.attr("low", 0)),
        high=float(ctx.attr("high")),
    )
    ctx.node("Cast", [ctx.op1("Floor", draw)], [ctx.output()], to=onnx_type(ctx.out_dtype()))


@register("aten::native_dropout.default")
def native_dropout(ctx: OpContext) -> None:
    """``(input * mask * 1/(1-p), mask)``; the mask is read from the record."""
    dtype = ctx.out_dtype()
    p = float(ctx.attr("p"))
    train = ctx.attr("train", True)
    if not train or p == 0:
        ctx.node("Identity", [ctx.input(0)], [ctx.output(0)])
        if ctx.has_output(1):
            _fill(ctx, True, slot=1)
        return
    if not _replay_recorded(ctx, slot=1):
        raise Unsupported("dropout without its recorded mask")
    masked = ctx.op1("Mul", ctx.input(0), ctx.cast(ctx.output(1), DType.BOOL, dtype))
    scale = 0.0 if p == 1 else 1.0 / (1.0 - p)
    ctx.node("Mul", [masked, ctx.const(scale, dtype)], [ctx.output(0)])


# -- plausibility of recorded draws --------------------------------------------------------------
@plausible(
    "aten::bernoulli_.float",
    "aten::bernoulli.p",
    "aten::bernoulli_.Tensor",
    "aten::bernoulli.default",
    "aten::bernoulli.Tensor",
    "aten::native_dropout.default",
)
def bernoulli_draw(a: RefArgs, outs: Mapping[int, np.ndarray]) -> str | None:
    """Draws are 0 or 1; with a scalar probability their mean is within 6 sigma of it."""
    slot = 1 if a.name == "aten::native_dropout.default" else 0
    draw = outs.get(slot)
    if draw is None:
        return None
    x = np.asarray(draw, dtype=np.float64)
    if not np.all((x == 0) | (x == 1)):
        return "draws other than 0 and 1"
    p = a.attr("p", 0.5) if a.name != "aten::bernoulli.default" else None
    if a.name == "aten::native_dropout.default" and p is not None:
        p = 1.0 - float(p)  # the mask keeps with probability 1 - p
    if isinstance(p, (int, float)) and x.size >= 100:
        sigma = math.sqrt(max(p * (1 - p), 1e-12) / x.size)
        if abs(x.mean() - p) > 6 * sigma + 1e-9:
            return f"mean {x.mean():.4f} is more than 6 sigma from p={p}"
    return None


@plausible(
    "aten::randint.default",
    "aten::randint.generator",
    "aten::randint.low",
    "aten::randint.low_generator",
)
def randint_draw(a: RefArgs, outs: Mapping[int, np.ndarray]) -> str | None:
    draw = outs.get(0)
    if draw is None or draw.size == 0:
        return None
    low, high = a.attr("low", 0), a.attr("high")
    if draw.min() < low or (high is not None and draw.max() >= high):
        return f"draws outside [{low}, {high})"
    return None


@plausible(
    "aten::rand.default", "aten::rand.generator", "aten::rand_like.default", "aten::uniform_.default"
)
def uniform_draw(a: RefArgs, outs: Mapping[int, np.ndarray]) -> str | None:
    draw = outs.get(0)
    if draw is None or draw.size == 0:
        return None
    low, high = a.attr("from", 0.0), a.attr("to", 1.0)
    x = np.asarray(draw, dtype=np.float64)
    if x.min() < low or x.max() > high:
        return f"draws outside [{low}, {high}]"
    return None
