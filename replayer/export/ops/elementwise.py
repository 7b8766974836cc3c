"""Elementwise arithmetic, comparisons and activations (in-place forms map to their functional
form: the trace gives the written tensor a new version, so the graph stays single-assignment)."""

from __future__ import annotations

from typing import Any

from replayer.export.ops import Mapper, OpContext, Unsupported, register
from replayer.export.ops.opcontext import is_float, promote
from tracefmt.dtypes import DType


def _names(packet: str, overloads: tuple[str, ...], inplace: bool = True) -> list[str]:
    out = [f"aten::{packet}.{o}" for o in overloads]
    if inplace:
        out += [f"aten::{packet}_.{o}" for o in overloads]
    return out


# -- unary ---------------------------------------------------------------------------------------
def _unary(onnx_op: str, exact: bool = False, **attrs: Any) -> Mapper:
    def mapper(ctx: OpContext) -> None:
        ctx.exact = exact
        dtype = ctx.out_dtype()
        x = ctx.cast(ctx.input(0), ctx.in_dtype(0), dtype)
        ctx.node(onnx_op, [x], [ctx.output()], **attrs)

    return mapper


_UNARY = {
    "relu": ("Relu", True),
    "tanh": ("Tanh", False),
    "sigmoid": ("Sigmoid", False),
    "exp": ("Exp", False),
    "log": ("Log", False),
    "neg": ("Neg", True),
    "sqrt": ("Sqrt", False),
    "abs": ("Abs", True),
    "sin": ("Sin", False),
    "cos": ("Cos", False),
    "reciprocal": ("Reciprocal", False),
    "erf": ("Erf", False),
    "floor": ("Floor", True),
    "ceil": ("Ceil", True),
    "round": ("Round", True),
    "sign": ("Sign", True),
    "softplus": ("Softplus", False),
    "hardswish": ("HardSwish", False),
}
for _aten, (_onnx, _exact) in _UNARY.items():
    register(*_names(_aten, ("default",)))(_unary(_onnx, _exact))


@register("aten::logical_not.default", "aten::bitwise_not.default", "aten::isnan.default")
def predicate(ctx: OpContext) -> None:
    """Ops with a bool result (their in-place forms keep self's dtype and are not mapped)."""
    ctx.exact = True
    if ctx.out_dtype() is not DType.BOOL:
        raise Unsupported("a predicate with a non-bool result")
    if ctx.op.name == "aten::isnan.default":
        ctx.node("IsNaN", [ctx.input(0)], [ctx.output()])
        return
    if ctx.in_dtype(0) is not DType.BOOL and ctx.op.name == "aten::bitwise_not.default":
        raise Unsupported("bitwise not of integers")
    x = (
        ctx.op1("Not", ctx.cast(ctx.input(0), ctx.in_dtype(0), DType.BOOL))
        if ctx.in_dtype(0) is DType.BOOL
        else ctx.op1("Equal", ctx.input(0), ctx.const(0, ctx.in_dtype(0)))
    )
    ctx.node("Identity", [x], [ctx.output()])


register("aten::hardsigmoid.default", "aten::hardsigmoid_.default")(
    _unary("HardSigmoid", alpha=1 / 6, beta=0.5)
)


@register(*_names("rsqrt", ("default",)))
def rsqrt(ctx: OpContext) -> None:
    root = ctx.op1("Sqrt", ctx.input(0))
    ctx.node("Reciprocal", [root], [ctx.output()])


@register(*_names("silu", ("default",)))
def silu(ctx: OpContext) -> None:
    x = ctx.input(0)
    ctx.node("Mul", [x, ctx.op1("Sigmoid", x)], [ctx.output()])


@register(*_names("gelu", ("default",)))
def gelu(ctx: OpContext) -> None:
    ctx.node("Gelu", [ctx.input(0)], [ctx.output()], approximate=str(ctx.attr("approximate", "none")))


@register(*_names("leaky_relu", ("default",)))
def leaky_relu(ctx: OpContext) -> None:
    ctx.node("LeakyRelu", [ctx.input(0)], [ctx.output()], alpha=float(ctx.attr("negative_slope", 0.01)))


@register(*_names("elu", ("default",)))
def elu(ctx: OpContext) -> None:
    if ctx.attr("scale", 1) != 1 or ctx.attr("input_scale", 1) != 1:
        raise Unsupported("elu scale")
    ctx.node("Elu", [ctx.input(0)], [ctx.output()], alpha=float(ctx.attr("alpha", 1.0)))


@register(
    *_names("hardtanh", ("default",)),
    *_names("clamp", ("default", "Tensor")),
    *_names("clamp_min", ("default", "Tensor")),
    *_names("clamp_max", ("default", "Tensor")),
)
def clamp(ctx: OpContext) -> None:
    ctx.exact = True
    dtype = ctx.out_dtype()
    packet = ctx.op.name.split("::")[1].split(".")[0].rstrip("_")
    if packet == "hardtanh":
        lo: str = ctx.const(ctx.attr("min_val", -1.0), dtype)
        hi: str = ctx.const(ctx.attr("max_val", 1.0), dtype)
    elif packet == "clamp_min":
        lo, hi = ctx.operand(1, "min", dtype), ""
    elif packet == "clamp_max":
        lo, hi = "", ctx.operand(1, "max", dtype)
    else:
        lo = ctx.operand(1, "min", dtype) if ctx.has_input(1) or ctx.has_attr("min") else ""
        hi = ctx.operand(2, "max", dtype) if ctx.has_input(2) or ctx.has_attr("max") else ""
    x = ctx.cast(ctx.input(0), ctx.in_dtype(0), dtype)
    if (lo and ctx.has_input(1)) or (hi and ctx.has_input(2)):  # tensor bounds: elementwise
        y = ctx.op1("Max", x, lo) if lo else x
        if hi:
            ctx.node("Min", [y, hi], [ctx.output()])
        else:
            ctx.node("Identity", [y], [ctx.output()])
        return
    ctx.node("Clip", [x, lo, hi] if hi else [x, lo], [ctx.output()])


# -- binary --------------------------------------------------------------------------------------
def _binary(onnx_op: str) -> Mapper:
    def mapper(ctx: OpContext) -> None:
        dtype = ctx.out_dtype()
        if dtype is DType.BOOL:
            raise Unsupported("arithmetic on bool")
        ctx.exact = not is_float(dtype)
        a = ctx.operand(0, "self", dtype)
        b = ctx.operand(1, "other", dtype)
        alpha = ctx.attr("alpha", 1)
        if alpha != 1:
            b = ctx.op1("Mul", b, ctx.const(alpha, dtype))
        ctx.node(onnx_op, [a, b], [ctx.output()])

    return mapper


for _aten, _onnx in {
    "add": "Add",
    "sub": "Sub",
    "mul": "Mul",
    "maximum": "Max",
    "minimum": "Min",
}.items():
    register(*_names(_aten, ("Tensor", "Scalar")))(_binary(_onnx))
register(*_names("div", ("Tensor", "Scalar")))(_binary("Div"))


@register("aten::rsub.Tensor", "aten::rsub.Scalar")
def rsub(ctx: OpContext) -> None:
    dtype = ctx.out_dtype()
    a = ctx.operand(0, "self", dtype)
    b = ctx.operand(1, "other", dtype)
    alpha = ctx.attr("alpha", 1)
    if alpha != 1:
        a = ctx.op1("Mul", a, ctx.const(alpha, dtype))
    ctx.node("Sub", [b, a], [ctx.output()])


@register(*_names("div", ("Tensor_mode", "Scalar_mode")))
def div_mode(ctx: OpContext) -> None:
    mode = ctx.attr("rounding_mode")
    dtype = ctx.out_dtype()
    a, b = ctx.operand(0, "self", dtype), ctx.operand(1, "other", dtype)
    if mode is None:
        ctx.node("Div", [a, b], [ctx.output()])
    elif not is_float(dtype):
        raise Unsupported("integer division with a rounding mode")
    elif mode == "floor":
        ctx.node("Floor", [ctx.op1("Div", a, b)], [ctx.output()])
    elif mode == "trunc":
        q = ctx.op1("Div", a, b)
        neg = ctx.op1("Less", q, ctx.const(0, dtype))
        ctx.node("Where", [neg, ctx.op1("Ceil", q), ctx.op1("Floor", q)], [ctx.output()])
    else:
        raise Unsupported(f"rounding mode {mode!r}")


@register(*_names("pow", ("Tensor_Scalar", "Tensor_Tensor")), "aten::pow.Scalar")
def pow_(ctx: OpContext) -> None:
    dtype = ctx.out_dtype()
    base = ctx.operand(0, "self", dtype)
    ctx.node("Pow", [base, ctx.operand(1, "exponent", dtype)], [ctx.output()])


_COMPARE = {
    "eq": ("Equal", False),
    "ne": ("Equal", True),
    "lt": ("Less", False),
    "le": ("LessOrEqual", False),
    "gt": ("Greater", False),
    "ge": ("GreaterOrEqual", False),
}


def _compare(onnx_op: str, negate: bool) -> Mapper:
    def mapper(ctx: OpContext) -> None:
        ctx.exact = True
        dtypes = [ctx.in_dtype(0)] + ([ctx.in_dtype(1)] if ctx.has_input(1) else [])
        dtype = promote(*dtypes)
        a, b = ctx.operand(0, "self", dtype), ctx.operand(1, "other", dtype)
        if negate:
            ctx.node("Not", [ctx.op1(onnx_op, a, b)], [ctx.output()])
        else:
            ctx.node(onnx_op, [a, b], [ctx.output()])

    return mapper


for _aten, (_onnx, _neg) in _COMPARE.items():  # in-place forms keep self's dtype: not mapped
    register(*_names(_aten, ("Tensor", "Scalar"), inplace=False))(_compare(_onnx, _neg))


@register(
    "aten::logical_and.default",
    "aten::logical_or.default",
    "aten::logical_xor.default",
    "aten::bitwise_and.Tensor",
    "aten::bitwise_or.Tensor",
)
def logical(ctx: OpContext) -> None:
    ctx.exact = True
    if ctx.out_dtype() is not DType.BOOL:
        raise Unsupported("bitwise ops on integers")
    kind = ctx.op.name.split("::")[1].split(".")[0].split("_")[-1]
    op = {"and": "And", "or": "Or", "xor": "Xor"}[kind]
    a = ctx.cast(ctx.input(0), ctx.in_dtype(0), DType.BOOL)
    b = ctx.cast(ctx.input(1), ctx.in_dtype(1), DType.BOOL)
    ctx.node(op, [a, b], [ctx.output()])


# -- selection -----------------------------------------------------------------------------------
@register("aten::where.self", "aten::where.ScalarOther", "aten::where.ScalarSelf", "aten::where.Scalar")
def where(ctx: OpContext) -> None:
    ctx.exact = True
    dtype = ctx.out_dtype()
    cond = ctx.cast(ctx.input(0), ctx.in_dtype(0), DType.BOOL)
    ctx.node(
        "Where", [cond, ctx.operand(1, "self", dtype), ctx.operand(2, "other", dtype)], [ctx.output()]
    )


@register(*_names("masked_fill", ("Scalar", "Tensor")))
def masked_fill(ctx: OpContext) -> None:
    ctx.exact = True
    dtype = ctx.out_dtype()
    mask = ctx.cast(ctx.input(1), ctx.in_dtype(1), DType.BOOL)
    ctx.node("Where", [mask, ctx.operand(2, "value", dtype), ctx.input(0)], [ctx.output()])


# -- fused arithmetic (optimizers) ---------------------------------------------------------------
@register(*_names("lerp", ("Scalar", "Tensor")))
def lerp(ctx: OpContext) -> None:
    """torch's formula: ``self + w * (end - self)`` for ``w < 0.5``, else
    ``end - (end - self) * (1 - w)``."""
    dtype = ctx.out_dtype()
    start, end = ctx.operand(0, "self", dtype), ctx.operand(1, "end", dtype)
    diff = ctx.op1("Sub", end, start)
    if ctx.has_input(2):
        w = ctx.operand(2, "weight", dtype)
        low = ctx.op1("Add", start, ctx.op1("Mul", w, diff))
        high = ctx.op1("Sub", end, ctx.op1("Mul", diff, ctx.op1("Sub", ctx.const(1, dtype), w)))
        small = ctx.op1("Less", ctx.op1("Abs", w), ctx.const(0.5, dtype))
        ctx.node("Where", [small, low, high], [ctx.output()])
        return
    weight = float(ctx.attr("weight"))
    if abs(weight) < 0.5:
        ctx.node("Add", [start, ctx.op1("Mul", ctx.const(weight, dtype), diff)], [ctx.output()])
    else:
        ctx.node("Sub", [end, ctx.op1("Mul", diff, ctx.const(1 - weight, dtype))], [ctx.output()])


def _addc(onnx_op: str) -> Mapper:
    def mapper(ctx: OpContext) -> None:
        """``self + value * t1 (op) t2``, in torch's order of operations."""
        dtype = ctx.out_dtype()
        t1, t2 = ctx.operand(1, "tensor1", dtype), ctx.operand(2, "tensor2", dtype)
        value = ctx.attr("value", 1)
        scaled = t1 if value == 1 else ctx.op1("Mul", ctx.const(value, dtype), t1)
        ctx.node("Add", [ctx.operand(0, "self", dtype), ctx.op1(onnx_op, scaled, t2)], [ctx.output()])

    return mapper


register(*_names("addcmul", ("default",)))(_addc("Mul"))
register(*_names("addcdiv", ("default",)))(_addc("Div"))


@register(*_names("remainder", ("Tensor", "Scalar")), *_names("fmod", ("Tensor", "Scalar")))
def remainder(ctx: OpContext) -> None:
    """torch's ``remainder`` takes the divisor's sign (Python's ``%``), ``fmod`` the dividend's."""
    dtype = ctx.out_dtype()
    a, b = ctx.operand(0, "self", dtype), ctx.operand(1, "other", dtype)
    c_style = "fmod" in ctx.op.name
    if not is_float(dtype):
        ctx.exact = True
        ctx.node("Mod", [a, b], [ctx.output()], fmod=int(c_style))
    elif c_style:
        ctx.node("Mod", [a, b], [ctx.output()], fmod=1)
    else:
        floored = ctx.op1("Floor", ctx.op1("Div", a, b))
        ctx.node("Sub", [a, ctx.op1("Mul", floored, b)], [ctx.output()])


@register(*_names("floor_divide", ("default", "Scalar")))
def floor_divide(ctx: OpContext) -> None:
    dtype = ctx.out_dtype()
    a, b = ctx.operand(0, "self", dtype), ctx.operand(1, "other", dtype)
    if is_float(dtype):
        ctx.node("Floor", [ctx.op1("Div", a, b)], [ctx.output()])
        return
    ctx.exact = True  # (a - a mod b) / b is exact for integers, with the divisor's sign
    ctx.node("Div", [ctx.op1("Sub", a, ctx.op1("Mod", a, b, fmod=0)), b], [ctx.output()])
