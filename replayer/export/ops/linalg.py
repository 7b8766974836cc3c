"""Matrix products."""

from __future__ import annotations

from replayer.export.ops import OpContext, Unsupported, register


def _same_dtype(ctx: OpContext, *args: int) -> None:
    """Standard ONNX products take operands of one type; torch refuses mixed ones too."""
    if len({ctx.in_dtype(a) for a in args}) > 1:
        raise Unsupported("mixed operand dtypes")


@register(
    "aten::mm.default",
    "aten::bmm.default",
    "aten::matmul.default",
    "aten::mv.default",
    "aten::dot.default",
)
def matmul(ctx: OpContext) -> None:
    _same_dtype(ctx, 0, 1)
    ctx.reduction = ctx.in_shape(1)[0] if len(ctx.in_shape(1)) == 1 else ctx.in_shape(1)[-2]
    ctx.node("MatMul", [ctx.input(0), ctx.input(1)], [ctx.output()])


@register("aten::addmm.default", "aten::addmm_.default")
def addmm(ctx: OpContext) -> None:
    """``beta * input + alpha * (mat1 @ mat2)`` as ``Gemm``."""
    _same_dtype(ctx, 0, 1, 2)
    if len(ctx.in_shape(0)) > 2:
        raise Unsupported("bias rank")
    ctx.reduction = ctx.in_shape(2)[0]
    ctx.node(
        "Gemm",
        [ctx.input(1), ctx.input(2), ctx.input(0)],
        [ctx.output()],
        alpha=float(ctx.attr("alpha", 1)),
        beta=float(ctx.attr("beta", 1)),
    )


@register("aten::baddbmm.default", "aten::addbmm.default", "aten::addmv.default")
def baddbmm(ctx: OpContext) -> None:
    _same_dtype(ctx, 0, 1, 2)
    dtype = ctx.out_dtype()
    ctx.reduction = ctx.in_shape(2)[-2] if len(ctx.in_shape(2)) > 1 else ctx.in_shape(2)[0]
    product = ctx.op1("MatMul", ctx.input(1), ctx.input(2))
    if ctx.op.name == "aten::addbmm.default":
        product = ctx.op1("ReduceSum", product, ctx.const([0]), keepdims=0)
        ctx.reduction *= ctx.in_shape(1)[0]
    alpha, beta = ctx.attr("alpha", 1), ctx.attr("beta", 1)
    if alpha != 1:
        product = ctx.op1("Mul", product, ctx.const(alpha, dtype))
    bias = ctx.input(0) if beta == 1 else ctx.op1("Mul", ctx.input(0), ctx.const(beta, dtype))
    ctx.node("Add", [bias, product] if beta != 0 else [product, ctx.const(0, dtype)], [ctx.output()])


@register("aten::linear.default")
def linear(ctx: OpContext) -> None:
    _same_dtype(ctx, 0, 1)
    ctx.reduction = ctx.in_shape(1)[-1]
    weight_t = ctx.op1("Transpose", ctx.input(1), perm=[1, 0])
    if not ctx.has_input(2):
        ctx.node("MatMul", [ctx.input(0), weight_t], [ctx.output()])
    else:
        ctx.node("Add", [ctx.op1("MatMul", ctx.input(0), weight_t), ctx.input(2)], [ctx.output()])
