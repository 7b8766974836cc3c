"""Neural-network layers: embedding, normalization, softmax, losses, convolution and pooling."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from replayer.export.ops import OpContext, Unsupported, register
from tracefmt.dtypes import DType


def _axis(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


@register("aten::embedding.default")
def embedding(ctx: OpContext) -> None:
    ctx.exact = True
    ctx.node("Gather", [ctx.input(0), ctx.input(1)], [ctx.output()], axis=0)


@register("aten::native_layer_norm.default")
def layer_norm(ctx: OpContext) -> None:
    """``LayerNormalization`` with its mean and inverse-std outputs (torch's shapes match)."""
    dtype = ctx.out_dtype()
    normalized = [int(d) for d in ctx.attr("normalized_shape")]
    ctx.reduction = math.prod(normalized)
    scale = ctx.input(2) if ctx.has_input(2) else ctx.const(np.ones(normalized), dtype)
    inputs = [ctx.input(0), scale] + ([ctx.input(3)] if ctx.has_input(3) else [])
    outputs = [
        ctx.output(0),
        ctx.output(1) if ctx.has_output(1) else "",
        ctx.output(2) if ctx.has_output(2) else "",
    ]
    while outputs[-1] == "":
        outputs.pop()
    ctx.node(
        "LayerNormalization",
        inputs,
        outputs,
        axis=-len(normalized),
        epsilon=float(ctx.attr("eps", 1e-5)),
        stash_type=1,
    )


def _batch_norm(ctx: OpContext, training: bool, momentum: float, eps: float, running: bool) -> None:
    """Shared by the batch-norm overloads.  Training mode normalizes with the batch statistics
    (``training_mode=1``) and returns them as (mean, 1/sqrt(var + eps)); eval mode uses the
    running statistics and returns empty statistics, as torch does on CPU."""
    dtype = ctx.out_dtype()
    shape = ctx.in_shape(0)
    channels = shape[1]
    axes = [0, *range(2, len(shape))]
    ctx.reduction = math.prod(shape) // max(channels, 1)
    weight = ctx.input(1) if ctx.has_input(1) else ctx.const(np.ones(channels), dtype)
    bias = ctx.input(2) if ctx.has_input(2) else ctx.const(np.zeros(channels), dtype)
    # Training mode normalizes with batch statistics and ONNX Runtime updates the running ones
    # *in place* in the buffers it is given: it gets constants, and the running statistics
    # torch returns are computed beside it from the real inputs.
    use_running = running and not training
    mean_in = ctx.input(3) if use_running and ctx.has_input(3) else ctx.const(np.zeros(channels), dtype)
    var_in = ctx.input(4) if use_running and ctx.has_input(4) else ctx.const(np.ones(channels), dtype)
    outputs = [ctx.output(0)] + (
        [ctx.fresh("running_mean"), ctx.fresh("running_var")] if training else []
    )
    ctx.node(
        "BatchNormalization",
        [ctx.input(0), weight, bias, mean_in, var_in],
        outputs,
        epsilon=eps,
        momentum=1.0 - momentum,
        training_mode=int(training),
    )
    if not training:
        for slot in (1, 2):
            if ctx.has_output(slot):
                from replayer.export.ops.creation import _fill

                _fill(ctx, 0, slot)
        return
    axes_c = ctx.const(axes)
    mean_k = ctx.op1("ReduceMean", ctx.input(0), axes_c, keepdims=1)
    centered = ctx.op1("Sub", ctx.input(0), mean_k)
    var = ctx.op1("ReduceMean", ctx.op1("Mul", centered, centered), axes_c, keepdims=0)
    mean = ctx.op1("Reshape", mean_k, ctx.const([channels]))
    if ctx.has_output(1):
        ctx.node("Identity", [mean], [ctx.output(1)])
    if ctx.has_output(2):
        root = ctx.op1("Sqrt", ctx.op1("Add", var, ctx.const(eps, dtype)))
        ctx.node("Reciprocal", [root], [ctx.output(2)])
    if ctx.has_output(3) or ctx.has_output(4):  # _native_batch_norm_legit_functional
        n = ctx.reduction
        unbiased = ctx.op1("Mul", var, ctx.const(n / max(n - 1, 1), dtype))
        for slot, arg, stat in ((3, 3, mean), (4, 4, unbiased)):
            if ctx.has_output(slot):
                old = ctx.op1("Mul", ctx.input(arg), ctx.const(1 - momentum, dtype))
                new = ctx.op1("Mul", stat, ctx.const(momentum, dtype))
                ctx.node("Add", [old, new], [ctx.output(slot)])


@register(
    "aten::native_batch_norm.default",
    "aten::_native_batch_norm_legit.default",
    "aten::_native_batch_norm_legit_functional.default",
)
def batch_norm(ctx: OpContext) -> None:
    _batch_norm(
        ctx,
        bool(ctx.attr("training")),
        float(ctx.attr("momentum", 0.1)),
        float(ctx.attr("eps", 1e-5)),
        running=True,
    )


@register("aten::_native_batch_norm_legit.no_stats")
def batch_norm_no_stats(ctx: OpContext) -> None:
    _batch_norm(
        ctx,
        bool(ctx.attr("training")),
        float(ctx.attr("momentum", 0.1)),
        float(ctx.attr("eps", 1e-5)),
        running=False,
    )


@register("aten::_native_batch_norm_legit_no_training.default")
def batch_norm_eval(ctx: OpContext) -> None:
    _batch_norm(ctx, False, float(ctx.attr("momentum", 0.1)), float(ctx.attr("eps", 1e-5)), running=True)


def _softmax_input(ctx: OpContext) -> tuple[str, int]:
    dtype = ctx.out_dtype()
    rank = len(ctx.in_shape(0))
    axis = _axis(int(ctx.attr("dim")), rank) if rank else 0
    ctx.reduction = ctx.in_shape(0)[axis] if rank else 1
    return ctx.cast(ctx.input(0), ctx.in_dtype(0), dtype), axis


@register(
    "aten::_softmax.default", "aten::softmax.int", "aten::_log_softmax.default", "aten::log_softmax.int"
)
def softmax(ctx: OpContext) -> None:
    x, axis = _softmax_input(ctx)
    op = "LogSoftmax" if "log_softmax" in ctx.op.name else "Softmax"
    ctx.node(op, [x], [ctx.output()], axis=axis)


@register("aten::_safe_softmax.default")
def safe_softmax(ctx: OpContext) -> None:
    """Softmax that gives 0 (not NaN) on rows where every input is -inf."""
    x, axis = _softmax_input(ctx)
    dtype = ctx.out_dtype()
    prob = ctx.op1("Softmax", x, axis=axis)
    row_max = ctx.op1("ReduceMax", x, ctx.const([axis]), keepdims=1)
    dead = ctx.op1("Equal", row_max, ctx.const(-np.inf, dtype))
    ctx.node("Where", [dead, ctx.const(0, dtype), prob], [ctx.output()])


_REDUCTIONS = {0: "none", 1: "mean", 2: "sum"}


@register("aten::nll_loss_forward.default", "aten::nll_loss2d_forward.default")
def nll_loss(ctx: OpContext) -> None:
    """``NegativeLogLikelihoodLoss``, and the total weight torch returns beside it."""
    dtype = ctx.out_dtype()
    reduction = _REDUCTIONS.get(int(ctx.attr("reduction", 1)))
    if reduction is None:
        raise Unsupported("reduction code")
    ignore = int(ctx.attr("ignore_index", -100))
    x, target = ctx.input(0), ctx.input(1)
    if len(ctx.in_shape(0)) == 1:  # a single sample: (C,) and a 0-d target
        x = ctx.op1("Unsqueeze", x, ctx.const([0]))
        target = ctx.op1("Unsqueeze", target, ctx.const([0]))
    ctx.reduction = max(1, math.prod(ctx.in_shape(1)))
    inputs = [x, target] + ([ctx.input(2)] if ctx.has_input(2) else [])
    loss = ctx.output(0) if len(ctx.in_shape(0)) > 1 or reduction != "none" else ctx.fresh("loss")
    ctx.node("NegativeLogLikelihoodLoss", inputs, [loss], reduction=reduction, ignore_index=ignore)
    if loss != ctx.output(0):
        ctx.node("Squeeze", [loss, ctx.const([0])], [ctx.output(0)])
    if ctx.has_output(1):
        valid = ctx.op1("Not", ctx.op1("Equal", ctx.input(1), ctx.const(ignore, DType.INT64)))
        weights = ctx.cast(valid, DType.BOOL, dtype)
        if ctx.has_input(2):
            safe = ctx.op1("Where", valid, ctx.input(1), ctx.const(0, DType.INT64))
            weights = ctx.op1("Mul", ctx.op1("Gather", ctx.input(2), safe, axis=0), weights)
        ctx.node("ReduceSum", [weights], [ctx.output(1)], keepdims=0)


@register("aten::convolution.default", "aten::_convolution.default")
def convolution(ctx: OpContext) -> None:
    weight_shape = ctx.in_shape(1)
    spatial = len(weight_shape) - 2
    groups = int(ctx.attr("groups", 1))
    transposed = bool(ctx.attr("transposed", False))
    ctx.reduction = math.prod(weight_shape[1:]) * (groups if transposed else 1)

    def per_dim(name: str, default: int) -> list[int]:
        value = ctx.attr(name, [default])
        values = [int(v) for v in (value if isinstance(value, list) else [value])]
        return values * spatial if len(values) == 1 else values

    padding = per_dim("padding", 0)
    attrs: dict[str, Any] = {
        "strides": per_dim("stride", 1),
        "pads": padding + padding,
        "dilations": per_dim("dilation", 1),
        "group": groups,
    }
    inputs = [ctx.input(0), ctx.input(1)] + ([ctx.input(2)] if ctx.has_input(2) else [])
    if transposed:
        attrs["output_padding"] = per_dim("output_padding", 0)
        ctx.node("ConvTranspose", inputs, [ctx.output()], **attrs)
    else:
        ctx.node("Conv", inputs, [ctx.output()], **attrs)


def _pool_attrs(ctx: OpContext, dilation: bool = True) -> dict[str, Any]:
    kernel = [int(k) for k in ctx.attr("kernel_size")]
    spatial = len(ctx.in_shape(0)) - 2
    kernel = kernel * spatial if len(kernel) == 1 else kernel
    stride = [int(s) for s in ctx.attr("stride", [])] or kernel
    stride = stride * spatial if len(stride) == 1 else stride
    padding = [int(p) for p in ctx.attr("padding", [0])]
    padding = padding * spatial if len(padding) == 1 else padding
    attrs: dict[str, Any] = {
        "kernel_shape": kernel,
        "strides": stride,
        "pads": padding + padding,
        "ceil_mode": int(bool(ctx.attr("ceil_mode", False))),
    }
    if dilation:
        dil = [int(d) for d in ctx.attr("dilation", [1])]
        attrs["dilations"] = dil * spatial if len(dil) == 1 else dil
    return attrs


@register(
    "aten::max_pool2d_with_indices.default",
    "aten::max_pool2d.default",
    "aten::max_pool3d_with_indices.default",
    "aten::max_pool1d.default",
)
def max_pool(ctx: OpContext) -> None:
    """``MaxPool``; its indices count over the whole tensor, torch's within each plane."""
    ctx.exact = True
    shape = ctx.in_shape(0)
    if len(shape) < 3:
        raise Unsupported("pooling without a batch dimension")
    attrs = _pool_attrs(ctx)
    if not ctx.has_output(1):
        ctx.node("MaxPool", [ctx.input(0)], [ctx.output(0)], **attrs)
        return
    flat = ctx.fresh("indices")
    ctx.node("MaxPool", [ctx.input(0)], [ctx.output(0), flat], **attrs)
    plane = math.prod(shape[2:])
    offsets = (np.arange(shape[0] * shape[1], dtype=np.int64) * plane).reshape(
        (shape[0], shape[1]) + (1,) * (len(shape) - 2)
    )
    ctx.node("Sub", [flat, ctx.const(offsets)], [ctx.output(1)])


@register("aten::avg_pool2d.default", "aten::avg_pool1d.default", "aten::avg_pool3d.default")
def avg_pool(ctx: OpContext) -> None:
    if ctx.attr("divisor_override") is not None:
        raise Unsupported("divisor_override")
    attrs = _pool_attrs(ctx, dilation=False)
    ctx.reduction = math.prod(attrs["kernel_shape"])
    ctx.node(
        "AveragePool",
        [ctx.input(0)],
        [ctx.output()],
        count_include_pad=int(bool(ctx.attr("count_include_pad", True))),
        **attrs,
    )


@register(
    "aten::_adaptive_avg_pool2d.default",
    "aten::adaptive_avg_pool2d.default",
    "aten::_adaptive_avg_pool3d.default",
    "aten::adaptive_avg_pool1d.default",
)
def adaptive_avg_pool(ctx: OpContext) -> None:
    shape = ctx.in_shape(0)
    out = ctx.out_shape()
    spatial_in, spatial_out = shape[2:], out[2:]
    ctx.reduction = math.prod(spatial_in) // max(1, math.prod(spatial_out))
    if all(o == 1 for o in spatial_out):
        ctx.node("GlobalAveragePool", [ctx.input(0)], [ctx.output()])
    elif all(i % o == 0 for i, o in zip(spatial_in, spatial_out, strict=True)):
        kernel = [i // o for i, o in zip(spatial_in, spatial_out, strict=True)]
        ctx.node("AveragePool", [ctx.input(0)], [ctx.output()], kernel_shape=kernel, strides=kernel)
    else:
        raise Unsupported("adaptive pooling with uneven windows")
