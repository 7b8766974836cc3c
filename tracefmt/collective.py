"""Collective and point-to-point ops in a trace: the ``"c10d"`` key of their attributes (format 1.2).

The recorder records every op of the namespaces ``c10d`` and ``_c10d_functional`` that a step
issues like an aten op, and adds to its attributes one reserved key, ``"c10d"``: the process group
(an id that is its name plus a hash of its global ranks, :func:`tracefmt.manifest.group_id`), the
kind (``"collective"`` or ``"p2p"``), a sequence number per (group, kind) within the step, the
reduce op, root and peer as global ranks.  Ranks' ops match by (step, group, kind, seq).
:func:`parse_collective` reads the key field by field for readers (``replayer ranks``) and the
validator (TF-COLL-001) alike.

Example::

    >>> info = parse_collective(step.ops[7].attrs["c10d"], world_size=2, rank=0)
    >>> info.group, info.kind, info.seq
    ('0:fa583645', 'collective', 0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tracefmt import _layout as L
from tracefmt._primitives import Problem
from tracefmt.manifest import group_id
from tracefmt.rankinfo import is_int

__all__ = [
    "C10D_KEY",
    "C10D_NAMESPACES",
    "KINDS",
    "REDUCE_OPS",
    "CollectiveInfo",
    "is_c10d_op",
    "is_wait",
    "parse_collective",
]

#: The reserved attribute key of collective and point-to-point ops.
C10D_KEY = "c10d"
#: Op name prefixes of the namespaces whose ops carry the key.
C10D_NAMESPACES = ("c10d::", "_c10d_functional::")
KINDS = ("collective", "p2p")
REDUCE_OPS = ("SUM", "AVG", "PRODUCT", "MIN", "MAX", "BAND", "BOR", "BXOR", "PREMUL_SUM")
_WAIT = "_c10d_functional::wait_tensor."


def is_c10d_op(name: str) -> bool:
    """Whether an op (by its recorded name) is a collective, point-to-point or wait op."""
    return name.startswith(C10D_NAMESPACES)


def is_wait(name: str) -> bool:
    """Whether an op is a functional collective's ``wait_tensor`` (it repeats its collective's
    group and seq rather than taking a number of its own)."""
    return name.startswith(_WAIT)


@dataclass(frozen=True)
class CollectiveInfo:
    """The ``"c10d"`` attributes of one op, parsed."""

    group: str
    group_name: str
    group_ranks: tuple[int, ...]
    kind: str
    seq: int
    coalesced: tuple[int, int] | None
    reduce_op: str | None
    root: int | None
    peer: int | None
    rank: int
    backend_seq: int | None


class _Bad(Exception):
    pass


def _fail(key: str, value: Any, wants: str) -> _Bad:
    shown = repr(value)
    return _Bad(f"c10d.{key} is {shown if len(shown) <= 60 else shown[:57] + '...'}, not {wants}.")


def _get(data: dict[str, Any], key: str) -> Any:
    if key not in data:
        raise _Bad(f"c10d.{key} is missing.")
    return data[key]


def _ranks(value: Any, world_size: int) -> tuple[int, ...]:
    wants = f"a non-empty list of distinct global ranks in 0..{world_size - 1}"
    if not isinstance(value, list) or not value or len(value) > world_size:
        raise _fail("group_ranks", value, wants)
    if not all(is_int(r) and 0 <= r < world_size for r in value) or len(set(value)) != len(value):
        raise _fail("group_ranks", value, wants)
    return tuple(value)


def _member(key: str, value: Any, ranks: tuple[int, ...]) -> int | None:
    if value is None:
        return None
    if not is_int(value) or value not in ranks:
        raise _fail(key, value, "null or a global rank of the group")
    return int(value)


def _coalesced(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    ok = isinstance(value, list) and len(value) == 2 and all(is_int(v) for v in value)
    if not ok or not 0 <= value[0] < value[1]:
        raise _fail("coalesced", value, "null or [index, size] with 0 <= index < size")
    return int(value[0]), int(value[1])


def _parse(data: Any, world_size: int, rank: int) -> CollectiveInfo:
    if not isinstance(data, dict):
        raise _Bad("c10d is not a JSON object.")
    name, gid = _get(data, "group_name"), _get(data, "group")
    if not isinstance(name, str) or len(name) > L.MAX_STRING_BYTES:
        raise _fail("group_name", name, "a string")
    ranks = _ranks(_get(data, "group_ranks"), world_size)
    if gid != group_id(name, ranks):
        raise _fail("group", gid, f"{group_id(name, ranks)!r}, the id of its name and ranks")
    kind, seq = _get(data, "kind"), _get(data, "seq")
    if kind not in KINDS:
        raise _fail("kind", kind, "'collective' or 'p2p'")
    if not is_int(seq) or seq < 0:
        raise _fail("seq", seq, "an integer >= 0")
    reduce_op = _get(data, "reduce_op")
    if reduce_op is not None and reduce_op not in REDUCE_OPS:
        raise _fail("reduce_op", reduce_op, f"null or one of {', '.join(REDUCE_OPS)}")
    own = _get(data, "rank")
    if own != rank or not is_int(own) or own not in ranks:
        raise _fail("rank", own, f"{rank}, the file's rank, a member of the group")
    backend_seq = _get(data, "backend_seq")
    if backend_seq is not None and not (is_int(backend_seq) and backend_seq >= 0):
        raise _fail("backend_seq", backend_seq, "null or an integer >= 0")
    return CollectiveInfo(
        group=gid,
        group_name=name,
        group_ranks=ranks,
        kind=kind,
        seq=int(seq),
        coalesced=_coalesced(_get(data, "coalesced")),
        reduce_op=reduce_op,
        root=_member("root", _get(data, "root"), ranks),
        peer=_member("peer", _get(data, "peer"), ranks),
        rank=int(own),
        backend_seq=None if backend_seq is None else int(backend_seq),
    )


def parse_collective(data: Any, *, world_size: int, rank: int) -> CollectiveInfo | Problem:
    """The ``"c10d"`` attribute value ``data`` of an op in the file of ``rank`` (of
    ``world_size``), or the first problem with it (see spec "Collective and point-to-point ops")."""
    try:
        return _parse(data, world_size, rank)
    except _Bad as e:
        return Problem(str(e))
