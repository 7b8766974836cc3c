"""Collective and point-to-point ops (``c10d::*``, ``_c10d_functional::*``) as graph ops.

The c10d schemas mark no argument as written (``allreduce_``'s tensors have no ``(a!)``), so
:data:`SPECS` says per op which arguments it writes, which of those it does not read, and where its
process group, reduce op, root and peer are.  :class:`CommTracker` turns one call into the
``"c10d"`` attribute of its op (spec: "Collective and point-to-point ops"): the group's id, name and
global ranks, the kind, a per-step sequence number per (group, kind), the reduce op by name, root and
peer as global ranks, this rank and the backend's own sequence number.  It also makes the values
final before the capture measures them: it waits on the ``Work`` of a c10d collective (safe on gloo,
results bit-identical), never on a point-to-point one (re-waiting a gloo send/recv hangs), so
those written tensors stay unmeasured, as do the outputs of a functional collective until its
``wait_tensor``.
"""

from __future__ import annotations

import contextlib
import traceback
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from recorder.convert import TensorMap
from tracefmt.manifest import ProcessGroupInfo, group_id
from tracefmt.model import Event

__all__ = [
    "COMM_NAMESPACES",
    "OTHER",
    "SPECS",
    "CommSpec",
    "CommTracker",
    "Completion",
    "storage_holders",
]

#: The namespaces whose every op the capture records as a communication op.
COMM_NAMESPACES = frozenset({"c10d", "_c10d_functional"})

COLLECTIVE = "collective"
P2P = "p2p"


@dataclass(frozen=True)
class CommSpec:
    """Where one communication op keeps what the recorder needs (argument positions)."""

    kind: str | None  #: ``"collective"``, ``"p2p"``, or None: not a communication itself
    written: frozenset[int] = frozenset()  #: arguments it writes (beyond its schema's ``(a!)``)
    write_only: frozenset[int] = frozenset()  #: written arguments it does not read
    group: int | None = None  #: the ProcessGroup (c10d) or group name (functional)
    reduce_op: int | None = None
    root: int | None = None  #: a group-local root rank
    peer: int | None = None  #: a group-local peer rank
    coalesced: int | None = None  #: the tensor list whose length is the coalesced size
    functional: bool = False  #: returns before its values are final; ``wait_tensor`` ends it
    wait: bool = False  #: ``wait_tensor``: makes a functional collective's output final
    #: ``_wrap_tensor_autograd``: wraps a pending output (in an ``AsyncCollectiveTensor``)
    wraps: bool = False


def _c(
    written: tuple[int, ...] = (),
    write_only: tuple[int, ...] = (),
    *,
    kind: str = COLLECTIVE,
    group: int = 1,
    reduce_op: int | None = None,
    root: int | None = None,
    peer: int | None = None,
    coalesced: int | None = None,
    functional: bool = False,
) -> CommSpec:
    """A :class:`CommSpec` (a c10d op's by default: its ProcessGroup is argument 1)."""
    return CommSpec(
        kind,
        frozenset(written),
        frozenset(write_only),
        group,
        reduce_op,
        root,
        peer,
        coalesced,
        functional,
    )


def _f(
    *,
    group: int,
    kind: str = COLLECTIVE,
    written: tuple[int, ...] = (),
    reduce_op: int | None = None,
    root: int | None = None,
    peer: int | None = None,
    coalesced: int | None = None,
) -> CommSpec:
    """A functional collective's :class:`CommSpec`: its group is a group name."""
    return _c(
        written,
        kind=kind,
        group=group,
        reduce_op=reduce_op,
        root=root,
        peer=peer,
        coalesced=coalesced,
        functional=True,
    )


#: Per op (schema name): what it writes and where its group, reduce op, root and peer are.
SPECS: dict[str, CommSpec] = {
    "c10d::allreduce_": _c((0,), reduce_op=2),
    "c10d::allreduce_coalesced_": _c((0,), reduce_op=2, coalesced=0),
    "c10d::broadcast_": _c((0,), root=2),
    "c10d::reduce_": _c((0,), reduce_op=2, root=3),
    "c10d::allgather_": _c((0,), (0,), group=2),
    "c10d::allgather_coalesced_": _c((0,), (0,), group=2, coalesced=1),
    "c10d::allgather_into_tensor_coalesced_": _c((0,), (0,), group=2, coalesced=1),
    "c10d::_allgather_base_": _c((0,), (0,), group=2),
    "c10d::reduce_scatter_": _c((0,), (0,), group=2, reduce_op=3),
    "c10d::_reduce_scatter_base_": _c((0,), (0,), group=2, reduce_op=3),
    "c10d::reduce_scatter_tensor_coalesced_": _c((0,), (0,), group=2, reduce_op=3, coalesced=1),
    "c10d::alltoall_": _c((0,), (0,), group=2),
    "c10d::alltoall_base_": _c((0,), (0,), group=2),
    "c10d::gather_": _c((0,), (0,), group=2, root=3),
    "c10d::scatter_": _c((0,), (0,), group=2, root=3),
    "c10d::barrier": _c(),
    "c10d::monitored_barrier_": _c(),
    "c10d::send": _c(kind=P2P, peer=2),
    "c10d::recv_": _c((0,), (0,), kind=P2P, peer=2),
    "c10d::recv_any_source_": _c((0,), (0,), kind=P2P),
    "_c10d_functional::all_reduce": _f(group=2, reduce_op=1),
    "_c10d_functional::all_reduce_": _f(group=2, reduce_op=1),
    "_c10d_functional::all_reduce_coalesced": _f(group=2, reduce_op=1, coalesced=0),
    "_c10d_functional::all_reduce_coalesced_": _f(group=2, reduce_op=1, coalesced=0),
    "_c10d_functional::all_gather_into_tensor": _f(group=2),
    "_c10d_functional::all_gather_into_tensor_out": _f(group=2),
    "_c10d_functional::all_gather_into_tensor_coalesced": _f(group=2, coalesced=0),
    "_c10d_functional::reduce_scatter_tensor": _f(group=3, reduce_op=1),
    "_c10d_functional::reduce_scatter_tensor_out": _f(group=3, reduce_op=1),
    "_c10d_functional::reduce_scatter_tensor_coalesced": _f(group=3, reduce_op=1, coalesced=0),
    "_c10d_functional::all_to_all_single": _f(group=3),
    "_c10d_functional::broadcast": _f(group=2, root=1),
    "_c10d_functional::broadcast_": _f(group=2, root=1),
    "_c10d_functional::isend": _f(group=3, kind=P2P, peer=1),
    "_c10d_functional::irecv": _f(group=3, kind=P2P, peer=1, written=(0,)),
    "_c10d_functional::batch_p2p_ops": _f(group=4, kind=P2P),
    # the value a functional collective wrote is final once this returns: a new version
    "_c10d_functional::wait_tensor": CommSpec(None, frozenset({0}), wait=True),
    "_c10d_functional::_wrap_tensor_autograd": CommSpec(None, wraps=True),
}
#: Any other op of these namespaces (``_wrap_tensor_autograd``, ``check_for_nan``): recorded as an
#: op, with no ``"c10d"`` attribute.
OTHER = CommSpec(None)


class Completion:
    """What :meth:`CommTracker.complete` found: whether the written values are final, the error
    a failed collective raised when the recorder waited on it, and (``wait=False``) the ``Work``
    to wait on before its written values are."""

    __slots__ = ("error", "final", "work")

    def __init__(self, final: bool, error: str | None = None, work: Any = None) -> None:
        self.final, self.error, self.work = final, error, work

    def events(self, op_name: str, op: int) -> list[Event]:
        """The step events this completion adds to op ``op`` (``op_name``): a failed collective."""
        if self.error is None:
            return []
        message = f"{op_name} failed when the recorder waited on it: {self.error}"
        return [Event("collective_failed", message, op=op)]


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], pos: int | None, name: str) -> Any:
    if pos is None:
        return None
    if pos < len(args):
        return args[pos]
    return kwargs.get(name)


def _reduce_op_name(op: object) -> str | None:
    if op is None:
        return None
    if isinstance(op, str):  # functional collectives: "sum", "avg", ...
        return op.upper()
    if isinstance(op, torch.ScriptObject):
        return str(dist.ReduceOp.RedOpType(op.op()).name)  # type: ignore[attr-defined]
    if isinstance(op, (dist.ReduceOp, dist.ReduceOp.RedOpType)):
        return str(op.name) if hasattr(op, "name") else None
    return None


def _process_group(group: object) -> dist.ProcessGroup | None:
    """The Python ``ProcessGroup`` of a c10d ProcessGroup script object or a group name."""
    if isinstance(group, torch.ScriptObject):
        return dist.ProcessGroup.unbox(group)
    if isinstance(group, dist.ProcessGroup):
        return group
    if isinstance(group, str):
        resolve: Any = dist.distributed_c10d._resolve_process_group  # type: ignore[attr-defined]
        return resolve(group)  # type: ignore[no-any-return]
    return None


def _work(out: object) -> Any:
    """The ``Work`` a c10d op returned, unboxed, or None."""
    items = out if isinstance(out, (tuple, list)) else (out,)
    for o in items:
        if isinstance(o, torch.ScriptObject):
            return dist.distributed_c10d.Work.unbox(o)
    return None


def storage_holders(written: list[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors of ``written`` that hold their own storage: a wrapper subclass (the
    ``AsyncCollectiveTensor`` given to ``wait_tensor``) holds none; the tensor it wraps is what
    the op writes and returns."""
    return [w for w in written if not is_traceable_wrapper_subclass(w)]


class _Group:
    __slots__ = ("info", "pg")

    def __init__(self, info: ProcessGroupInfo, pg: dist.ProcessGroup) -> None:
        self.info, self.pg = info, pg


class CommTracker:
    """The communication ops of one captured step: groups used, sequence numbers, and which
    functional collective each pending output came from (for its ``wait_tensor``)."""

    def __init__(self) -> None:
        self._groups: dict[int, _Group] = {}  #: by ``id`` of the Python ProcessGroup
        self._by_id: dict[str, _Group] = {}  #: by group id
        self._seq: dict[tuple[str, str], int] = {}
        self._pending: TensorMap[dict[str, Any]] = TensorMap()
        self._rank: int | None = None

    @property
    def process_groups(self) -> tuple[ProcessGroupInfo, ...]:
        """Every process group this step's ops used, in the order first used."""
        return tuple(g.info for g in self._groups.values())

    def _group(self, pg: dist.ProcessGroup) -> _Group:
        g = self._groups.get(id(pg))
        if g is None:
            ranks = tuple(sorted(dist.get_process_group_ranks(pg)))
            name = str(pg.group_name)
            try:
                backend: str | None = str(dist.get_backend(pg))
            except (RuntimeError, ValueError):
                backend = None
            info = ProcessGroupInfo(group_id(name, ranks), name, ranks, backend)
            g = self._groups[id(pg)] = self._by_id[info.id] = _Group(info, pg)
        return g

    def describe(
        self,
        spec: CommSpec,
        names: tuple[str, ...],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        attrs: dict[str, Any],
    ) -> dict[str, Any] | None:
        """The ``"c10d"`` attribute of a call about to run, also set in its ``attrs``, or None
        (not a communication, and no known collective to wait on)."""
        c10d = self._describe(spec, names, args, kwargs)
        if c10d is not None:
            attrs["c10d"] = c10d
        return c10d

    def _describe(
        self, spec: CommSpec, names: tuple[str, ...], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> dict[str, Any] | None:
        if spec.kind is None:
            found = self._pending_of(args[0]) if spec.wait and args else None
            return None if found is None else dict(found)

        def at(pos: int | None) -> Any:
            return _arg(args, kwargs, pos, names[pos] if pos is not None and pos < len(names) else "")

        pg = _process_group(at(spec.group))
        if pg is None:
            return None
        g = self._group(pg)
        key = (g.info.id, spec.kind)
        seq = self._seq.get(key, 0)
        self._seq[key] = seq + 1
        coalesced = None
        if spec.coalesced is not None:
            tensors = at(spec.coalesced)
            if isinstance(tensors, (list, tuple)):
                coalesced = [0, len(tensors)]
        if self._rank is None:
            self._rank = dist.get_rank()
        root, peer = at(spec.root), at(spec.peer)
        return {
            "group": g.info.id,
            "group_name": g.info.name,
            "group_ranks": list(g.info.ranks),
            "kind": spec.kind,
            "seq": seq,
            "coalesced": coalesced,
            "reduce_op": _reduce_op_name(at(spec.reduce_op)),
            "root": None if root is None else dist.get_global_rank(pg, int(root)),
            "peer": None if peer is None else dist.get_global_rank(pg, int(peer)),
            "rank": self._rank,
            "backend_seq": None,
        }

    def _pending_of(self, t: object) -> dict[str, Any] | None:
        """The ``"c10d"`` of the functional collective whose output ``t`` is (or wraps)."""
        if not isinstance(t, torch.Tensor):
            return None
        found = self._pending.get(t)
        elem = getattr(t, "elem", None)  # an AsyncCollectiveTensor around the output
        if found is None and isinstance(elem, torch.Tensor):
            found = self._pending.get(elem)
        return found

    def _remember(self, out: object, c10d: dict[str, Any]) -> None:
        for o in out if isinstance(out, (list, tuple)) else (out,):
            if isinstance(o, torch.Tensor):
                self._pending[o] = c10d

    def complete(
        self,
        spec: CommSpec,
        c10d: dict[str, Any] | None,
        args: tuple[Any, ...],
        out: object,
        *,
        wait: bool = True,
    ) -> Completion:
        """After the call: make a collective's values final (wait on its ``Work``), note the
        backend's sequence number, remember a functional collective's outputs.  Never raises: a
        collective that failed is reported in the result, and raises again when the user waits.

        ``wait=False``: leave a c10d collective running (a DDP bucket's all-reduce overlaps the
        rest of backward); the result carries its ``Work``, for whoever measures its values
        once the program has waited for them."""
        if spec.wraps:  # the wrapper holds a value not final yet (and no storage of its own)
            found = self._pending_of(args[0]) if args else None
            if found is not None:
                self._remember(out, found)
            return Completion(False)
        if spec.kind is None:
            return Completion(True)  # wait_tensor's output is final; other ops are local
        if c10d is None:
            return Completion(False)
        g = self._by_id.get(c10d["group"])
        if g is not None:
            with contextlib.suppress(AttributeError, RuntimeError):
                pg: Any = g.pg  # the method is missing from torch's stubs
                c10d["backend_seq"] = int(pg._get_sequence_number_for_group())
        if spec.functional:
            if spec.kind == COLLECTIVE:
                self._remember(out, c10d)
            return Completion(False)
        if spec.kind != COLLECTIVE:
            return Completion(False)  # p2p: never wait (a second wait on gloo hangs)
        work = _work(out)
        if not wait:
            return Completion(False, work=work)
        if work is not None:
            try:
                work.wait()
            except Exception as e:
                return Completion(False, "".join(traceback.format_exception_only(type(e), e)).strip())
        return Completion(True)
