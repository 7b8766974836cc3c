"""``replayer ranks``: when each rank entered each matched collective (op start times, format
1.3), the spread across the group and the rank the others waited for."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import tracefmt
from replayer.cli import main
from replayer.errors import ReplayError
from replayer.ranks import Arrival, RanksReport, check_ranks
from replayer.ranks.arrival import Widest
from tests.replayer.ranks.ranks_synth import Faults, write_run

ALLREDUCE = "c10d::allreduce_.default"
BROADCAST = "c10d::broadcast_.default"
LATE_NS = 2_000_000


def _check(run: Path, step: int | None = None, **kw: int) -> RanksReport:
    with tracefmt.open(run) as t:
        return check_ranks(t, step, **kw)


def test_a_late_rank_is_the_last_to_arrive(tmp_path: Path) -> None:
    run = write_run(tmp_path / "late", world=4, faults=Faults(late={(3, 1): LATE_NS}))
    report = _check(run)
    assert report.consistent  # arriving late is a time, not a finding
    (group,) = report.groups
    assert group.timed == 6  # a broadcast and an all-reduce per step, 3 steps
    widest = group.arrivals[0]
    assert (widest.step, widest.op, widest.seq) == (1, ALLREDUCE, 1)
    assert (widest.last_rank, widest.spread_ns) == (3, LATE_NS)
    assert [r for r, _ in widest.starts] == [0, 1, 2, 3]
    on_time = dict(widest.starts)[0]
    assert dict(widest.starts) == {0: on_time, 1: on_time, 2: on_time, 3: on_time + LATE_NS}
    assert [a.spread_ns for a in group.arrivals[1:]] == [0] * 5
    by_step = {s.step: s.widest_arrival for s in report.step_times}
    assert by_step[1] == widest
    assert by_step[0] is not None
    assert by_step[0].spread_ns == 0


def test_arrivals_in_json_and_in_the_table(tmp_path: Path) -> None:
    run = write_run(tmp_path / "late", faults=Faults(late={(0, 2): LATE_NS}))
    result = CliRunner().invoke(main, ["ranks", str(run), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    first = data["groups"][0]["arrivals"][0]
    assert first["step"] == 2
    assert first["op"] == ALLREDUCE
    assert first["last_rank"] == 0
    assert first["first_rank"] == 1
    assert first["spread_ns"] == LATE_NS
    assert first["starts"][0][1] - first["starts"][1][1] == LATE_NS  # [rank, ns] pairs
    assert data["step_times"][2]["widest_arrival"] == first
    assert data["groups"][0]["timed"] == 6
    text = CliRunner().invoke(main, ["ranks", str(run)])
    assert text.exit_code == 0, text.output
    assert "Arrival at collectives" in text.output
    assert re.search(r"clocks\s+of\s+different\s+hosts\s+are\s+not\s+compared", text.output)
    (row,) = [line for line in text.output.splitlines() if "allreduce_ #1" in line]
    cells = [c.strip() for c in row.split("│")]
    assert cells[1:6] == ["2", "c10d::allreduce_ #1", "2.0 ms", "rank 0 at 2.0 ms", "rank 1 at 14 us"]


def test_max_arrivals_keeps_the_widest(tmp_path: Path) -> None:
    late = {(1, 0): 3_000, (1, 1): 9_000, (1, 2): 5_000}
    run = write_run(tmp_path / "late", faults=Faults(late=late))
    (group,) = _check(run, max_arrivals=2).groups
    assert [(a.step, a.spread_ns) for a in group.arrivals] == [(1, 9_000), (2, 5_000)]
    assert group.timed == 6
    result = CliRunner().invoke(main, ["ranks", str(run), "--json", "--max-arrivals", "1"])
    assert len(json.loads(result.output)["groups"][0]["arrivals"]) == 1
    with pytest.raises(ReplayError, match="max_arrivals"):
        _check(run, max_arrivals=0)


def test_no_arrivals_without_start_times(tmp_path: Path) -> None:
    """Traces older than 1.3 (no starts), or a rank without them: nothing to compare."""
    old = {(r, s) for r in (0, 1) for s in range(3)}
    run = write_run(tmp_path / "old", faults=Faults(no_starts=old))
    report = _check(run)
    (group,) = report.groups
    assert (group.arrivals, group.timed) == ((), 0)
    assert all(s.widest_arrival is None for s in report.step_times)
    text = CliRunner().invoke(main, ["ranks", str(run)])
    assert "Arrival at collectives" not in text.output
    one = write_run(tmp_path / "one", faults=Faults(no_starts={(1, 0)}))
    (group,) = _check(one, 0).groups
    assert group.timed == 0  # two ranks, one of them timed


def _arrival(spread: int, step: int) -> Arrival:
    return Arrival(step, "g", ALLREDUCE, "", 0, ((0, 0), (1, spread)), 0, 1, spread)


def test_widest_keeps_n_widest_earlier_first_on_a_tie() -> None:
    w = Widest(2)
    for step, spread in enumerate([5, 1, 7, 5, 0]):
        w.add(_arrival(spread, step))
    assert [(a.spread_ns, a.step) for a in w.widest()] == [(7, 2), (5, 0)]
    assert w.seen == 5
