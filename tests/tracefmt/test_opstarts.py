"""Op start times (format 1.3): the ``op_starts`` table along ``op_stats``, read as
``OpNode.host_start_ns``; files without it (1.0 to 1.2) read with every start None."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import tracefmt
from tests import badfiles as bad
from tests.synth import mlp_graph, synthetic_step
from tracefmt import TraceWriter
from tracefmt import _layout as L
from tracefmt.cli import main
from tracefmt.records import StepRecord
from tracefmt.torecord import step_record
from tracefmt.validate import validate

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "1.0"


def _write(path: Path, records: list[StepRecord]) -> Path:
    with TraceWriter(path, fsync=False) as w:
        for r in records:
            w.write_step(r)
    return path


def test_starts_round_trip_with_and_without_other_timings(tmp_path: Path) -> None:
    graph = mlp_graph()
    n = graph.num_ops
    rng = np.random.default_rng(0)
    timed = synthetic_step(0, graph, rng, with_values=False)  # host_ns and starts
    starts_only = StepRecord(1, graph, op_starts=[-1, *range(1_000, 1_000 * n, 1_000)])
    no_starts = synthetic_step(2, graph, rng, with_values=False)
    no_starts.op_starts = None
    nothing = StepRecord(3, graph)
    path = _write(tmp_path / "t.tft.h5", [timed, starts_only, no_starts, nothing])
    assert timed.op_starts is not None
    assert timed.op_stats is not None
    with tracefmt.open(path) as t:
        ops = t.step(0).ops
        assert [op.host_start_ns for op in ops] == [int(x) for x in timed.op_starts]
        assert [op.host_ns for op in ops] == timed.op_stats["host_ns"].tolist()
        ops = t.step(1).ops
        assert [op.host_start_ns for op in ops] == [None, *range(1_000, 1_000 * n, 1_000)]
        assert {op.host_ns for op in ops} == {None}
        assert {op.host_start_ns for op in t.step(2).ops} == {None}
        assert t.step(2).ops[0].host_ns is not None
        assert {op.host_start_ns for op in t.step(3).ops} == {None}
        # extract's copy keeps them
        assert step_record(t.step(0)).op_starts == [int(x) for x in timed.op_starts]
        assert step_record(t.step(1)).op_starts == starts_only.op_starts
        assert step_record(t.step(2)).op_starts is None
    with h5py.File(path, "r", swmr=True) as f:  # one op_starts row per op_stats row, always
        assert f[L.OP_STARTS].shape == f[L.OP_STATS].shape == (3 * n,)
    assert validate(path, deep=True) == []


def test_record_refuses_starts_of_another_length() -> None:
    record = StepRecord(0, mlp_graph(), op_starts=[0, 1])
    with pytest.raises(ValueError, match="op timing rows"):
        record.check()


def _as_1_2(path: Path) -> Path:
    """What a 1.2 writer wrote: the same layout without ``op_starts``."""
    bad.delete(path, L.OP_STARTS)
    return bad.set_attr(path, "format_version", "1.2")


def test_a_1_2_file_reads_with_no_starts(tmp_path: Path) -> None:
    record = synthetic_step(0, mlp_graph(), np.random.default_rng(0), with_values=False)
    path = _as_1_2(_write(tmp_path / "t.tft.h5", [record]))
    assert record.op_stats is not None
    with tracefmt.open(path) as t:
        assert t.rank_file().version.minor == 2
        ops = t.step(0).ops
        assert {op.host_start_ns for op in ops} == {None}
        assert [op.host_ns for op in ops] == record.op_stats["host_ns"].tolist()
    assert validate(path, deep=True) == []


def test_a_1_3_file_without_op_starts_is_refused(tmp_path: Path) -> None:
    """From 1.3 the table is required (TF-LAYOUT-001): the reader says which dataset is missing."""
    record = synthetic_step(0, mlp_graph(), np.random.default_rng(0), with_values=False)
    path = bad.delete(_write(tmp_path / "t.tft.h5", [record]), L.OP_STARTS)
    with pytest.raises(tracefmt.TraceFormatError, match="op_starts"), tracefmt.open(path) as t:
        t.step(0)


def test_a_short_op_starts_table_is_an_error_naming_it(tmp_path: Path) -> None:
    record = synthetic_step(0, mlp_graph(), np.random.default_rng(0), with_values=False)
    path = bad.shorten(_write(tmp_path / "t.tft.h5", [record]), L.OP_STARTS, 2)
    with tracefmt.open(path) as t, pytest.raises(tracefmt.TraceFormatError, match="op_starts"):
        t.step(0)


@pytest.mark.parametrize("name", ["values.tft.h5", "stats_only.tft.h5", "run"])
def test_golden_traces_of_earlier_versions_have_no_starts(name: str) -> None:
    with tracefmt.open(GOLDEN / name) as t:
        for rank in t.ranks:
            for s in t.steps(rank):
                step = t.step(s, rank)
                assert {op.host_start_ns for op in step.ops} == {None}
                assert any(op.host_ns is not None for op in step.ops)


def test_show_prints_starts_when_the_step_has_them(tmp_path: Path) -> None:
    graph = mlp_graph()
    record = StepRecord(0, graph, op_starts=[12_300 * (i + 1) for i in range(graph.num_ops)])
    path = _write(tmp_path / "t.tft.h5", [record])
    runner = CliRunner()
    table = runner.invoke(main, ["show", str(path), "--step", "0"])
    assert table.exit_code == 0, table.output
    assert "start us" in table.stdout
    assert "24.6" in table.stdout
    data = json.loads(runner.invoke(main, ["show", str(path), "--step", "0", "--json"]).stdout)
    assert [op["host_start_ns"] for op in data["ops"]][:2] == [12_300, 24_600]
    old = runner.invoke(main, ["show", str(GOLDEN / "values.tft.h5"), "--step", "100"])
    assert old.exit_code == 0
    assert "start us" not in old.stdout
