"""``replayer ranks``: check a run's ranks against each other, one step at a time.

For each step it reads each rank's step once, keeps its :class:`~replayer.ranks.digest.RankDigest`
(collectives, parameter and gradient fingerprints, times) and lets the step go, so a run of
hundreds of ranks needs the memory of one step plus a digest per rank.  Then it matches the
collectives of each process group (:mod:`replayer.ranks.matching`), compares the numbers that
should agree (:mod:`replayer.ranks.replicas`) and, where the trace recorded op start times, says
when each rank entered each matched collective (:mod:`replayer.ranks.arrival`).

Example::

    with tracefmt.open("runs/ddp") as trace:
        report = check_ranks(trace, step=1)
    for group in report.groups:
        for m in group.mismatches:
            print(m.message)
"""

from __future__ import annotations

import functools
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from replayer.errors import ReplayError
from replayer.ranks.arrival import Widest, arrival
from replayer.ranks.digest import CollectiveRow, RankDigest, digest_step
from replayer.ranks.findings import (
    Arrival,
    GroupReport,
    Mismatch,
    NoData,
    RanksReport,
    RankTime,
    StepTime,
    ValueFinding,
)
from replayer.ranks.matching import match_group, match_p2p
from replayer.ranks.replicas import collective_values, replica_values
from tracefmt import Step, Trace, TraceError

#: At most this many notes (malformed attributes ...) are kept; the rest are counted.
MAX_NOTES = 50

_T = TypeVar("_T")


@dataclass(slots=True)
class _Times:
    """One rank's times summed over the steps checked (NaN: none measured)."""

    steps: int = 0
    seconds: float = math.nan
    comm_seconds: float = math.nan
    comm_ops: int = 0


@dataclass
class _Group:
    name: str
    ranks: tuple[int, ...]
    cap: int
    arrivals: Widest
    matched: int = 0
    checked: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    values: list[ValueFinding] = field(default_factory=list)
    omitted: int = 0

    def add_mismatches(self, items: Sequence[Mismatch]) -> None:
        self._add(self.mismatches, items)

    def add_values(self, items: Sequence[ValueFinding]) -> None:
        self._add(self.values, items)

    def _add(self, kept: list[_T], items: Sequence[_T]) -> None:
        """Keep ``items`` in ``kept`` up to the cap; count the rest as omitted."""
        room = max(0, self.cap - len(kept))
        kept.extend(items[:room])
        self.omitted += max(0, len(items) - room)

    def report(self, gid: str) -> GroupReport:
        return GroupReport(
            gid,
            self.name,
            self.ranks,
            self.matched,
            self.checked,
            tuple(self.mismatches),
            tuple(self.values),
            self.omitted,
            self.arrivals.widest(),
            self.arrivals.seen,
        )


@dataclass
class _Ranks:
    """Which ranks the run should have, which it has, and which are reported as without data."""

    expected: tuple[int, ...]
    readable: tuple[int, ...]
    whole: dict[int, NoData]
    notes: list[str]


def _ranks(trace: Trace) -> _Ranks:
    notes: list[str] = []
    expected = trace.expected_ranks
    if trace.manifest_problem:
        notes.append(f"The run manifest cannot be used: {trace.manifest_problem}")
    elif trace.manifest is None and len(expected) > 1:
        notes.append(
            "The run has no manifest (run.json): the expected ranks come from the rank files' "
            "world size."
        )
    whole: dict[int, NoData] = {}
    for r in trace.missing_ranks:
        whole[r] = NoData(r, None, f"rank {r} has no file in {trace.path}.", None)
    for r, reason in trace.damaged_ranks.items():
        whole[r] = NoData(r, None, f"rank {r}'s file cannot be read: {reason}", None)
    return _Ranks(tuple(sorted(expected)), trace.ranks, whole, notes)


def check_ranks(
    trace: Trace,
    step: int | None = None,
    *,
    max_mismatches: int = 10,
    max_arrivals: int = 20,
    progress: Callable[[int, int], None] | None = None,
) -> RanksReport:
    """Check ``step`` (default: every step any rank recorded) across the ranks of ``trace``.

    ``max_mismatches`` bounds the mismatches and value findings kept per process group (the rest
    are counted in :attr:`GroupReport.omitted`), ``max_arrivals`` the collectives kept per group
    with their ranks' arrival times (those whose ranks arrived furthest apart; the number timed
    is :attr:`GroupReport.timed`).  ``progress(done, total)`` is called after each rank's step is
    read.
    """
    if max_mismatches < 1:
        raise ReplayError(f"max_mismatches must be at least 1, not {max_mismatches}.")
    if max_arrivals < 1:
        raise ReplayError(f"max_arrivals must be at least 1, not {max_arrivals}.")
    ranks = _ranks(trace)
    if not ranks.readable:
        raise ReplayError(f"No rank of {trace.path} can be read.")
    steps_of: dict[int, set[int]] = {}
    # With one step asked for, each rank's step is read with its step index: one visit per rank
    # file (a run keeps only a few files open; each visit to another opens it again).
    early: dict[int, RankDigest | TraceError] = {}
    for i, r in enumerate(ranks.readable):
        try:
            steps_of[r] = set(trace.steps(r))
        except TraceError as e:
            ranks.whole[r] = NoData(r, None, f"rank {r}'s step index cannot be read: {e}", None)
        else:
            if step is not None and step in steps_of[r]:
                early[r] = _digest(trace, step, r)
        if step is not None and progress is not None:
            progress(i + 1, len(ranks.readable))
    last = {r: max(s) if s else None for r, s in steps_of.items()}
    everything = sorted(set().union(*steps_of.values()))
    if step is None:
        steps = everything
    elif step in everything:
        steps = [step]
    else:
        raise ReplayError(
            f"No rank of {trace.path} recorded step {step}; the recorded steps are {_span(everything)}."
        )
    state = _State(ranks, last, max_mismatches, max_arrivals)
    total, done = len(steps) * len(steps_of), 0
    for s in steps:
        digests: dict[int, RankDigest] = {}
        for r in sorted(steps_of):
            if s not in steps_of[r]:
                state.no_data(r, s, f"rank {r} has no data for step {s}{_last_text(last[r], s)}.")
            else:
                read = early[r] if step is not None else _digest(trace, s, r)
                if isinstance(read, TraceError):
                    state.no_data(r, s, f"rank {r}'s step {s} cannot be read: {read}")
                else:
                    digests[r] = read
            done += 1
            if progress is not None and step is None:
                progress(done, total)
        state.check_step(s, digests, functools.partial(_load, trace, s))
    return state.finish(str(trace.path), tuple(steps))


def _load(trace: Trace, step: int, rank: int) -> Step:
    return trace.step(step, rank)


def _digest(trace: Trace, step: int, rank: int) -> RankDigest | TraceError:
    try:
        return digest_step(trace.step(step, rank), world_size=trace.world_size)
    except TraceError as e:
        return e


def _span(steps: list[int]) -> str:
    if not steps:
        return "none"
    return f"{steps[0]}..{steps[-1]} ({len(steps)} steps)"


def _last_text(last: int | None, step: int) -> str:
    if last is None:
        return " (it committed no step)"
    if last < step:
        return f" (its last committed step is {last})"
    return ""


class _State:
    """What :func:`check_ranks` accumulates over the steps."""

    def __init__(self, ranks: _Ranks, last: Mapping[int, int | None], cap: int, arrivals: int) -> None:
        self.ranks = ranks
        self.last = last
        self.cap = cap
        self.arrivals = arrivals
        self.groups: dict[str, _Group] = {}
        self.nodata: list[NoData] = [
            NoData(d.rank, d.step, d.reason, last.get(d.rank)) for d in ranks.whole.values()
        ]
        self.replicas: list[ValueFinding] = []
        self.notes: list[str] = list(ranks.notes)
        self.dropped_notes = 0
        self.times: dict[int, _Times] = defaultdict(_Times)
        self.step_times: list[StepTime] = []

    def no_data(self, rank: int, step: int, reason: str) -> None:
        self.nodata.append(NoData(rank, step, reason, self.last.get(rank)))

    def note(self, text: str) -> None:
        if len(self.notes) < MAX_NOTES:
            self.notes.append(text)
        else:
            self.dropped_notes += 1

    def check_step(
        self, step: int, digests: Mapping[int, RankDigest], load: Callable[[int], Step]
    ) -> None:
        by_group: dict[str, dict[int, list[CollectiveRow]]] = defaultdict(lambda: defaultdict(list))
        info: dict[str, tuple[str, tuple[int, ...]]] = {}
        for d in digests.values():
            for n in d.notes:
                self.note(n)
            for row in d.collectives:
                by_group[row.group][row.rank].append(row)
                info.setdefault(row.group, (row.group_name, row.group_ranks))
            self._time(d)
        reported = {x.rank for x in self.nodata if x.step in (None, step)}
        widest: Arrival | None = None  # the step's collective whose ranks arrived furthest apart
        for gid in sorted(by_group):
            name, members = info[gid]
            g = self.groups.get(gid)
            if g is None:
                g = self.groups[gid] = _Group(name, members, self.cap, Widest(self.arrivals))
            for r in members:
                if r not in digests and r not in reported:
                    self.no_data(
                        r, step, f"rank {r} is in group {gid!r} but has no data for step {step}."
                    )
                    reported.add(r)
            rows = by_group[gid]
            present = [r for r in members if r in digests]
            coll = {r: [x for x in rows.get(r, []) if x.kind == "collective"] for r in present}
            p2p = {r: [x for x in rows.get(r, []) if x.kind == "p2p"] for r in present}
            if any(coll.values()):
                m = match_group(step, gid, coll, present)
                g.matched += m.matched
                g.checked += len(m.columns)
                g.add_mismatches(m.mismatches)
                g.add_values(collective_values(step, gid, m.columns))
                for column in m.columns:
                    a = arrival(step, gid, column)
                    if a is not None:
                        g.arrivals.add(a)
                        widest = a if widest is None or a.spread_ns > widest.spread_ns else widest
            if any(p2p.values()):
                g.add_mismatches(match_p2p(step, gid, p2p))
        findings, notes = replica_values(step, digests, load)
        self.replicas.extend(findings)
        for n in notes:
            self.note(n)
        timed = {r: d.duration for r, d in digests.items() if math.isfinite(d.duration)}
        if timed:
            slow = max(timed, key=lambda r: (timed[r], -r))
            self.step_times.append(
                StepTime(
                    step,
                    slow,
                    timed[slow],
                    min(timed.values()),
                    statistics.median(timed.values()),
                    widest,
                )
            )
        elif widest is not None:
            self.step_times.append(StepTime(step, None, math.nan, math.nan, math.nan, widest))

    def _time(self, d: RankDigest) -> None:
        t = self.times[d.rank]
        t.steps += 1
        if math.isfinite(d.duration):
            t.seconds = d.duration if math.isnan(t.seconds) else t.seconds + d.duration
        if d.comm_timed:
            comm = d.comm_ns / 1e9
            t.comm_seconds = comm if math.isnan(t.comm_seconds) else t.comm_seconds + comm
        t.comm_ops += d.comm_ops

    def finish(self, path: str, steps: tuple[int, ...]) -> RanksReport:
        if self.dropped_notes:
            self.notes.append(f"... and {self.dropped_notes} more notes.")
        return RanksReport(
            path=path,
            steps=steps,
            expected_ranks=self.ranks.expected,
            ranks=self.ranks.readable,
            no_data=tuple(sorted(self.nodata, key=lambda x: (x.step is not None, x.step or 0, x.rank))),
            groups=tuple(g.report(gid) for gid, g in sorted(self.groups.items())),
            replicas=tuple(self.replicas),
            times=tuple(
                RankTime(r, t.steps, t.seconds, t.comm_seconds, t.comm_ops)
                for r, t in sorted(self.times.items())
            ),
            step_times=tuple(self.step_times),
            notes=tuple(self.notes),
        )
