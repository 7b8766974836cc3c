"""The typed result of ``replayer ranks``: plain frozen dataclasses, so callers read fields.

A :class:`RanksReport` holds what the cross-rank check found over the steps it read: ranks that
have no data (:class:`NoData`), collectives that do not match across the ranks of their process
group (:class:`Mismatch`, per :class:`GroupReport`), numbers that should be the same on every
replica and are not (:class:`ValueFinding`, with the op where two replicas part:
:class:`Parting`), and where the time went (:class:`RankTime`, :class:`StepTime`, and when the
ranks entered their collectives: :class:`Arrival`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

#: Kinds of :class:`Mismatch`: what differs between the ranks of a group.
MISMATCH_KINDS = ("type", "size", "dtype", "reduce_op", "root", "missing", "extra", "p2p")
#: Kinds of :class:`ValueFinding`.
VALUE_KINDS = ("collective_output", "parameter", "gradient")


@dataclass(frozen=True, slots=True)
class NoData:
    """A rank with no data for a step (``step`` ``None``: for any step; its file is missing or
    damaged).  Reported apart from a rank that skipped a collective: the rank may well have run
    it, there is just nothing recorded to say so.  ``last_step`` is the rank's last committed
    step, when it has a readable file."""

    rank: int
    step: int | None
    reason: str
    last_step: int | None


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One collective (or point-to-point op) that does not match across its group.

    ``kind`` is one of :data:`MISMATCH_KINDS`; ``ranks`` are the ranks at fault (the ones that
    differ from the others, skipped the op, or issued an extra one); ``op`` and ``module`` name the
    op and the module that issued it (from a rank that ran it), ``seq`` its sequence number on that
    rank.  ``values`` gives each involved rank's value of what differs, as text.
    """

    kind: str
    step: int
    group: str
    ranks: tuple[int, ...]
    op: str
    module: str
    seq: int | None
    values: tuple[tuple[int, str], ...]
    message: str


@dataclass(frozen=True, slots=True)
class Parting:
    """Where two replicas' values part in one step (found with :func:`replayer.diff.diff_steps`).

    ``how``: ``"entry"`` (a parameter already differs when the step starts), ``"structural"``
    (an op only one rank ran), ``"op"`` (an op that read identical inputs on both ranks and wrote
    different outputs) or ``"origin"`` (the diff's origin, when neither of those is found after the
    step's last collective).  ``op``, ``module``, ``phase`` and ``index`` describe the op on
    ``rank_b`` (on ``rank_a`` for an op only it ran); ``index`` is ``None`` when no op is named.
    """

    step: int
    rank_a: int
    rank_b: int
    how: str
    op: str
    module: str
    phase: str
    index: int | None
    message: str


@dataclass(frozen=True, slots=True)
class ValueFinding:
    """Numbers that should be identical across ranks and are not.

    ``kind`` is one of :data:`VALUE_KINDS`.  ``name`` is the parameter or gradient (the first that
    differs, in the reference rank's order) or the collective op; ``ranks`` differ from
    ``reference`` (the ranks holding the most common fingerprint).  ``count`` is how many
    parameters (gradients) differ in the step; ``names`` the first of them.
    """

    kind: str
    step: int
    group: str
    name: str
    module: str
    seq: int | None
    ranks: tuple[int, ...]
    reference: tuple[int, ...]
    count: int
    names: tuple[str, ...]
    parting: Parting | None
    message: str


@dataclass(frozen=True, slots=True)
class Arrival:
    """When the ranks of a group entered one collective (format 1.3 traces record each op's host
    start).

    ``starts`` are (rank, ns) for each rank whose start was recorded: when it entered the
    collective, in nanoseconds after *its own* step's start.  Ranks' clocks are not synchronised
    across hosts, so only these times since each rank's step start are compared, never the clock
    readings; a rank that began its step late looks that much early.  ``spread_ns`` is the latest
    start minus the earliest: how long ``first_rank`` waited in the collective for ``last_rank``,
    the rank that arrived last and that the others waited for (on a tie, the lowest rank is
    both first and last).  ``op``, ``module`` and ``seq`` name the collective as the group's
    reference rank issued it.
    """

    step: int
    group: str
    op: str
    module: str
    seq: int
    starts: tuple[tuple[int, int], ...]
    first_rank: int
    last_rank: int
    spread_ns: int


@dataclass(frozen=True, slots=True)
class GroupReport:
    """One process group: its ranks, how many collectives matched on all of them, and the first
    ``max_mismatches`` mismatches and value findings (``omitted`` counts the rest).

    ``arrivals`` are the group's collectives whose ranks arrived furthest apart, widest spread
    first (at most ``max_arrivals``); ``timed`` counts its collectives with a start recorded on
    two ranks or more (every one of them had an :class:`Arrival`).
    """

    group: str
    name: str
    ranks: tuple[int, ...]
    matched: int
    checked: int
    mismatches: tuple[Mismatch, ...]
    values: tuple[ValueFinding, ...]
    omitted: int
    arrivals: tuple[Arrival, ...] = ()
    timed: int = 0


@dataclass(frozen=True, slots=True)
class RankTime:
    """One rank over the steps read: recorded step time and host time inside c10d ops (seconds;
    NaN when nothing was measured)."""

    rank: int
    steps: int
    step_time: float
    collective_time: float
    collectives: int


@dataclass(frozen=True, slots=True)
class StepTime:
    """One step: the slowest rank and the spread of the ranks' recorded step times (seconds, NaN
    when none was recorded), and the collective whose ranks arrived furthest apart (``None``: no
    collective had starts on two ranks)."""

    step: int
    slowest_rank: int | None
    slowest: float
    fastest: float
    median: float
    widest_arrival: Arrival | None = None


@dataclass(frozen=True, slots=True)
class RanksReport:
    """What ``replayer ranks`` found.  ``consistent``: nothing to report (exit status 0)."""

    path: str
    steps: tuple[int, ...]
    expected_ranks: tuple[int, ...]
    ranks: tuple[int, ...]
    no_data: tuple[NoData, ...]
    groups: tuple[GroupReport, ...]
    replicas: tuple[ValueFinding, ...]
    times: tuple[RankTime, ...]
    step_times: tuple[StepTime, ...]
    notes: tuple[str, ...]

    @property
    def consistent(self) -> bool:
        return not (
            self.no_data
            or self.replicas
            or any(g.mismatches or g.values or g.omitted for g in self.groups)
        )

    @property
    def slowest_rank(self) -> int | None:
        """The rank with the largest total recorded step time (``None`` when none was recorded)."""
        timed = [t for t in self.times if t.step_time == t.step_time]  # NaN != NaN
        return max(timed, key=lambda t: (t.step_time, -t.rank)).rank if timed else None

    def to_json(self) -> dict[str, Any]:
        """JSON data (print it with :func:`tracefmt.jsonout.dumps`: non-finite numbers as text)."""
        data = asdict(self)
        data["consistent"] = self.consistent
        data["slowest_rank"] = self.slowest_rank
        return data
