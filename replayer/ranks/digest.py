"""What the cross-rank check keeps of one rank's step: its collectives, the fingerprints of its
parameters and gradients, and its times.  Nothing else of the step is kept, so a check over
hundreds of ranks holds one full step at a time.

A collective is an op whose attributes carry the ``"c10d"`` key (format 1.2, written by the
recorder for the ``c10d`` and ``_c10d_functional`` ops).  The attributes come from a file, so they
are parsed field by field (:func:`tracefmt.collective.parse_collective`); an op whose ``"c10d"``
value is malformed is left out with a note.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from tracefmt import Role, Step, TensorRecord
from tracefmt.collective import C10D_KEY, CollectiveInfo, is_c10d_op, is_wait, parse_collective

#: Base op name (namespace and overload stripped) -> what the collective does.  Ops of the
#: same type match across ranks whichever API issued them.
COLLECTIVE_TYPES: Mapping[str, str] = {
    "allreduce_": "all_reduce",
    "allreduce_coalesced_": "all_reduce",
    "all_reduce": "all_reduce",
    "all_reduce_": "all_reduce",
    "all_reduce_coalesced": "all_reduce",
    "all_reduce_coalesced_": "all_reduce",
    "broadcast_": "broadcast",
    "broadcast": "broadcast",
    "allgather_": "all_gather",
    "_allgather_base_": "all_gather",
    "allgather_coalesced_": "all_gather",
    "allgather_into_tensor_coalesced_": "all_gather",
    "all_gather_into_tensor": "all_gather",
    "all_gather_into_tensor_out": "all_gather",
    "all_gather_into_tensor_coalesced": "all_gather",
    "reduce_scatter_": "reduce_scatter",
    "_reduce_scatter_base_": "reduce_scatter",
    "reduce_scatter_tensor_coalesced_": "reduce_scatter",
    "reduce_scatter_tensor": "reduce_scatter",
    "reduce_scatter_tensor_coalesced": "reduce_scatter",
    "reduce_": "reduce",
    "gather_": "gather",
    "scatter_": "scatter",
    "alltoall_": "all_to_all",
    "alltoall_base_": "all_to_all",
    "all_to_all_single": "all_to_all",
    "barrier": "barrier",
    "monitored_barrier_": "barrier",
    "send": "send",
    "recv_": "recv",
    "recv_any_source_": "recv",
}

#: c10d ops whose first tensor argument is the output and whose second is what the rank sends.
_OUTPUT_FIRST = frozenset(
    {
        "allgather_",
        "_allgather_base_",
        "allgather_coalesced_",
        "allgather_into_tensor_coalesced_",
        "reduce_scatter_",
        "_reduce_scatter_base_",
        "reduce_scatter_tensor_coalesced_",
        "gather_",
        "scatter_",
        "alltoall_",
        "alltoall_base_",
    }
)


def split_name(name: str) -> tuple[str, str]:
    """``"c10d::allreduce_.default"`` -> ``("c10d", "allreduce_")``."""
    namespace, sep, rest = name.partition("::")
    if not sep:
        return "", name.partition(".")[0]
    return namespace, rest.partition(".")[0]


def collective_type(name: str) -> str:
    """What a c10d op does (``all_reduce``, ``all_gather`` ...), whichever API issued it."""
    base = split_name(name)[1]
    return COLLECTIVE_TYPES.get(base, base.strip("_"))


@dataclass(frozen=True, slots=True)
class CollectiveRow:
    """One collective or point-to-point op of one rank's step, as the check needs it.

    ``sent`` is the element count of what the rank contributes (the tensors it reads), ``written``
    of what it receives (the tensors it writes); ``fingerprints`` are the written tensors'
    fingerprints (``None`` where unmeasured; a functional collective's come from its
    ``wait_tensor``).  ``start_ns`` is when the rank entered the op, in ns after its own step's
    start (format 1.3), ``None`` when not recorded.
    """

    rank: int
    index: int
    op: str
    type: str
    module: str
    phase: str
    group: str
    group_name: str
    group_ranks: tuple[int, ...]
    kind: str
    seq: int
    reduce_op: str | None
    root: int | None
    peer: int | None
    sent: int
    written: int
    dtypes: tuple[str, ...]
    fingerprints: tuple[int | None, ...]
    start_ns: int | None = None


@dataclass(frozen=True, slots=True)
class TensorPrint:
    """A named tensor's fingerprint (``None`` when unmeasured), shape and dtype."""

    fingerprint: int | None
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True, slots=True)
class RankDigest:
    """One rank's step, cut down to what the cross-rank check reads.

    ``params`` / ``grads`` map a name to its last version in the step (after the optimizer),
    ``params_entry`` to its first (as the step found it), in the order in which parameter names
    first appear.  ``comm_ns`` sums the host time of the step's c10d ops
    (``comm_timed``: how many had one).  ``last_collective`` is the index of the step's last c10d
    op (-1: none).
    """

    rank: int
    step: int
    duration: float
    collectives: tuple[CollectiveRow, ...]
    params: Mapping[str, TensorPrint]
    params_entry: Mapping[str, TensorPrint]
    grads: Mapping[str, TensorPrint]
    comm_ns: int
    comm_ops: int
    comm_timed: int
    last_collective: int
    notes: tuple[str, ...]


def _fingerprint(t: TensorRecord) -> int | None:
    return t.stats.fingerprint if t.stats is not None else None


def _print(t: TensorRecord) -> TensorPrint:
    return TensorPrint(_fingerprint(t), tuple(t.shape), t.dtype.label)


def digest_step(step: Step, *, world_size: int) -> RankDigest:
    """Cut ``step`` (of a run of ``world_size`` ranks) down to a :class:`RankDigest` (reads only
    what is already loaded)."""
    tensors = step.tensors
    rows: list[CollectiveRow] = []
    waits: dict[tuple[str, str, int], tuple[int | None, ...]] = {}
    notes: list[str] = []
    comm_ns = comm_ops = comm_timed = 0
    last = -1
    for op in step.ops:
        namespace, base = split_name(op.name)
        if is_c10d_op(op.name):
            comm_ops += 1
            last = op.index
            if op.host_ns is not None and op.host_ns >= 0:
                comm_ns += op.host_ns
                comm_timed += 1
        if C10D_KEY not in op.attrs:
            continue
        info = parse_collective(op.attrs[C10D_KEY], world_size=world_size, rank=step.rank)
        if not isinstance(info, CollectiveInfo):
            notes.append(
                f"rank {step.rank}, step {step.step}: op {op.index} ({op.name}) has a "
                f"malformed {C10D_KEY!r} attribute ({info.message}); it was left out of the check."
            )
            continue
        prints = tuple(_fingerprint(tensors[t]) for t in op.outputs)
        if is_wait(op.name):
            waits[(info.group, info.kind, info.seq)] = prints
            continue
        source_arg = 1 if namespace == "c10d" and base in _OUTPUT_FIRST else 0
        if op.input_args and len(op.input_args) == len(op.inputs):
            sources = [
                t for t, (arg, _) in zip(op.inputs, op.input_args, strict=True) if arg == source_arg
            ]
        else:
            sources = list(op.inputs)
        written = list(op.outputs)
        dtypes = sorted({tensors[t].dtype.label for t in (*sources, *written)})
        rows.append(
            CollectiveRow(
                rank=step.rank,
                index=op.index,
                op=op.name,
                type=collective_type(op.name),
                module=op.module,
                phase=op.phase.label,
                sent=sum(tensors[t].meta.numel for t in sources),
                written=sum(tensors[t].meta.numel for t in written),
                dtypes=tuple(dtypes),
                fingerprints=prints,
                group=info.group,
                group_name=info.group_name,
                group_ranks=tuple(sorted(info.group_ranks)),
                kind=info.kind,
                seq=info.seq,
                reduce_op=info.reduce_op,
                root=info.root,
                peer=info.peer,
                start_ns=op.host_start_ns,
            )
        )
    if waits:
        rows = [_with_wait(r, waits) for r in rows]
    params: dict[str, TensorPrint] = {}
    entry: dict[str, TensorPrint] = {}
    grads: dict[str, TensorPrint] = {}
    versions: dict[tuple[Role, str], int] = {}
    for t in tensors:
        name, role = t.meta.name, t.meta.role
        if name is None or role not in (Role.PARAMETER, Role.GRADIENT):
            continue
        key = (role, name)
        if role is Role.PARAMETER and name not in entry:
            entry[name] = _print(t)
        if versions.get(key, -1) <= t.meta.version:
            versions[key] = t.meta.version
            (params if role is Role.PARAMETER else grads)[name] = _print(t)
    return RankDigest(
        rank=step.rank,
        step=step.step,
        duration=step.duration if math.isfinite(step.duration) else math.nan,
        collectives=tuple(sorted(rows, key=lambda r: (r.group, r.kind, r.seq, r.index))),
        params=params,
        params_entry=entry,
        grads=grads,
        comm_ns=comm_ns,
        comm_ops=comm_ops,
        comm_timed=comm_timed,
        last_collective=last,
        notes=tuple(notes),
    )


def _with_wait(
    row: CollectiveRow, waits: Mapping[tuple[str, str, int], tuple[int | None, ...]]
) -> CollectiveRow:
    """A functional collective's output is measured at its ``wait_tensor``: use those prints."""
    prints = waits.get((row.group, row.kind, row.seq))
    if prints is None or all(p is None for p in prints) or any(p is not None for p in row.fingerprints):
        return row
    return replace(row, fingerprints=prints)
