"""Matrix products."""

from __future__ import annotations

from replayer.ops import OpContext, Unsupported, register


@register("aten::mm.default", "aten::bmm.default", "aten::matmul.default")
def matmul(ctx: OpContext) -> None:
    ctx.require_same_dtype(0, 1)
    ctx.node("MatMul", [ctx.input(0), ctx.input(1)], [ctx.output()])


@register("aten::addmm.default")
def addmm(ctx: OpContext) -> None:
    beta, alpha = ctx.attr("beta", 1), ctx.attr("alpha", 1)
    ctx.require_same_dtype(0, 1, 2)
    if ctx.input_tensor(0).meta.shape and len(ctx.input_tensor(0).meta.shape) > 2:
        raise Unsupported("bias rank")
    ctx.node("Gemm", [ctx.input(1), ctx.input(2), ctx.input(0)], [ctx.output()],
             alpha=float(alpha), beta=float(beta))
