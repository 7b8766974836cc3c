"""``replayer ranks`` on hand-made steps: point-to-point pairs, all-gather sizes, functional
collectives measured at their ``wait_tensor``, type mismatches, skipped collectives, malformed
attributes and damaged rank files."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

import tracefmt
from replayer.cli import main
from replayer.ranks import RanksReport, check_ranks
from tests.replayer.ranks.ranks_synth import Op, write_ops, write_run

AR = "c10d::allreduce_.default"
SEND, RECV = "c10d::send.default", "c10d::recv_.default"


def _check(run: Path) -> RanksReport:
    with tracefmt.open(run) as t:
        return check_ranks(t)


def _mismatches(report: RanksReport) -> list[tuple[str, tuple[int, ...], str]]:
    return [(m.kind, m.ranks, m.op) for g in report.groups for m in g.mismatches]


def test_p2p_pairs_match(tmp_path: Path) -> None:
    run = write_ops(
        tmp_path / "p2p",
        {
            0: [Op(SEND, 0, kind="p2p", peer=1, written=0)],
            1: [Op(RECV, 0, kind="p2p", peer=0, sent=0)],
        },
    )
    assert _check(run).consistent


def test_p2p_send_without_receive_and_size(tmp_path: Path) -> None:
    run = write_ops(
        tmp_path / "p2p",
        {
            0: [
                Op(SEND, 0, kind="p2p", peer=1, written=0),
                Op(SEND, 1, kind="p2p", peer=1, written=0, module="tail"),
            ],
            1: [Op(RECV, 0, kind="p2p", peer=0, sent=0, written=8)],
        },
    )
    found = _mismatches(_check(run))
    assert ("p2p", (0, 1), RECV) in found  # 4 elements sent, 8 received
    assert ("missing", (1,), SEND) in found  # rank 1 posted no receive for the second send


def test_all_gather_output_is_input_times_group_size(tmp_path: Path) -> None:
    ag = "c10d::_allgather_base_.default"
    good = write_ops(tmp_path / "good", {r: [Op(ag, 0, sent=4, written=8)] for r in (0, 1)})
    assert _check(good).consistent
    bad = write_ops(
        tmp_path / "bad", {0: [Op(ag, 0, sent=4, written=8)], 1: [Op(ag, 0, sent=4, written=6)]}
    )
    found = _mismatches(_check(bad))
    assert found
    assert all(kind == "size" and ranks == (1,) and op == ag for kind, ranks, op in found)


def test_functional_all_reduce_compared_at_its_wait(tmp_path: Path) -> None:
    ar, wait = "_c10d_functional::all_reduce.default", "_c10d_functional::wait_tensor.default"
    run = write_ops(
        tmp_path / "funcol",
        {
            r: [Op(ar, 0, measured=False), Op(wait, 0, value=1.0 + r)]  # rank 1 waits on other values
            for r in (0, 1)
        },
    )
    report = _check(run)
    (g,) = report.groups
    assert g.matched == 1  # the wait_tensor is not a second collective
    (v,) = g.values
    assert (v.kind, v.name, v.ranks) == ("collective_output", ar, (1,))


def test_type_mismatch_and_skipped_collective(tmp_path: Path) -> None:
    bc = "c10d::broadcast_.default"
    run = write_ops(tmp_path / "type", {0: [Op(AR, 0)], 1: [Op(bc, 0)]})
    assert _mismatches(_check(run)) == [("type", (1,), bc)]
    four = {r: [Op(AR, 0, module="a"), Op(AR, 1, sent=8, written=8, module="b")] for r in range(3)}
    four[3] = [Op(AR, 0, sent=8, written=8, module="b")]
    report = _check(write_ops(tmp_path / "skip", four))
    (m,) = [m for g in report.groups for m in g.mismatches]
    assert (m.kind, m.ranks, m.op, m.module, m.step) == ("missing", (3,), AR, "a", 0)
    assert "rank 3 skipped" in m.message


def test_malformed_c10d_attribute_is_a_note(tmp_path: Path) -> None:
    run = write_ops(tmp_path / "bad", {0: [Op(AR, 0)], 1: [Op(AR, 0, c10d={"group": 5})]})
    report = _check(run)
    assert any("malformed 'c10d' attribute" in n for n in report.notes)
    # rank 1's op is left out, so the all-reduce looks skipped there
    assert _mismatches(report) == [("missing", (1,), AR)]


def test_damaged_rank_file_is_no_data(tmp_path: Path) -> None:
    run = write_run(tmp_path / "damaged", steps=2)
    tracefmt.rank_file_path(run, 1).write_bytes(b"not an HDF5 file at all" * 100)
    report = _check(run)
    (d,) = report.no_data
    assert (d.rank, d.step) == (1, None)
    assert "cannot be read" in d.reason
    assert not _mismatches(report)
    result = CliRunner().invoke(main, ["ranks", str(run)])
    assert result.exit_code == 1
    assert "rank 1's file cannot be read" in result.output
