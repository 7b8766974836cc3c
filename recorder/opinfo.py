"""What the schema of an op overload tells the capture, read once per overload.

Mostly aten ops; also the communication ops (their writes come from
:data:`recorder.collectives.SPECS`, as their schemas mark none) and FSDP2's ``fsdp::`` copy ops.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch._ops import OpOverload

from recorder.collectives import COMM_NAMESPACES, OTHER, SPECS, CommSpec

__all__ = ["RECORDED_NAMESPACES", "OpInfo"]

#: Namespaces recorded like aten: FSDP2's copy ops write its unsharded parameters.
RECORDED_NAMESPACES = frozenset({"aten", "fsdp"})

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

#: Ops that read their tensor arguments' shape, dtype and device, not their bytes (beyond views,
#: which the schema tells): a blank argument (recorder.identity) stays linked to its maker.
_SHAPE_ONLY = _UNINITIALIZED | {
    "aten::zeros_like",
    "aten::ones_like",
    "aten::full_like",
    "aten::rand_like",
    "aten::randn_like",
    "aten::randint_like",
    "aten::new_zeros",
    "aten::new_ones",
    "aten::new_full",
    "aten::_unsafe_view",
}

#: In-place ops that overwrite all of ``self`` without reading it (an in-place ``mul_`` reads it):
#: a blank ``self`` (recorder.identity) stays linked to its maker.
_OVERWRITE_SELF = frozenset(
    {
        "aten::fill_",
        "aten::zero_",
        "aten::copy_",
        "aten::normal_",
        "aten::uniform_",
        "aten::random_",
        "aten::bernoulli_",
        "aten::exponential_",
        "aten::geometric_",
        "aten::log_normal_",
        "aten::cauchy_",
    }
)

#: Ops that write arguments their schema does not mark as written: batch norm updates
#: ``running_mean`` and ``running_var`` (arguments 3 and 4) in place when ``training`` (argument 5).
_UNDECLARED_WRITES = {
    "aten::native_batch_norm": (5, frozenset({3, 4})),
    "aten::cudnn_batch_norm": (5, frozenset({3, 4})),
    "aten::miopen_batch_norm": (5, frozenset({3, 4})),
}

#: Ops that always write arguments their schema does not mark: FSDP2's all-gather copy-in writes
#: the shard into its output buffer (argument 1) and returns views of it.
_ALWAYS_WRITES = {"fsdp::all_gather_copy_in": frozenset({1})}


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
    #: a communication op (``c10d``, ``_c10d_functional``): where its group, root, ... are
    comm: CommSpec | None = None
    #: written arguments the op does not read (not inputs: an all-gather's output buffers)
    write_only: frozenset[int] = frozenset()
    #: it reads its tensor arguments' shapes only (a view, ``empty_like``, ``zeros_like``)
    shape_only: bool = False
    #: written arguments whose bytes it overwrites without reading them (``out=``, ``fill_``'s self)
    overwrites: frozenset[int] = frozenset()

    @classmethod
    def cached(cls, func: OpOverload) -> OpInfo:
        """:meth:`of`, computed once per overload per process."""
        info = _CACHE.get(func)
        if info is None:
            info = _CACHE[func] = cls.of(func)
        return info

    @classmethod
    def of(cls, func: OpOverload) -> OpInfo:
        schema = func._schema
        args = schema.arguments
        written = frozenset(
            i for i, a in enumerate(args) if a.alias_info is not None and a.alias_info.is_write
        )
        views = tuple(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)
        names = tuple(a.name for a in args)
        comm = None
        if func.namespace in COMM_NAMESPACES:
            comm = SPECS.get(schema.name, OTHER)
            written = written | comm.written
        written = written | _ALWAYS_WRITES.get(schema.name, frozenset())
        return cls(
            f"{schema.name}.{func._overloadname}",
            names,
            {n: i for i, n in enumerate(names)},
            written,
            views,
            schema.name in _UNINITIALIZED,
            _UNDECLARED_WRITES.get(schema.name),
            comm,
            comm.write_only if comm is not None else frozenset(),
            shape_only=any(views) or schema.name in _SHAPE_ONLY,
            overwrites=frozenset(i for i in written if args[i].kwarg_only)
            | (frozenset({0}) if schema.name in _OVERWRITE_SELF else frozenset()),
        )

    def view_of_return(self, i: int) -> bool:
        """Whether return ``i`` is a view (a single ``Tensor(a)`` return covers a list of them)."""
        views = self.view_returns
        return views[i] if i < len(views) and len(views) > 1 else bool(views and views[0])


_CACHE: dict[OpOverload, OpInfo] = {}
