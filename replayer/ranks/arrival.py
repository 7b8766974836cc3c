"""When the ranks of a group entered each collective they matched on, and who arrived last.

A trace of format 1.3 records each op's host start, in nanoseconds after its rank's step start
(:attr:`tracefmt.OpNode.host_start_ns`).  A collective finishes only when its last rank arrives,
so the spread of its ranks' starts is how long the first rank waited, and the last rank is the
one the others waited for.  Ranks' clocks are not synchronised across hosts: starts are compared
as times since each rank's own step start, never as clock readings.

Example::

    for column in match_group(step, group, by_rank, members).columns:
        a = arrival(step, group, column)
        if a is not None and a.spread_ns > 1_000_000:
            print(f"rank {a.last_rank} arrived {a.spread_ns / 1e6:.1f} ms late at {a.op}")
"""

from __future__ import annotations

import heapq

from replayer.ranks.findings import Arrival
from replayer.ranks.matching import Column


def arrival(step: int, group: str, column: Column) -> Arrival | None:
    """The :class:`Arrival` of one matched collective; ``None`` when fewer than two of its ranks
    have a recorded start."""
    starts = tuple(
        sorted((r, row.start_ns) for r, row in column.rows.items() if row.start_ns is not None)
    )
    if len(starts) < 2:
        return None
    first = min(starts, key=lambda x: (x[1], x[0]))
    last = max(starts, key=lambda x: (x[1], -x[0]))
    ref = column.reference
    return Arrival(
        step=step,
        group=group,
        op=ref.op,
        module=ref.module,
        seq=ref.seq,
        starts=starts,
        first_rank=first[0],
        last_rank=last[0],
        spread_ns=last[1] - first[1],
    )


class Widest:
    """The ``n`` arrivals with the widest spread of those :meth:`add`-ed (on a tie, the earlier
    added), in bounded memory; :attr:`seen` counts them all."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0
        self._heap: list[tuple[int, int, Arrival]] = []  # (spread, -order, arrival): min first

    def add(self, a: Arrival) -> None:
        self.seen += 1
        item = (a.spread_ns, -self.seen, a)
        if len(self._heap) < self.n:
            heapq.heappush(self._heap, item)
        elif item[:2] > self._heap[0][:2]:
            heapq.heapreplace(self._heap, item)

    def widest(self) -> tuple[Arrival, ...]:
        """The kept arrivals, widest spread first."""
        return tuple(a for _, _, a in sorted(self._heap, key=lambda x: x[:2], reverse=True))
