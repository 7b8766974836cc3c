"""A rank file's distributed context: the ``distributed`` object of its provenance (format 1.2).

Under torchrun each rank records where it ran (global and local rank, node, host, pid) and how its
run id was agreed.  :func:`parse_distributed` reads it, field by field, for the reader (which
raises the :class:`~tracefmt._primitives.Problem`) and the validator (which reports it, TF-FILE-007).

Example::

    >>> parse_distributed({"distributed": {"rank": 1, "world_size": 2, "hostname": "n1"}})
    DistributedInfo(rank=1, world_size=2, local_rank=None, local_world_size=None, node_rank=None, \
hostname='n1', pid=None, run_id_source=None, backend=None)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tracefmt import _layout as L
from tracefmt._primitives import Problem

__all__ = ["DISTRIBUTED_KEY", "DistributedInfo", "is_int", "parse_distributed"]


def is_int(value: Any) -> bool:
    """Whether a decoded JSON value is an integer (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


#: The provenance key of a rank file's distributed context (format 1.2).
DISTRIBUTED_KEY = "distributed"


@dataclass(frozen=True)
class DistributedInfo:
    """Where a rank ran, from its provenance's ``distributed`` object (None where unknown)."""

    rank: int | None = None
    world_size: int | None = None
    local_rank: int | None = None
    local_world_size: int | None = None
    node_rank: int | None = None
    hostname: str | None = None
    pid: int | None = None
    run_id_source: str | None = None
    backend: str | None = None


_DIST_INTS = ("rank", "world_size", "local_rank", "local_world_size", "node_rank", "pid")
_DIST_TEXTS = ("hostname", "run_id_source", "backend")


def parse_distributed(provenance: Mapping[str, Any]) -> DistributedInfo | Problem | None:
    """The ``distributed`` object of a rank file's provenance JSON: None when absent or null, a
    :class:`Problem` when it is not an object of non-negative integers (``rank``, ``world_size``,
    ``local_rank``, ``local_world_size``, ``node_rank``, ``pid``) and strings (``hostname``,
    ``run_id_source``, ``backend``), each possibly null.  Other keys are ignored."""
    value = provenance.get(DISTRIBUTED_KEY)
    if value is None:
        return None
    attr = L.ATTR_PROVENANCE
    if not isinstance(value, dict):
        return Problem(f"The provenance field {DISTRIBUTED_KEY!r} is not a JSON object.", attr=attr)
    for key in _DIST_INTS:
        v = value.get(key)
        if v is not None and not (is_int(v) and v >= 0):
            return Problem(
                f"The provenance field {DISTRIBUTED_KEY}.{key} is {v!r}, not a non-negative "
                "integer or null.",
                attr=attr,
            )
    for key in _DIST_TEXTS:
        v = value.get(key)
        if v is not None and not (isinstance(v, str) and len(v) <= L.MAX_RUN_ID_CHARS):
            return Problem(
                f"The provenance field {DISTRIBUTED_KEY}.{key} is {v!r}, not a string or null.",
                attr=attr,
            )
    return DistributedInfo(**{k: value.get(k) for k in (*_DIST_INTS, *_DIST_TEXTS)})
