"""The op table: one small mapper per aten op, from a recorded op to ONNX nodes.

A mapper receives an :class:`OpContext` and emits standard ONNX nodes through it.  An op with no
mapper, or whose mapper raises :class:`Unsupported` for the recorded arguments, becomes one node in
the custom domain ``ai.tracefmt.aten`` carrying its recorded attributes (``spec/custom-ops.md``):
the export never fails on an unknown op.

Registering::

    @register("aten::relu.default")
    def relu(ctx: OpContext) -> None:
        ctx.node("Relu", [ctx.input(0)], ctx.outputs())
"""

from __future__ import annotations

from collections.abc import Callable

from replayer.ops._context import OpContext, Unsupported

Mapper = Callable[[OpContext], None]

#: aten op name (with overload, ``aten::addmm.default``) -> mapper.
OPS: dict[str, Mapper] = {}


def register(*names: str) -> Callable[[Mapper], Mapper]:
    """Register a mapper for one or more aten op names."""
    def wrap(fn: Mapper) -> Mapper:
        for name in names:
            if name in OPS:
                raise ValueError(f"Two mappers registered for {name!r}.")
            OPS[name] = fn
        return fn
    return wrap


def mapper_for(name: str) -> Mapper | None:
    """The mapper of ``name`` (exact overload first, then the op's ``.default``-less base name)."""
    found = OPS.get(name)
    if found is None and "." in name:
        found = OPS.get(name.rsplit(".", 1)[0] + ".*")
    return found


def _load_all() -> None:
    from replayer.ops import elementwise, linalg  # noqa: F401  (registration side effects)


_load_all()

__all__ = ["OPS", "Mapper", "OpContext", "Unsupported", "mapper_for", "register"]
