"""Reductions: sum, mean, max/min (with indices), var/std, norms, logsumexp, all/any."""

from __future__ import annotations

import math

from replayer.export.ops import Mapper, OpContext, Unsupported, register
from replayer.export.ops.opcontext import is_float
from tracefmt.dtypes import DType


def _axes(ctx: OpContext, key: str = "dim") -> list[int]:
    """The reduced axes, normalized (all axes when ``dim`` is absent or empty)."""
    rank = len(ctx.in_shape(0))
    dim = ctx.attr(key)
    if dim is None or dim == []:
        axes = list(range(rank))
    else:
        dims = dim if isinstance(dim, list) else [dim]
        axes = sorted({int(d) + rank if int(d) < 0 else int(d) for d in dims})
    shape = ctx.in_shape(0)
    ctx.reduction = max(1, math.prod(shape[a] for a in axes)) if rank else 1
    return axes


def _reduce(onnx_op: str, exact: bool = False) -> Mapper:
    def mapper(ctx: OpContext) -> None:
        ctx.exact = exact
        dtype = ctx.out_dtype()
        axes = _axes(ctx)
        x = ctx.cast(ctx.input(0), ctx.in_dtype(0), dtype)
        keep = int(bool(ctx.attr("keepdim", False)))
        if not ctx.in_shape(0):
            ctx.node("Identity", [x], [ctx.output()])
            return
        ctx.node(onnx_op, [x, ctx.const(axes)], [ctx.output()], keepdims=keep)
        if not exact and not is_float(dtype):
            ctx.exact = True

    return mapper


register("aten::sum.dim_IntList", "aten::sum.default")(_reduce("ReduceSum"))
register("aten::mean.dim", "aten::mean.default")(_reduce("ReduceMean"))
register("aten::amax.default", "aten::max.default")(_reduce("ReduceMax", exact=True))
register("aten::amin.default", "aten::min.default")(_reduce("ReduceMin", exact=True))
register("aten::prod.default", "aten::prod.dim_int")(_reduce("ReduceProd"))
register("aten::logsumexp.default")(_reduce("ReduceLogSumExp"))


@register("aten::max.dim", "aten::min.dim", "aten::argmax.default", "aten::argmin.default")
def max_dim(ctx: OpContext) -> None:
    """Values and indices along one dim (torch picks the first extremum, as ONNX does)."""
    ctx.exact = True
    rank = len(ctx.in_shape(0))
    dim = ctx.attr("dim")
    keep = int(bool(ctx.attr("keepdim", False)))
    is_max = "max" in ctx.op.name
    x = ctx.input(0)
    if dim is None:
        x, dim, keep = ctx.op1("Reshape", x, ctx.const([-1])), 0, 0
    axis = int(dim) + rank if int(dim) < 0 else int(dim)
    if ctx.op.name.startswith("aten::arg"):
        ctx.node(
            "ArgMax" if is_max else "ArgMin",
            [x],
            [ctx.output(0)],
            axis=axis,
            keepdims=keep,
            select_last_index=0,
        )
        return
    ctx.node(
        "ReduceMax" if is_max else "ReduceMin", [x, ctx.const([axis])], [ctx.output(0)], keepdims=keep
    )
    if ctx.has_output(1):
        ctx.node(
            "ArgMax" if is_max else "ArgMin",
            [x],
            [ctx.output(1)],
            axis=axis,
            keepdims=keep,
            select_last_index=0,
        )


@register("aten::var.correction", "aten::std.correction", "aten::var.dim", "aten::std.dim")
def var(ctx: OpContext) -> None:
    dtype = ctx.out_dtype()
    axes = _axes(ctx)
    correction = ctx.attr("correction", 0 if ctx.attr("unbiased") is False else 1)
    keep = int(bool(ctx.attr("keepdim", False)))
    x = ctx.input(0)
    mean = ctx.op1("ReduceMean", x, ctx.const(axes), keepdims=1)
    centered = ctx.op1("Sub", x, mean)
    total = ctx.op1("ReduceSum", ctx.op1("Mul", centered, centered), ctx.const(axes), keepdims=keep)
    n = ctx.reduction
    scaled = ctx.op1("Div", total, ctx.const(max(n - float(correction), 0.0), dtype))
    if "std" in ctx.op.name:
        ctx.node("Sqrt", [scaled], [ctx.output()])
    else:
        ctx.node("Identity", [scaled], [ctx.output()])


@register("aten::linalg_vector_norm.default", "aten::norm.ScalarOpt_dim")
def vector_norm(ctx: OpContext) -> None:
    order = ctx.attr("ord", ctx.attr("p", 2))
    dtype = ctx.out_dtype()
    axes = _axes(ctx)
    keep = int(bool(ctx.attr("keepdim", False)))
    x = ctx.cast(ctx.input(0), ctx.in_dtype(0), dtype)
    op = (
        {1.0: "ReduceL1", 2.0: "ReduceL2"}.get(float(order)) if isinstance(order, (int, float)) else None
    )
    if op is None:
        if order in (math.inf, float("inf")):
            ctx.node("ReduceMax", [ctx.op1("Abs", x), ctx.const(axes)], [ctx.output()], keepdims=keep)
            return
        raise Unsupported(f"norm order {order!r}")
    ctx.node(op, [x, ctx.const(axes)], [ctx.output()], keepdims=keep)


@register(
    "aten::all.default",
    "aten::any.default",
    "aten::all.dim",
    "aten::any.dim",
    "aten::all.dims",
    "aten::any.dims",
)
def all_any(ctx: OpContext) -> None:
    ctx.exact = True
    axes = _axes(ctx)
    keep = int(bool(ctx.attr("keepdim", False)))
    as_int = ctx.cast(ctx.input(0), ctx.in_dtype(0), DType.BOOL)
    as_int = ctx.cast(as_int, DType.BOOL, DType.INT32)
    op = "ReduceMin" if "::all" in ctx.op.name else "ReduceMax"
    reduced = ctx.op1(op, as_int, ctx.const(axes), keepdims=keep)
    ctx.node("Cast", [reduced], [ctx.output()], to=9)  # BOOL
