"""What the schema of an aten op overload tells the capture, read once per overload."""

from __future__ import annotations

from dataclasses import dataclass

from torch._ops import OpOverload

__all__ = ["OpInfo"]

#: Ops whose output is uninitialized memory: statistics of it would be noise (and often NaN).
_UNINITIALIZED = frozenset(
    {
        "aten::empty",
        "aten::empty_like",
        "aten::empty_strided",
        "aten::new_empty",
        "aten::new_empty_strided",
        "aten::empty_permuted",
    }
)

#: Ops that write arguments their schema does not mark as written: batch norm updates
#: ``running_mean`` and ``running_var`` (arguments 3 and 4) in place when ``training`` (argument 5).
_UNDECLARED_WRITES = {
    "aten::native_batch_norm": (5, frozenset({3, 4})),
    "aten::cudnn_batch_norm": (5, frozenset({3, 4})),
    "aten::miopen_batch_norm": (5, frozenset({3, 4})),
}


@dataclass(frozen=True)
class OpInfo:
    """What the schema of one op overload says, computed once per overload."""

    name: str  #: ``aten::mm.default``
    arg_names: tuple[str, ...]
    arg_index: dict[str, int]
    written: frozenset[int]  #: positions of the arguments the op writes (``alias_info.is_write``)
    view_returns: tuple[bool, ...]  #: per return: a view of an argument, not written
    uninitialized: bool
    #: (flag argument, positions): these arguments are written too when the flag is ``True``
    written_if: tuple[int, frozenset[int]] | None = None

    @classmethod
    def of(cls, func: OpOverload) -> OpInfo:
        schema = func._schema
        args = schema.arguments
        written = frozenset(
            i for i, a in enumerate(args) if a.alias_info is not None and a.alias_info.is_write
        )
        views = tuple(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)
        names = tuple(a.name for a in args)
        return cls(
            f"{schema.name}.{func._overloadname}",
            names,
            {n: i for i, n in enumerate(names)},
            written,
            views,
            schema.name in _UNINITIALIZED,
            _UNDECLARED_WRITES.get(schema.name),
        )

    def view_of_return(self, i: int) -> bool:
        """Whether return ``i`` is a view (a single ``Tensor(a)`` return covers a list of them)."""
        views = self.view_returns
        return views[i] if i < len(views) and len(views) > 1 else bool(views and views[0])
