"""Elementwise and activation ops."""

from __future__ import annotations

from replayer.ops import Mapper, OpContext, Unsupported, register


def _unary(onnx_op: str) -> Mapper:
    def mapper(ctx: OpContext) -> None:
        ctx.node(onnx_op, [ctx.input(0)], [ctx.output()])
    return mapper


for _aten, _onnx in {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "exp": "Exp",
                     "log": "Log", "neg": "Neg", "sqrt": "Sqrt", "rsqrt": None, "abs": "Abs",
                     "sin": "Sin", "cos": "Cos"}.items():
    if _onnx is not None:
        register(f"aten::{_aten}.default")(_unary(_onnx))


@register("aten::rsqrt.default")
def rsqrt(ctx: OpContext) -> None:
    root = ctx.fresh("sqrt")
    ctx.node("Sqrt", [ctx.input(0)], [root])
    ctx.node("Reciprocal", [root], [ctx.output()])


def _binary(onnx_op: str, alpha_ok: bool) -> Mapper:
    def mapper(ctx: OpContext) -> None:
        alpha = ctx.attr("alpha", 1)
        if alpha != 1 and not alpha_ok:
            raise Unsupported("alpha")
        if not ctx.has_input(1):
            raise Unsupported("scalar operand")
        ctx.require_same_dtype(0, 1)
        other = ctx.input(1)
        if alpha != 1:
            scaled = ctx.fresh("alpha")
            ctx.node("Mul", [other, ctx.const(alpha, _np_dtype(ctx))], [scaled])
            other = scaled
        ctx.node(onnx_op, [ctx.input(0), other], [ctx.output()])
    return mapper


def _np_dtype(ctx: OpContext) -> object:
    from tracefmt.dtypes import DTYPE_INFO

    return DTYPE_INFO[ctx.output_tensor().dtype].logical


for _aten, (_onnx, _alpha) in {"add": ("Add", True), "sub": ("Sub", True), "mul": ("Mul", False),
                               "div": ("Div", False)}.items():
    register(f"aten::{_aten}.Tensor")(_binary(_onnx, _alpha))
