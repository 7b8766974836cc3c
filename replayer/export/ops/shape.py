"""Views and data movement: reshape, transpose, expand, slice, split, cat, stack, copies.

View ops set ``ctx.layout``: the check runs their nodes on storage addresses and compares with
the recorded shape, strides and offset of the output (views have no values of their own).
"""

from __future__ import annotations

import math

from replayer.export.ops import OpContext, Unsupported, register
from tracefmt.dtypes import DType

_INT64_MAX = 2**63 - 1


def _dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


@register(
    "aten::view.default",
    "aten::_reshape_alias.default",
    "aten::reshape.default",
    "aten::_unsafe_view.default",
    "aten::unflatten.int",
    "aten::flatten.using_ints",
    "aten::view_as.default",
    "aten::reshape_as.default",
)
def reshape(ctx: OpContext) -> None:
    ctx.exact = True
    ctx.layout = ctx.op.name in ("aten::view.default", "aten::_reshape_alias.default")
    ctx.node("Reshape", [ctx.input(0), ctx.const(list(ctx.out_shape()))], [ctx.output()])


@register(
    "aten::t.default",
    "aten::transpose.int",
    "aten::permute.default",
    "aten::numpy_T.default",
    "aten::swapaxes.default",
    "aten::mT.default",
)
def transpose(ctx: OpContext) -> None:
    ctx.exact = ctx.layout = True
    rank = len(ctx.in_shape(0))
    perm = list(range(rank))
    name = ctx.op.name
    if name == "aten::permute.default":
        perm = [_dim(d, rank) for d in ctx.attr("dims")]
    elif name in ("aten::transpose.int", "aten::swapaxes.default"):
        keys = ("dim0", "dim1") if name.endswith(".int") else ("axis0", "axis1")
        a, b = (_dim(int(ctx.attr(k)), rank) for k in keys)
        perm[a], perm[b] = perm[b], perm[a]
    elif name == "aten::mT.default":
        perm[-2], perm[-1] = perm[-1], perm[-2]
    elif rank >= 2:
        perm = perm[::-1]
    if perm == list(range(rank)):
        ctx.node("Identity", [ctx.input(0)], [ctx.output()])
    else:
        ctx.node("Transpose", [ctx.input(0)], [ctx.output()], perm=perm)


@register("aten::expand.default", "aten::expand_as.default", "aten::broadcast_to.default")
def expand(ctx: OpContext) -> None:
    ctx.exact = ctx.layout = True
    ctx.node("Expand", [ctx.input(0), ctx.const(list(ctx.out_shape()))], [ctx.output()])


@register("aten::unsqueeze.default", "aten::unsqueeze_.default")
def unsqueeze(ctx: OpContext) -> None:
    ctx.exact = ctx.layout = ctx.op.name == "aten::unsqueeze.default"
    rank = len(ctx.in_shape(0)) + 1
    ctx.node("Unsqueeze", [ctx.input(0), ctx.const([_dim(int(ctx.attr("dim")), rank)])], [ctx.output()])


@register("aten::squeeze.default", "aten::squeeze.dim", "aten::squeeze.dims")
def squeeze(ctx: OpContext) -> None:
    ctx.exact = ctx.layout = True
    shape = ctx.in_shape(0)
    rank = len(shape)
    if ctx.op.name == "aten::squeeze.default":
        dims = list(range(rank))
    elif ctx.op.name == "aten::squeeze.dim":
        dims = [int(ctx.attr("dim"))]
    else:
        dims = list(ctx.attr("dim"))
    axes = sorted({_dim(d, rank) for d in dims if rank and shape[_dim(d, rank)] == 1})
    if not axes:
        ctx.node("Identity", [ctx.input(0)], [ctx.output()])
    else:
        ctx.node("Squeeze", [ctx.input(0), ctx.const(axes)], [ctx.output()])


def _slice(ctx: OpContext, x: str, dim: int, start: int, end: int, step: int, out: str) -> None:
    ctx.node(
        "Slice", [x, ctx.const([start]), ctx.const([end]), ctx.const([dim]), ctx.const([step])], [out]
    )


@register("aten::slice.Tensor")
def slice_(ctx: OpContext) -> None:
    ctx.exact = ctx.layout = True
    shape = ctx.in_shape(0)
    dim = _dim(int(ctx.attr("dim", 0)), len(shape))
    start = ctx.attr("start", 0)
    end = ctx.attr("end", _INT64_MAX)
    size = shape[dim]
    start = max(min(start + size if start < 0 else start, size), 0)
    end = max(min(end + size if end < 0 else end, size), 0)
    _slice(ctx, ctx.input(0), dim, start, end, int(ctx.attr("step", 1)), ctx.output())


@register("aten::narrow.default")
def narrow(ctx: OpContext) -> None:
    ctx.exact = ctx.layout = True
    shape = ctx.in_shape(0)
    dim = _dim(int(ctx.attr("dim")), len(shape))
    start = int(ctx.attr("start"))
    start = start + shape[dim] if start < 0 else start
    _slice(ctx, ctx.input(0), dim, start, start + int(ctx.attr("length")), 1, ctx.output())


@register("aten::select.int")
def select(ctx: OpContext) -> None:
    ctx.exact = ctx.layout = True
    shape = ctx.in_shape(0)
    dim = _dim(int(ctx.attr("dim")), len(shape))
    index = int(ctx.attr("index"))
    index = index + shape[dim] if index < 0 else index
    ctx.node("Gather", [ctx.input(0), ctx.const(index)], [ctx.output()], axis=dim)


@register(
    "aten::split.Tensor", "aten::split_with_sizes.default", "aten::unbind.int", "aten::chunk.default"
)
def split(ctx: OpContext) -> None:
    ctx.exact = ctx.layout = True
    shape = ctx.in_shape(0)
    dim = _dim(int(ctx.attr("dim", 0)), len(shape))
    size = shape[dim]
    name = ctx.op.name
    if name == "aten::split_with_sizes.default":
        sizes = [int(s) for s in ctx.attr("split_sizes")]
    elif name == "aten::unbind.int":
        sizes = [1] * size
    else:
        if name == "aten::chunk.default":
            step = math.ceil(size / int(ctx.attr("chunks")))
        else:
            step = int(ctx.attr("split_size"))
        sizes = [min(step, size - s) for s in range(0, size, step)] if step else [size]
    if not sizes:
        raise Unsupported("empty split")
    if name == "aten::unbind.int":
        parts = [ctx.fresh("part") for _ in sizes]
        ctx.node("Split", [ctx.input(0), ctx.const(sizes)], parts, axis=dim)
        for i, part in enumerate(parts):
            ctx.node("Squeeze", [part, ctx.const([dim])], [ctx.output(i)])
        return
    ctx.node(
        "Split", [ctx.input(0), ctx.const(sizes)], [ctx.output(i) for i in range(len(sizes))], axis=dim
    )


@register("aten::cat.default", "aten::concat.default", "aten::concatenate.default")
def cat(ctx: OpContext) -> None:
    ctx.exact = True
    dtype = ctx.out_dtype()
    rank = len(ctx.out_shape())
    parts = [
        ctx.cast(n, t.dtype, dtype)
        for n, t in zip(ctx.input_list(0), ctx.input_list_tensors(0), strict=True)
        if t.shape != (0,) or rank == 1
    ]  # torch skips legacy empty 1-D inputs
    if not parts:
        raise Unsupported("cat of nothing")
    ctx.node("Concat", parts, [ctx.output()], axis=_dim(int(ctx.attr("dim", 0)), rank))


@register("aten::stack.default")
def stack(ctx: OpContext) -> None:
    ctx.exact = True
    dtype = ctx.out_dtype()
    rank = len(ctx.out_shape())
    dim = _dim(int(ctx.attr("dim", 0)), rank)
    axes = ctx.const([dim])
    parts = [
        ctx.op1("Unsqueeze", ctx.cast(n, t.dtype, dtype), axes)
        for n, t in zip(ctx.input_list(0), ctx.input_list_tensors(0), strict=True)
    ]
    ctx.node("Concat", parts, [ctx.output()], axis=dim)


@register(
    "aten::clone.default",
    "aten::contiguous.default",
    "aten::detach.default",
    "aten::alias.default",
    "aten::lift_fresh.default",
    "aten::detach_.default",
    "aten::lift_fresh_copy.default",
    "aten::_to_copy.default",
    "aten::to.dtype",
    "aten::_conj.default",
    "aten::resolve_conj.default",
    "aten::resolve_neg.default",
)
def identity(ctx: OpContext) -> None:
    ctx.exact = True
    ctx.layout = ctx.op.name in (
        "aten::detach.default",
        "aten::alias.default",
        "aten::lift_fresh.default",
        "aten::_conj.default",
    )
    source, target = ctx.in_dtype(0), ctx.out_dtype()
    if source != target:
        ctx.node("Cast", [ctx.input(0)], [ctx.output()], to=_onnx(target))
    else:
        ctx.node("Identity", [ctx.input(0)], [ctx.output()])


def _onnx(dtype: DType) -> int:
    from replayer.export.onnx_types import onnx_type

    return onnx_type(dtype)


@register("aten::copy_.default", "aten::copy.default")
def copy_(ctx: OpContext) -> None:
    ctx.exact = True
    dtype = ctx.out_dtype()
    src = ctx.cast(ctx.input(1), ctx.in_dtype(1), dtype)
    ctx.node("Expand", [src, ctx.const(list(ctx.out_shape()))], [ctx.output()])


@register("aten::index_select.default")
def index_select(ctx: OpContext) -> None:
    ctx.exact = True
    rank = len(ctx.in_shape(0))
    ctx.node(
        "Gather", [ctx.input(0), ctx.input(2)], [ctx.output()], axis=_dim(int(ctx.attr("dim")), rank)
    )


@register("aten::gather.default")
def gather(ctx: OpContext) -> None:
    ctx.exact = True
    rank = len(ctx.in_shape(0))
    ctx.node(
        "GatherElements",
        [ctx.input(0), ctx.input(2)],
        [ctx.output()],
        axis=_dim(int(ctx.attr("dim")), rank),
    )


@register("aten::index.Tensor")
def index(ctx: OpContext) -> None:
    """``x[idx]`` with one index tensor on the first dimension."""
    ctx.exact = True
    items = ctx.input_list_tensors(1)
    if len(items) != 1 or not ctx.has_input(1, 0) or items[0].dtype is DType.BOOL:
        raise Unsupported("advanced indexing beyond one integer index on dim 0")
    ctx.node("Gather", [ctx.input(0), ctx.input(1, 0)], [ctx.output()], axis=0)


@register("aten::constant_pad_nd.default")
def constant_pad(ctx: OpContext) -> None:
    ctx.exact = True
    pad = [int(p) for p in ctx.attr("pad")]
    rank = len(ctx.in_shape(0))
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(pad) // 2):  # torch lists (begin, end) pairs from the last dim backwards
        begins[rank - 1 - i], ends[rank - 1 - i] = pad[2 * i], pad[2 * i + 1]
    value = ctx.const(ctx.attr("value", 0), ctx.out_dtype())
    ctx.node("Pad", [ctx.input(0), ctx.const(begins + ends), value], [ctx.output()], mode="constant")


@register("aten::repeat.default")
def repeat(ctx: OpContext) -> None:
    ctx.exact = True
    repeats = [int(r) for r in ctx.attr("repeats")]
    x = ctx.input(0)
    extra = len(repeats) - len(ctx.in_shape(0))
    if extra:
        x = ctx.op1("Reshape", x, ctx.const([1] * extra + list(ctx.in_shape(0))))
    ctx.node("Tile", [x, ctx.const(repeats)], [ctx.output()])
