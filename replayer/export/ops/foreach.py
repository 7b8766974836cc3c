"""Numpy references of the ``_foreach_*`` ops (multi-tensor optimizers), exported as custom nodes.

One reference serves every overload: the op applies one elementwise function to each item of its
first list argument, with a second operand that is a list (``.List``), one tensor (``.Tensor``),
one number (``.Scalar``: attribute ``scalar``) or one number per item (``.ScalarList``:
``scalars``).  In-place forms return their new ``self`` items as outputs, in list order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from replayer.export.ops import RefArgs, reference

F64 = np.float64
_Unary = Callable[[np.ndarray], np.ndarray]
_Binary = Callable[[np.ndarray, np.ndarray], np.ndarray]

_UNARY: dict[str, _Unary] = {
    "sqrt": np.sqrt,
    "neg": np.negative,
    "exp": np.exp,
    "log": np.log,
    "abs": np.abs,
    "reciprocal": np.reciprocal,
    "sign": np.sign,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "zero": np.zeros_like,
    "tanh": np.tanh,
}
_BINARY: dict[str, _Binary] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.divide,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "pow": np.power,
}


def _packet(name: str) -> tuple[str, str]:
    """``aten::_foreach_add_.List`` -> (``add``, ``List``)."""
    base, overload = name.removeprefix("aten::_foreach_").split(".", 1)
    return base.rstrip("_"), overload


def _others(a: RefArgs, arg: int, overload: str, n: int, key: str) -> list[np.ndarray]:
    """The second operand per item, for every overload."""
    if overload == "List":
        return [np.asarray(t, dtype=F64) for t in a.tl(arg)]
    if overload == "Tensor":
        return [np.asarray(a.t(arg), dtype=F64)] * n
    if overload == "ScalarList":
        return [np.asarray(float(s)) for s in a.attr("scalars")]
    return [np.asarray(float(a.attr(key)))] * n


def _lerp(x: np.ndarray, end: np.ndarray, w: np.ndarray) -> np.ndarray:
    return np.asarray(np.where(np.abs(w) < 0.5, x + w * (end - x), end - (end - x) * (1 - w)))


@reference("aten::_foreach_*.*")
def foreach(a: RefArgs) -> Sequence[np.ndarray]:
    op, overload = _packet(a.name)
    selves = [np.asarray(t, dtype=F64) for t in a.tl(0)]
    n = len(selves)
    if op in _UNARY:
        out = [_UNARY[op](x) for x in selves]
    elif op in _BINARY:
        others = _others(a, 1, overload, n, "scalar")
        alpha = float(a.attr("alpha", 1))
        out = [
            _BINARY[op](x, alpha * y if alpha != 1 else y) for x, y in zip(selves, others, strict=True)
        ]
    elif op in ("addcmul", "addcdiv"):
        t1 = [np.asarray(t, dtype=F64) for t in a.tl(1)]
        t2 = [np.asarray(t, dtype=F64) for t in a.tl(2)]
        if overload == "Tensor":
            values = [np.asarray(v) for v in np.asarray(a.t(3), dtype=F64).reshape(-1)]
        elif overload == "ScalarList":
            values = [np.asarray(float(v)) for v in a.attr("scalars")]
        else:
            values = [np.asarray(float(a.attr("value", 1)))] * n
        combine = np.multiply if op == "addcmul" else np.divide
        out = [x + v * combine(p, q) for x, p, q, v in zip(selves, t1, t2, values, strict=True)]
    elif op == "lerp":
        ends = [np.asarray(t, dtype=F64) for t in a.tl(1)]
        weights = (
            [np.asarray(t, dtype=F64) for t in a.tl(2)]
            if overload == "List"
            else _others(a, 2, overload, n, "weight")
        )
        out = [_lerp(x, e, w) for x, e, w in zip(selves, ends, weights, strict=True)]
    else:
        raise NotImplementedError(f"no reference for _foreach_{op}")
    return out
