"""Numpy references of the backward kernels, which export as custom ``ai.tracefmt.aten`` nodes.

ONNX has no operator for these (FACTS: threshold_backward, convolution_backward, ...), so the
export keeps each as one custom node with its recorded attributes, and ``replayer check`` runs
these references (in float64, cast to the recorded dtype) through the ONNX reference evaluator.
Each returns the outputs by slot; ``None`` for an output the op did not compute.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from replayer.export.ops import RefArgs, reference
from replayer.export.ops._refargs import rms

F64 = np.float64
Out = Sequence[np.ndarray | None]


def _f(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=F64)


def _erf(x: np.ndarray) -> np.ndarray:
    return np.asarray(np.frompyfunc(math.erf, 1, 1)(x), dtype=F64)


def _axis(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


def _mask(a: RefArgs, n: int, key: str = "output_mask") -> list[bool]:
    mask = a.attr(key, [True] * n)
    return [bool(m) for m in mask]


@reference("aten::_local_scalar_dense.default")
def local_scalar_dense(a: RefArgs) -> Out:
    """``tensor.item()``: its result is a Python number, which the trace does not hold."""
    return []


@reference("aten::gelu_backward.default")
def gelu_backward(a: RefArgs) -> Out:
    g, x = _f(a.t(0)), _f(a.t(1))
    if a.attr("approximate", "none") == "tanh":
        beta, kappa = math.sqrt(2 / math.pi), 0.044715
        inner = np.tanh(beta * (x + kappa * x**3))
        left = 0.5 * x
        derivative = 0.5 * (1 + inner) + left * (1 - inner**2) * beta * (1 + 3 * kappa * x**2)
        return [g * derivative]
    cdf = 0.5 * (1 + _erf(x / math.sqrt(2)))
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return [g * (cdf + x * pdf)]


@reference("aten::tanh_backward.default")
def tanh_backward(a: RefArgs) -> Out:
    y = _f(a.t(1))
    return [_f(a.t(0)) * (1 - y * y)]


@reference("aten::sigmoid_backward.default")
def sigmoid_backward(a: RefArgs) -> Out:
    y = _f(a.t(1))
    return [_f(a.t(0)) * y * (1 - y)]


@reference("aten::threshold_backward.default")
def threshold_backward(a: RefArgs) -> Out:
    return [np.where(_f(a.t(1)) <= a.attr("threshold", 0), 0.0, _f(a.t(0)))]


@reference("aten::_softmax_backward_data.default")
def softmax_backward(a: RefArgs) -> Out:
    g, y = _f(a.t(0)), _f(a.t(1))
    axis = _axis(int(a.attr("dim")), y.ndim)
    a.reduction = y.shape[axis] if y.ndim else 1
    a.scales[0] = rms(g) * float(np.abs(y).max(initial=0.0))
    return [y * (g - (g * y).sum(axis=axis, keepdims=True))]


@reference("aten::_log_softmax_backward_data.default")
def log_softmax_backward(a: RefArgs) -> Out:
    g, y = _f(a.t(0)), _f(a.t(1))
    axis = _axis(int(a.attr("dim")), y.ndim)
    a.reduction = y.shape[axis] if y.ndim else 1
    a.scales[0] = rms(g)
    return [g - np.exp(y) * g.sum(axis=axis, keepdims=True)]


@reference("aten::nll_loss_backward.default", "aten::nll_loss2d_backward.default")
def nll_loss_backward(a: RefArgs) -> Out:
    g, x, target = _f(a.t(0)), a.t(1), np.asarray(a.t(2), dtype=np.int64)
    reduction, ignore = int(a.attr("reduction", 1)), int(a.attr("ignore_index", -100))
    weight = _f(a.t(3)) if a.has(3) else np.ones(x.shape[1 if x.ndim > 1 else 0])
    total = float(_f(a.t(6))) if a.has(6) else 1.0
    single = x.ndim == 1
    xs = x.reshape(1, -1) if single else x
    ts = target.reshape(1) if single else target
    # Move the class axis last: (N, ..., C) against targets (N, ...).
    moved = np.moveaxis(np.zeros(xs.shape, dtype=F64), 1, -1)
    valid = ts != ignore
    safe = np.where(valid, ts, 0)
    w = np.where(valid, weight[safe], 0.0)
    scale = g if reduction == 0 else np.broadcast_to(g, ts.shape)
    values = -w * scale
    if reduction == 1:
        values = values / total
    np.put_along_axis(moved, safe[..., None], values[..., None], axis=-1)
    grad = np.moveaxis(moved, -1, 1)
    return [grad.reshape(x.shape)]


@reference("aten::native_layer_norm_backward.default")
def layer_norm_backward(a: RefArgs) -> Out:
    g, x = _f(a.t(0)), _f(a.t(1))
    normalized = [int(d) for d in a.attr("normalized_shape")]
    axes = tuple(range(x.ndim - len(normalized), x.ndim))
    outer = tuple(range(x.ndim - len(normalized)))
    mean, rstd = _f(a.t(3)), _f(a.t(4))
    xhat = (x - mean) * rstd
    dxhat = g * _f(a.t(5)) if a.has(5) else g
    mask = _mask(a, 3)
    inner = math.prod(normalized)
    outer_n = g.size // max(inner, 1)
    a.reduction = max(inner, outer_n)
    a.scales.update(
        {
            0: rms(dxhat) * float(np.max(rstd, initial=0.0)),
            1: rms(g) * math.sqrt(outer_n),
            2: rms(g) * math.sqrt(outer_n),
        }
    )
    dx = rstd * (
        dxhat
        - dxhat.mean(axis=axes, keepdims=True)
        - xhat * (dxhat * xhat).mean(axis=axes, keepdims=True)
    )
    dw = (g * xhat).sum(axis=outer) if mask[1] else None
    db = g.sum(axis=outer) if mask[2] else None
    return [dx if mask[0] else None, dw, db]


@reference("aten::native_batch_norm_backward.default")
def batch_norm_backward(a: RefArgs) -> Out:
    g, x = _f(a.t(0)), _f(a.t(1))
    shape = [1, x.shape[1]] + [1] * (x.ndim - 2)
    axes = (0, *range(2, x.ndim))
    train = bool(a.attr("train"))
    if train:
        mean, invstd = _f(a.t(5)), _f(a.t(6))
    else:
        mean = _f(a.t(3))
        invstd = 1.0 / np.sqrt(_f(a.t(4)) + float(a.attr("eps", 1e-5)))
    mean, invstd = mean.reshape(shape), invstd.reshape(shape)
    weight = _f(a.t(2)).reshape(shape) if a.has(2) else np.ones(shape)
    xhat = (x - mean) * invstd
    if train:
        dx = (
            weight
            * invstd
            * (g - g.mean(axis=axes, keepdims=True) - xhat * (g * xhat).mean(axis=axes, keepdims=True))
        )
    else:
        dx = g * weight * invstd
    mask = _mask(a, 3)
    count = g.size // max(x.shape[1], 1)
    a.reduction = count
    a.scales.update(
        {
            0: rms(g) * float(np.max(np.abs(weight * invstd), initial=0.0)),
            1: rms(g) * math.sqrt(count),
            2: rms(g) * math.sqrt(count),
        }
    )
    return [
        dx if mask[0] else None,
        (g * xhat).sum(axis=axes) if mask[1] else None,
        g.sum(axis=axes) if mask[2] else None,
    ]


@reference("aten::embedding_dense_backward.default")
def embedding_backward(a: RefArgs) -> Out:
    g, idx = _f(a.t(0)), np.asarray(a.t(1), dtype=np.int64).reshape(-1)
    dim = g.shape[-1]
    rows = g.reshape(-1, dim)
    out = np.zeros((int(a.attr("num_weights")), dim))
    most = int(np.bincount(idx).max(initial=1)) if idx.size else 1
    a.reduction = most
    a.scales[0] = rms(g) * math.sqrt(most)
    if a.attr("scale_grad_by_freq", False):
        counts = np.bincount(idx, minlength=out.shape[0])
        rows = rows / counts[idx][:, None]
    np.add.at(out, idx, rows)
    padding = int(a.attr("padding_idx", -1))
    if padding >= 0:
        out[padding] = 0
    return [out]


@reference(
    "aten::max_pool2d_with_indices_backward.default", "aten::max_pool3d_with_indices_backward.default"
)
def max_pool_backward(a: RefArgs) -> Out:
    g, x, idx = _f(a.t(0)), a.t(1), np.asarray(a.t(7), dtype=np.int64)
    planes = math.prod(x.shape[:2])
    plane = math.prod(x.shape[2:])
    offsets = (np.arange(planes, dtype=np.int64) * plane).reshape(x.shape[:2] + (1,) * (x.ndim - 2))
    out = np.zeros(x.size)
    np.add.at(out, (idx + offsets).reshape(-1), g.reshape(-1))
    return [out.reshape(x.shape)]


@reference("aten::convolution_backward.default")
def convolution_backward(a: RefArgs) -> Out:
    """Gradients of an N-d, grouped, strided, dilated convolution (not transposed)."""
    if a.attr("transposed", False):
        raise NotImplementedError("the reference covers convolutions that are not transposed")
    g, x, w = _f(a.t(0)), _f(a.t(1)), _f(a.t(2))
    groups = int(a.attr("groups", 1))
    kernel = w.shape[2:]
    spatial = len(kernel)

    def per_dim(name: str, default: int) -> list[int]:
        values = [int(v) for v in a.attr(name, [default])]
        return values * spatial if len(values) == 1 else values

    stride, padding, dilation = per_dim("stride", 1), per_dim("padding", 0), per_dim("dilation", 1)
    n, cin = x.shape[:2]
    cout = w.shape[0]
    out_sp = g.shape[2:]
    xp = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in padding])
    gx = np.zeros_like(xp)
    gw = np.zeros_like(w).reshape(groups, cout // groups, cin // groups, *kernel)
    gg = g.reshape(n, groups, cout // groups, -1)
    wg = w.reshape(groups, cout // groups, cin // groups, *kernel)
    for offs in itertools.product(*[range(k) for k in kernel]):
        window: tuple[Any, ...] = (
            slice(None),
            slice(None),
            *(
                slice(o * d, o * d + s * (m - 1) + 1, s)
                for o, d, s, m in zip(offs, dilation, stride, out_sp, strict=True)
            ),
        )
        at: tuple[Any, ...] = (Ellipsis, *offs)
        patch = xp[window].reshape(n, groups, cin // groups, -1)
        gw[at] = np.einsum("ngos,ngis->goi", gg, patch)
        back = np.einsum("ngos,goi->ngis", gg, wg[at])
        gx[window] += back.reshape(n, cin, *out_sp)
    inner = tuple(slice(p, p + size) for p, size in zip(padding, x.shape[2:], strict=True))
    mask = _mask(a, 3)
    k_weight = n * math.prod(out_sp)
    k_input = (cout // groups) * math.prod(kernel)
    a.reduction = max(k_weight, k_input)
    a.scales.update(
        {
            0: rms(g) * rms(w) * math.sqrt(k_input),
            1: rms(g) * rms(x) * math.sqrt(k_weight),
            2: rms(g) * math.sqrt(k_weight),
        }
    )
    return [
        gx[(slice(None), slice(None), *inner)] if mask[0] else None,
        gw.reshape(w.shape) if mask[1] else None,
        g.sum(axis=(0, *range(2, g.ndim))) if mask[2] else None,
    ]
