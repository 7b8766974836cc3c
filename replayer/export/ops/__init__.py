"""The op table: one small mapper per aten op, from a recorded op to ONNX nodes.

A mapper receives an :class:`OpContext` and emits standard ONNX nodes through it.  An op with no
mapper, or whose mapper raises :class:`Unsupported` for the recorded arguments, becomes one node in
the custom domain ``ai.tracefmt.aten`` carrying its recorded attributes (``spec/custom-ops.md``):
the export never fails on an unknown op.  Custom ops may have a numpy *reference*, which
``replayer check`` runs through ``onnx.reference.ReferenceEvaluator``.

Registering::

    @register("aten::relu.default")
    def relu(ctx: OpContext) -> None:
        ctx.node("Relu", [ctx.input(0)], [ctx.output()])

    @reference("aten::tanh_backward.default")
    def tanh_backward(a: RefArgs) -> list[np.ndarray]:
        return [a.t(0) * (1 - a.t(1) ** 2)]
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from typing import TypeVar

import numpy as np

from replayer.export.ops._refargs import RefArgs, Reference
from replayer.export.ops.opcontext import OpContext, Unsupported

_T = TypeVar("_T")
Mapper = Callable[[OpContext], None]
#: A plausibility test of a random op's recorded draws: a problem sentence, or None.
Plausibility = Callable[[RefArgs, Mapping[int, np.ndarray]], "str | None"]

#: aten op name (with overload, ``aten::addmm.default``) -> mapper.
OPS: dict[str, Mapper] = {}
#: aten op name -> numpy reference of an op exported as a custom node.
REFERENCES: dict[str, Reference] = {}
#: aten op name -> plausibility test of its recorded random draws.
PLAUSIBLE: dict[str, Plausibility] = {}


def register(*names: str) -> Callable[[Mapper], Mapper]:
    """Register a mapper for one or more aten op names."""

    def wrap(fn: Mapper) -> Mapper:
        for name in names:
            if name in OPS:
                raise ValueError(f"Two mappers registered for {name!r}.")
            OPS[name] = fn
        return fn

    return wrap


def reference(*names: str) -> Callable[[Reference], Reference]:
    """Register a numpy reference for one or more aten ops that export as custom nodes."""

    def wrap(fn: Reference) -> Reference:
        for name in names:
            if name in REFERENCES:
                raise ValueError(f"Two references registered for {name!r}.")
            REFERENCES[name] = fn
        return fn

    return wrap


def plausible(*names: str) -> Callable[[Plausibility], Plausibility]:
    """Register a plausibility test of the recorded draws of random ops."""

    def wrap(fn: Plausibility) -> Plausibility:
        for name in names:
            PLAUSIBLE[name] = fn
        return fn

    return wrap


_MISSES: dict[tuple[int, str], object] = {}


def _lookup(table: Mapping[str, _T], name: str) -> _T | None:
    """Exact name first, then glob patterns registered with ``*`` (``aten::_foreach_*.*``)."""
    found = table.get(name)
    if found is not None:
        return found
    key = (id(table), name)
    if key in _MISSES:  # glob results are cached: registration happens at import
        return _MISSES[key]  # type: ignore[return-value]
    for pattern, value in table.items():
        if "*" in pattern and fnmatch.fnmatchcase(name, pattern):
            found = value
            break
    _MISSES[key] = found
    return found


def mapper_for(name: str) -> Mapper | None:
    """The mapper of ``name``, or None (the op then becomes a custom node)."""
    return _lookup(OPS, name)


def reference_for(name: str) -> Reference | None:
    """The numpy reference of a custom op, or None."""
    return _lookup(REFERENCES, name)


def plausibility_for(name: str) -> Plausibility | None:
    return _lookup(PLAUSIBLE, name)


def _load_all() -> None:
    from replayer.export.ops import (  # noqa: F401  (registration side effects)
        backward,
        creation,
        elementwise,
        foreach,
        linalg,
        nn,
        reduce,
        shape,
    )


_load_all()

__all__ = [
    "OPS",
    "PLAUSIBLE",
    "REFERENCES",
    "Mapper",
    "OpContext",
    "Plausibility",
    "RefArgs",
    "Reference",
    "Unsupported",
    "mapper_for",
    "plausibility_for",
    "plausible",
    "reference",
    "reference_for",
    "register",
]
