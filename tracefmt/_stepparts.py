"""A step's own rows over its graph: op timings, statistics, op attributes and storage offsets.

:func:`tracefmt._decode.decode_step` builds a :class:`~tracefmt._decode.Step` from these; each
works column by column where it can (a 100,000-op step has 100,000 rows of ``op_stats`` and more of
``stats``): one ``tolist()`` per column and positional constructors, not a named row per row.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from tracefmt import _layout as L
from tracefmt._graphdecode import GraphData
from tracefmt._rows import OpAttrsRow, TensorOffsetRow, named
from tracefmt.attrcodec import decode_attrs
from tracefmt.errors import TraceError, TraceFormatError
from tracefmt.model import OpNode, TensorMeta, TensorStats

#: The histogram and value-loader arguments of every tensor of a stats-only step.
NONES, FALSES = itertools.repeat(None), itertools.repeat(False)


def step_ops(
    graph: GraphData, own: dict[int, dict[str, Any]], tables: Mapping[str, np.ndarray]
) -> tuple[OpNode, ...]:
    """The graph's ops with a step's own attributes ``own``, its ``op_stats`` rows and (format
    1.3) its ``op_starts`` rows."""
    n_ops = len(graph.ops)
    host_ns, device_ns, mem_bytes = (timing(tables[L.OP_STATS], f, n_ops) for f in TIMING)
    starts = timing(tables[L.OP_STARTS], "host_start_ns", n_ops)
    return tuple(
        OpNode(
            op.index,
            op.name,
            op.phase,
            op.module,
            op.inputs,
            op.outputs,
            op.input_args,
            own.get(op.index, op.attrs) if own else op.attrs,
            op.source,
            host,
            device,
            mem,
            start,
        )
        for op, host, device, mem, start in zip(
            graph.ops, host_ns, device_ns, mem_bytes, starts, strict=True
        )
    )


def increasing(indices: list[int], n: int, what: str, where: str) -> None:
    """Check that a step's override rows name strictly increasing ``what``s below ``n``."""
    previous = -1
    for i in indices:
        if not previous < i < n:
            raise TraceFormatError(
                f"{where}: the step's own values name {what} {i} after "
                f"{previous}; they must name increasing {what}s of the graph's "
                f"{n}."
            )
        previous = i


def step_metas(metas: tuple[TensorMeta, ...], rows: np.ndarray, where: str) -> tuple[TensorMeta, ...]:
    """The graph's tensor metadata with the step's ``tensor_offsets`` rows applied."""
    if not len(rows):
        return metas
    offsets = named(rows, TensorOffsetRow)
    increasing([o.tensor for o in offsets], len(metas), "tensor", where)
    out = list(metas)
    for o in offsets:
        out[o.tensor] = dataclasses.replace(out[o.tensor], storage_offset=o.storage_offset)
    return tuple(out)


def step_attrs(
    rows: np.ndarray, n_ops: int, where: str, text: Callable[[int], str]
) -> dict[int, dict[str, Any]]:
    """A step's ``op_attrs`` rows as {op index: attributes}."""
    out: dict[int, dict[str, Any]] = {}
    own = named(rows, OpAttrsRow)
    increasing([a.op for a in own], n_ops, "op", where)
    for a in own:
        if a.attrs == L.NO_STRING:
            out[a.op] = {}
            continue
        try:
            out[a.op] = decode_attrs(text(a.attrs))
        except ValueError as e:
            if isinstance(e, TraceError):
                raise
            raise TraceFormatError(
                f"{where}: the step's attributes of op {a.op} are malformed: {e}"
            ) from e
    return out


#: The columns of ``op_stats``, in the order :func:`decode_step` takes them.
TIMING = ("host_ns", "device_ns", "mem_bytes")
#: The values of ``stats`` under each flag, in the order :func:`stats_rows` takes them.
_MOMENTS = ("min", "max", "mean", "std", "norm")
_COUNTS = ("nan", "inf", "zero")


def timing(rows: np.ndarray, field: str, n_ops: int) -> list[int | None]:
    """Column ``field`` of a step's ``op_stats`` (or ``op_starts``) rows, None where not measured
    (-1) or where the step has no rows."""
    if not len(rows):
        return [None] * n_ops
    return [None if x < 0 else x for x in rows[field].tolist()]


def stats_rows(rows: np.ndarray) -> list[TensorStats]:
    """Each ``stats`` row's statistics: those its flags say were computed, None for the others.

    Column by column, by field name: a Python row object and an enum operation per tensor cost
    more than the rest of decoding a step.
    """
    flags = rows["flags"]
    moments = ((flags & int(L.STAT_MOMENTS)) != 0).tolist()
    counts = ((flags & int(L.STAT_COUNTS)) != 0).tolist()
    fps = ((flags & int(L.STAT_FINGERPRINT)) != 0).tolist()
    columns = zip(
        moments,
        counts,
        fps,
        *(rows[name].tolist() for name in (*_MOMENTS, *_COUNTS, "fingerprint")),
        strict=True,
    )
    return [
        TensorStats(
            mn if m else None,
            mx if m else None,
            mean if m else None,
            std if m else None,
            norm if m else None,
            nan if c else None,
            inf if c else None,
            zero if c else None,
            fp if f else None,
        )
        for m, c, f, mn, mx, mean, std, norm, nan, inf, zero, fp in columns
    ]
