"""One recorded step as Chrome Trace Event Format events (``tracefmt export-trace``).

The Trace Event Format (the JSON that chrome://tracing and ui.perfetto.dev open) is a JSON object
whose ``traceEvents`` array holds the events.  A step becomes, for each rank:

* a process (``pid`` is the rank plus one: Perfetto treats pid 0 as the kernel's idle task)
  named ``rank R`` by ``process_name`` metadata (``ph: "M"``), with one thread (``tid`` 1);
* on that thread, nested complete slices (``ph: "X"``): the phases (forward, backward,
  optimizer, other) outermost, inside them one slice per module path level (``a``, ``a.b``,
  ``a.b.c``), inside those one slice per op, named as recorded (``aten::mm.default``), whose
  ``args`` hold the op index, module, phase, input and output dtypes and shapes, host and device
  time, memory, and its outputs' statistics (the first :data:`MAX_STATS` outputs);
* a counter track (``ph: "C"``) of the cumulative ``mem_bytes`` of the step's ops;
* the step's events (``tracefmt.Event``) as instant events (``ph: "i"``) at their op.

Times are microseconds with nanosecond decimals: each op starts at its recorded
``host_start_ns`` and lasts its ``host_ns``.  A module or phase slice spans a run of consecutive
ops inside it (from the first one's start to the last one's end), so slices nest by
construction.  Ops without a measured start (files before format 1.3, ops the recorder did not
time) are laid end to end after the op before them; an op whose recorded start falls before the
previous op's end is moved to that end (their counts are in ``otherData``).  An op without a
host time lasts 0.  Ranks are placed on one axis by their steps' ``wall_time`` (as close as
their hosts' clocks agree: within a rank, starts come from one monotonic clock).

:mod:`tracefmt.traceexport` writes these events to files under a size cap.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from tracefmt.jsonout import plain
from tracefmt.model import OpNode
from tracefmt.reader import Step
from tracefmt.summary import shapes_text

__all__ = [
    "MAX_STATS",
    "TID",
    "OpUnit",
    "RankTimeline",
    "align",
    "dumps_event",
    "metadata_events",
    "rank_timeline",
    "trace_events",
]

#: Outputs of an op whose statistics go into its slice's ``args`` (a ``_foreach`` op has hundreds).
MAX_STATS = 8
#: The thread of a rank's process that carries its slices.
TID = 1
_STATS = ("min", "max", "mean", "std", "norm", "nan", "inf", "zero")


class OpUnit(NamedTuple):
    """One op's events (its slice, counter sample and instant events, as JSON text), with the
    phase and module slices around it, for packing into files."""

    ts_ns: int
    rank: int
    text: str
    parents: tuple[int, ...]  #: indices into the structure slices, outermost first


class RankTimeline(NamedTuple):
    """The events of one rank's step: its ops' units in time order, the phase and module
    slices around them, and how many op starts the layout made up."""

    units: list[OpUnit]
    structure: list[dict[str, Any]]  #: phase and module slices, ids counted from a base
    unmeasured: int
    moved: int


def dumps_event(event: dict[str, Any]) -> str:
    """One event as compact strict JSON."""
    return json.dumps(event, separators=(",", ":"), allow_nan=False)


def _us(ns: int) -> float:
    return ns / 1000


def _op_args(step: Step, op: OpNode, measured: bool) -> dict[str, Any]:
    tensors = step.tensors
    args: dict[str, Any] = {
        "op": op.index,
        "module": op.module,
        "phase": op.phase.label,
        "inputs": shapes_text([tensors[i] for i in op.inputs]),
        "outputs": shapes_text([tensors[i] for i in op.outputs]),
        "host_ns": op.host_ns,
    }
    if not measured:
        args["start"] = "not recorded: laid after the previous op"
    for key in ("device_ns", "mem_bytes", "source"):
        value = getattr(op, key)
        if value is not None:
            args[key] = value
    stats = []
    for i in op.outputs[:MAX_STATS]:
        st = tensors[i].stats
        if st is not None:
            row = {k: getattr(st, k) for k in _STATS if getattr(st, k) is not None}
            stats.append(plain({"tensor": i, **row}))
    if stats:
        args["output_stats"] = stats
    if len(op.outputs) > MAX_STATS:
        args["output_stats_omitted"] = len(op.outputs) - MAX_STATS
    return args


def _prefixes(module: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b``, ``a.b.c``; the top level (``""``) has none."""
    if not module:
        return []
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def rank_timeline(step: Step, offset_ns: int, base: int) -> RankTimeline:
    """The events of one rank's step, starting ``offset_ns`` into the common time axis (see
    :func:`align`), its phase and module slices numbered from ``base``."""
    pid = step.rank + 1
    structure: list[dict[str, Any]] = []
    open_keys: list[tuple[str, str]] = []  # (category, name) of the open slices, outermost first
    open_ids: list[int] = []
    ends: dict[int, int] = {}  # slice id -> end (ns), filled when it closes
    units: list[OpUnit] = []
    events_at: dict[int | None, list[dict[str, Any]]] = {}
    for e in step.events:
        at = e.op if e.op is not None and 0 <= e.op < len(step.ops) else None
        args = {"kind": e.kind, "message": e.message, "op": e.op, "tensor": e.tensor}
        events_at.setdefault(at, []).append({"name": e.kind, "cat": "event", "args": args})
    cursor = unmeasured = moved = memory = 0

    def close(keep: int, end: int) -> None:
        for sid in open_ids[keep:]:
            ends[sid] = end
        del open_keys[keep:], open_ids[keep:]

    for op in step.ops:
        start = op.host_start_ns
        if start is None:
            start, unmeasured = cursor, unmeasured + 1
        elif start < cursor:
            start, moved = cursor, moved + 1
        dur = max(op.host_ns or 0, 0)
        want = [("phase", op.phase.label), *(("module", m) for m in _prefixes(op.module))]
        keep = 0
        while keep < min(len(want), len(open_keys)) and want[keep] == open_keys[keep]:
            keep += 1
        close(keep, cursor)
        for cat, name in want[keep:]:
            open_keys.append((cat, name))
            open_ids.append(base + len(structure))
            args = {"phase": op.phase.label} if cat == "phase" else {"module": name}
            structure.append({"name": name, "cat": cat, "ts": start, "args": args})
        ts = offset_ns + start
        texts = []
        if not units:  # the counter starts at 0 with the step
            texts.append(_counter(pid, ts, 0))
        texts.append(
            dumps_event(
                {
                    "name": op.name,
                    "cat": "op",
                    "ph": "X",
                    "ts": _us(ts),
                    "dur": _us(dur),
                    "pid": pid,
                    "tid": TID,
                    "args": _op_args(step, op, op.host_start_ns is not None),
                }
            )
        )
        if op.mem_bytes:
            memory += op.mem_bytes
            texts.append(_counter(pid, ts + dur, memory))
        for ev in events_at.pop(op.index, ()):
            texts.append(_instant(ev, pid, ts))
        units.append(OpUnit(ts, step.rank, ",\n".join(texts), tuple(open_ids)))
        cursor = start + dur
    close(0, cursor)
    rest = [ev for evs in events_at.values() for ev in evs]  # events of no op: at the step's start
    if rest:
        text = ",\n".join(_instant(ev, pid, offset_ns) for ev in rest)
        units.insert(0, OpUnit(offset_ns, step.rank, text, ()))
    for i, s in enumerate(structure):
        s.update(ph="X", pid=pid, tid=TID, dur=_us(ends[base + i] - s["ts"]))
        s["ts"] = _us(offset_ns + s["ts"])
    return RankTimeline(units, structure, unmeasured, moved)


def _counter(pid: int, ts_ns: int, value: int) -> str:
    event = {"name": "mem_bytes", "cat": "memory", "ph": "C", "ts": _us(ts_ns), "pid": pid}
    return dumps_event({**event, "args": {"cumulative": value}})


def _instant(event: dict[str, Any], pid: int, ts_ns: int) -> str:
    return dumps_event({**event, "ph": "i", "s": "t", "ts": _us(ts_ns), "pid": pid, "tid": TID})


def metadata_events(rank: int, step: int) -> list[str]:
    """The ``process_name``, ``process_sort_index`` and ``thread_name`` events of ``rank``."""
    pid = rank + 1
    return [
        dumps_event({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": f"rank {rank}"}}),
        dumps_event({"name": "process_sort_index", "ph": "M", "pid": pid, "args": {"sort_index": rank}}),
        dumps_event(
            {
                "name": "thread_name",
                "ph": "M",
                "pid": pid,
                "tid": TID,
                "args": {"name": f"step {step} ops (host)"},
            }
        ),
    ]


def align(wall_times: Sequence[float]) -> tuple[list[int], str]:
    """Where each rank's step starts on the common time axis (ns after the earliest), from the
    steps' ``wall_time``, and a sentence saying how the ranks were aligned."""
    if len(wall_times) > 1 and all(math.isfinite(w) and w > 0 for w in wall_times):
        first = min(wall_times)
        offsets = [round((w - first) * 1e9) for w in wall_times]
        return offsets, "ranks aligned by their steps' wall_time"
    return [0] * len(wall_times), "every rank's step starts at 0"


def trace_events(steps: Sequence[Step]) -> dict[str, Any]:
    """The whole Trace Event Format document of ``steps`` (one per rank), in memory, unsplit."""
    offsets, alignment = align([step.wall_time for step in steps])
    lines: list[RankTimeline] = []
    for step, offset in zip(steps, offsets, strict=True):
        lines.append(rank_timeline(step, offset, sum(len(line.structure) for line in lines)))
    texts = [m for step in steps for m in metadata_events(step.rank, step.step)]
    texts += [dumps_event(event) for line in lines for event in line.structure]
    texts += [unit.text for line in lines for unit in line.units]
    events: list[dict[str, Any]] = json.loads("[" + ",".join(texts) + "]")
    return {"traceEvents": events, "otherData": {"alignment": alignment}}
