"""``tracefmt export-trace``: the events of :mod:`tracefmt.chrometrace` written to files of at
most ``max_bytes`` each.

A large step is split into several files (``step.json``, ``step.1.json``, ...), each a complete
trace of one time window that opens on its own: it repeats the process names and the phase and
module slices around its ops, and says in ``otherData`` which part of how many it is.  The ops of
all ranks go into the files in time order, so each file covers every rank for its window.
Ranks are read one step at a time, and only their events, as JSON text, stay in memory.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tracefmt.chrometrace import RankTimeline, align, dumps_event, metadata_events, rank_timeline
from tracefmt.errors import TraceError
from tracefmt.progress import ProgressFn
from tracefmt.reader import Trace
from tracefmt.version import __version__

__all__ = ["DEFAULT_MAX_BYTES", "ChromeExport", "export_json", "export_trace", "part_path"]

#: The default size cap of one file (``--max-mb 100``).
DEFAULT_MAX_BYTES = 100 * 2**20


@dataclass(frozen=True)
class ChromeExport:
    """What :func:`export_trace` wrote: the files (the first is ``out``), the ranks in them, and
    what the layout had to make up."""

    files: tuple[Path, ...]
    step: int
    ranks: tuple[int, ...]
    ops: int
    #: ops without a recorded start, laid end to end after the op before them
    unmeasured_starts: int
    #: ops whose recorded start fell before the previous op's end, moved to that end
    moved_starts: int
    #: ranks of the trace left out (rank -> why), with ``ranks=None``: they lack the step
    skipped_ranks: dict[int, str] = field(default_factory=dict)
    #: files from an earlier, longer export next to ``out`` that this one did not overwrite
    stale: tuple[Path, ...] = ()


def part_path(out: Path, i: int) -> Path:
    """The ``i``-th file of an export to ``out``: ``out`` itself, then ``step.1.json``, ..."""
    if i == 0:
        return out
    if out.suffix == ".json":
        return out.with_name(f"{out.stem}.{i}.json")
    return out.with_name(f"{out.name}.{i}")


def _wall_times(
    trace: Trace, step: int, ranks: Sequence[int] | None
) -> tuple[dict[int, float], dict[int, str]]:
    """The ``wall_time`` of ``step`` on each rank of ``ranks`` (default: every rank that has it,
    the others left out with why), from the step index alone."""
    wanted = list(trace.ranks) if ranks is None else sorted(set(ranks))
    walls: dict[int, float] = {}
    skipped: dict[int, str] = {}
    for rank in wanted:
        try:
            f = trace.rank_file(rank)
            walls[rank] = float(f.step_rows()["wall_time"][f.find(step)])
        except TraceError as e:
            if ranks is not None:
                raise
            skipped[rank] = str(e)
    if not walls:
        raise TraceError(
            f"Step {step} is in no rank of {trace.path}; 'tracefmt ls' lists the recorded steps."
        )
    return walls, skipped


def export_trace(
    trace: Trace,
    step: int,
    out: str | Path,
    *,
    ranks: Sequence[int] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    progress: ProgressFn | None = None,
) -> ChromeExport:
    """Write step ``step`` of ``ranks`` (default: every rank that has it) to ``out`` in the
    Trace Event Format, split into files of at most ``max_bytes`` each (a file holds one op at
    least); ``progress(done, total)`` after each rank read.

    Example::

        with tracefmt.open("runs/gpt") as trace:
            export_trace(trace, 3, "step3.json").files  # (PosixPath('step3.json'),)
    """
    if max_bytes < 1:
        raise TraceError(f"The size cap must be a positive number of bytes, not {max_bytes}.")
    out = Path(out)
    walls, skipped = _wall_times(trace, step, ranks)
    offsets, alignment = align(list(walls.values()))
    lines: list[RankTimeline] = []
    metadata: list[str] = []
    ops = 0
    for done, (rank, offset) in enumerate(zip(walls, offsets, strict=True), 1):
        s = trace.step(step, rank)  # one rank's step at a time: only its events stay
        lines.append(rank_timeline(s, offset, sum(len(line.structure) for line in lines)))
        metadata += metadata_events(rank, step)
        ops += len(s.ops)
        if progress is not None:
            progress(done, len(walls))
    unmeasured = sum(line.unmeasured for line in lines)
    moved = sum(line.moved for line in lines)
    other: dict[str, Any] = {
        "exporter": f"tracefmt {__version__}",
        "trace": str(trace.path),
        "run_id": trace.run_id,
        "step": step,
        "ranks": list(walls),
        "alignment": alignment,
        "ops_without_start": unmeasured,
        "ops_moved": moved,
        "part": 10**9,  # the widest numbers, for the size of the header; set per file below
        "parts": 10**9,
    }
    fixed = len(_header(other)) + sum(len(m) + 2 for m in metadata) + len(_END)
    parts = _pack(lines, fixed, max_bytes)
    files = []
    for i, texts in enumerate(parts):
        path = part_path(out, i)
        other.update(part=i + 1, parts=len(parts))
        with path.open("w", encoding="utf-8") as f:
            f.write(_header(other))
            f.write(",\n".join([*metadata, *texts]))
            f.write(_END)
        files.append(path)
    stale: list[Path] = []
    while part_path(out, len(files) + len(stale)).exists():
        stale.append(part_path(out, len(files) + len(stale)))
    return ChromeExport(
        files=tuple(files),
        step=step,
        ranks=tuple(walls),
        ops=ops,
        unmeasured_starts=unmeasured,
        moved_starts=moved,
        skipped_ranks=skipped,
        stale=tuple(stale),
    )


_END = "\n]}\n"


def _pack(lines: list[RankTimeline], fixed: int, max_bytes: int) -> list[list[str]]:
    """The events of each file: the ops of every rank in time order, each file as many as fit in
    ``max_bytes`` (``fixed`` of it taken by the header and metadata; one op at least), each op
    preceded by the phase and module slices around it that its file does not hold yet (JSON
    text is ASCII: its length is its size in bytes)."""
    structure = [dumps_event(s) for line in lines for s in line.structure]
    units = heapq.merge(*(line.units for line in lines), key=lambda u: (u.ts_ns, u.rank))
    parts: list[list[str]] = []
    current: list[str] = []
    size = fixed
    included: set[int] = set()
    for unit in units:
        new = [p for p in unit.parents if p not in included]
        extra = sum(len(structure[p]) + 2 for p in new) + len(unit.text) + 2
        if current and size + extra > max_bytes:
            parts.append(current)
            current, size, included = [], fixed, set()
            new = list(unit.parents)
            extra = sum(len(structure[p]) + 2 for p in new) + len(unit.text) + 2
        current += [structure[p] for p in new]
        current.append(unit.text)
        included.update(new)
        size += extra
    parts.append(current)
    return parts


def _header(other: dict[str, Any]) -> str:
    return '{"otherData":' + dumps_event(other) + ',"traceEvents":[\n'


def export_json(result: ChromeExport) -> dict[str, Any]:
    """``result`` as JSON data (paths as strings), for ``--json``."""
    data = asdict(result)
    data["files"] = [str(p) for p in result.files]
    data["stale"] = [str(p) for p in result.stale]
    return data
