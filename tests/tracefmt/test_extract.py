"""``tracefmt extract``: a run cut down to some steps of some ranks, read back bit for bit.

A synthetic 2-rank run (writer API) with values, statistics, histograms, events, scalars, dropped
counts, a NaN, per-step op attributes and storage offsets (format 1.1) and a manifest; steps 3:4
of rank 1 are extracted and every step must read back equal to the source's, field by field and bit
for bit, validate clean and diff identical.  Then the refusals, overwrite, and a recorded GPT trace.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

import tracefmt
from tests.checks import assert_stats_equal, assert_step_matches, same_float, same_json
from tests.synth import mlp_graph, synthetic_step
from tracefmt import (
    Event,
    ProcessGroupInfo,
    RunManifest,
    Step,
    StepRecord,
    TraceError,
    TraceWriter,
    group_id,
    rank_file_path,
    read_manifest,
    write_manifest,
)
from tracefmt import _layout as L
from tracefmt.cli import main as tracefmt_main
from tracefmt.extract import extract, parse_step_range
from tracefmt.stats import tensor_stats
from tracefmt.validate import validate
from tracefmt.writer import make_provenance

ROOT = Path(__file__).resolve().parents[2]
RUN_ID = "extract-test-run"
STEPS = 8
HIST_BINS = 8
#: The values filter of the source: not the default, so the test sees it carried over.
FILTER = "gzip"


def _record(rank: int, step: int, rng: np.random.Generator) -> StepRecord:
    """Step ``step`` of ``rank``: steps share one graph structure but not the optimizer's step
    size (op attributes) nor the input's storage offset; step 6 has a graph of its own; step 3
    has a NaN; every step has events, scalars and a dropped count."""
    graph = (
        mlp_graph(layers=3)
        if step == 6
        else mlp_graph(lr=0.01 * (1 + step % 3), input_offset=4 * (step % 2))
    )
    record = synthetic_step(step, graph, rng, hist_bins=HIST_BINS)
    values = dict(record.values)
    stats = np.array(record.stats)
    if step == 3:
        bad = np.array(values[0])
        bad.reshape(-1)[5] = np.nan
        values[0] = bad
        stats[0] = tensor_stats(bad, graph.tensors[0].dtype)
    del values[2]  # a tensor with statistics but no values
    return dataclasses.replace(
        record,
        values=values,
        stats=stats,
        events=[
            *record.events,
            Event("trigger", f"rank {rank}", op=1, tensor=2),
            Event("note", "no op or tensor"),
        ],
        scalars={"loss": float(rng.random()), "lr": 0.01 * (1 + step % 3), "rank": float(rank)},
        dropped=step % 3,
        duration=0.25 + step,
    )


def _manifest() -> RunManifest:
    return RunManifest(
        run_id=RUN_ID,
        world_size=2,
        expected_ranks=(0, 1),
        run_id_source="TORCHELASTIC_RUN_ID",
        process_groups=(ProcessGroupInfo(group_id("0", [0, 1]), "0", (0, 1), "gloo"),),
        created="2026-12-01T23:00:00Z",
        writer=f"tracefmt {tracefmt.__version__}",
    )


def _distributed(rank: int) -> dict[str, Any]:
    return {
        "rank": rank,
        "world_size": 2,
        "local_rank": rank,
        "local_world_size": 2,
        "node_rank": 0,
        "hostname": "node-a",
        "pid": 1000 + rank,
        "run_id_source": "TORCHELASTIC_RUN_ID",
        "backend": "gloo",
    }


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, list[StepRecord]]]:
    """A 2-rank run of STEPS steps and the records written to it."""
    run = tmp_path_factory.mktemp("extract") / "run"
    records: dict[int, list[StepRecord]] = {}
    for rank in (0, 1):
        rng = np.random.default_rng(rank)
        prov = make_provenance({"torch": "2.13.0", "recorder": "recorder"})
        prov = dataclasses.replace(prov, extra={**prov.extra, "distributed": _distributed(rank)})
        records[rank] = [_record(rank, s, rng) for s in range(STEPS)]
        with TraceWriter(
            rank_file_path(run, rank),
            run_id=RUN_ID,
            rank=rank,
            world_size=2,
            values_filter=FILTER,
            hist_bins=HIST_BINS,
            provenance=prov,
            fsync=False,
        ) as w:
            for r in records[rank]:
                w.write_step(r)
                w.flush()
    write_manifest(run, _manifest())
    assert validate(run) == []
    return run, records


def _cli(*args: str | Path) -> Result:
    return CliRunner().invoke(tracefmt_main, [str(a) for a in args])


def assert_same_step(got: Step, want: Step) -> None:
    """Two loaded steps hold the same things, bit for bit (their graph rows may differ)."""
    where = f"step {want.step}"
    assert (got.step, got.rank) == (want.step, want.rank), where
    assert len(got.ops) == len(want.ops), where
    for a, b in zip(got.ops, want.ops, strict=True):
        assert dataclasses.replace(a, attrs={}) == dataclasses.replace(b, attrs={}), where
        assert same_json(a.attrs, b.attrs), f"{where}, op {b.index}"
    assert len(got.tensors) == len(want.tensors), where
    for t, u in zip(got.tensors, want.tensors, strict=True):
        w = f"{where}, tensor {u.index}"
        assert (t.index, t.meta, t.has_values) == (u.index, u.meta, u.has_values), w
        assert_stats_equal(t.stats, u.stats, w)
        if u.histogram is None:
            assert t.histogram is None, w
        else:
            assert t.histogram is not None, w
            assert same_float(t.histogram.lo, u.histogram.lo), w
            assert same_float(t.histogram.hi, u.histogram.hi), w
            assert t.histogram.counts == u.histogram.counts, w
        if u.has_values:
            x, y = t.values(), u.values()
            assert (x.dtype, x.shape) == (y.dtype, y.shape), w
            assert x.tobytes() == y.tobytes(), w
    assert got.events == want.events, where
    assert list(got.scalars) == list(want.scalars), where
    assert all(same_float(got.scalars[k], v) for k, v in want.scalars.items()), where
    assert same_float(got.wall_time, want.wall_time), where
    assert same_float(got.duration, want.duration), where
    assert (got.dropped, got.has_nan, got.has_inf) == (want.dropped, want.has_nan, want.has_inf)


# -- the extract of item 5 ---------------------------------------------------------------------
def test_steps_3_4_of_rank_1_read_back_bit_for_bit(
    source: tuple[Path, dict[int, list[StepRecord]]], tmp_path: Path
) -> None:
    run, records = source
    small = tmp_path / "small"
    seen: list[tuple[int, int]] = []
    summary = extract(
        run, small, steps=range(3, 5), ranks=[1], progress=lambda d, t: seen.append((d, t))
    )
    assert seen == [(1, 2), (2, 2)]
    assert summary.run_id == RUN_ID
    assert summary.steps == 2
    assert summary.step_range == (3, 4)
    assert [(r.rank, r.steps, r.first_step, r.last_step) for r in summary.ranks] == [(1, 2, 3, 4)]
    assert summary.manifest
    assert summary.output_bytes < summary.source_bytes
    assert sorted(p.name for p in small.iterdir()) == ["rank-00001.tft.h5", "run.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left
    assert validate(small) == []
    assert validate(small, deep=True) == []

    with tracefmt.open(run) as src, tracefmt.open(small) as out:
        assert out.ranks == (1,)
        assert out.steps(1) == [3, 4]
        assert (out.run_id, out.world_size) == (RUN_ID, 2)
        f, g = out.rank_file(1), src.rank_file(1)
        assert (f.rank, f.values_filter, f.hist_bins) == (1, FILTER, HIST_BINS)
        for s in (3, 4):
            assert_same_step(out.step(s, 1), src.step(s, 1))
            assert_step_matches(out.step(s, 1), records[1][s])
        assert out.step(3, 1).has_nan
        # provenance: the source's, plus what was extracted
        extra = dict(f.provenance.extra)
        assert extra.pop("extracted_from") == {
            "path": str(run.resolve()),
            "run_id": RUN_ID,
            "steps": [3, 4],
            "ranks": [1],
            "tool": "tracefmt extract",
        }
        assert dataclasses.replace(f.provenance, extra=extra) == g.provenance
        assert extra["distributed"] == _distributed(1)
    manifest = read_manifest(small)
    assert manifest == dataclasses.replace(_manifest(), expected_ranks=(1,))


def test_replayer_diff_reports_identical(
    source: tuple[Path, dict[int, list[StepRecord]]], tmp_path: Path
) -> None:
    from replayer.cli import main as replayer_main

    run, _ = source
    small = tmp_path / "small"
    assert _cli("extract", run, "--steps", "3:4", "--ranks", "1", "-o", small).exit_code == 0
    for side_a, side_b in ((f"{run}:3@1", f"{small}:3@1"), (f"{small}:4@1", f"{run}:4@1")):
        result = CliRunner().invoke(replayer_main, ["diff", side_a, side_b, "--json"])
        assert result.exit_code == 0, result.output
        data = json.loads(result.output)
        assert data["verdict"] == "identical", data
        assert data["identical"], data
    # and a different step is told apart: the comparison can fail
    result = CliRunner().invoke(replayer_main, ["diff", f"{run}:4@1", f"{small}:3@1", "--json"])
    assert result.exit_code == 1, result.output


def test_steps_sharing_a_graph_share_it_in_the_copy(
    source: tuple[Path, dict[int, list[StepRecord]]], tmp_path: Path
) -> None:
    run, records = source
    small = tmp_path / "small"
    summary = extract(run, small, ranks=[0, 1])
    assert summary.steps == 2 * STEPS
    assert summary.step_range == (0, STEPS - 1)
    assert validate(small, deep=True) == []
    with tracefmt.open(run) as src, tracefmt.open(small) as out:
        for rank in (0, 1):
            # steps 0-5 and 7 share a graph, step 6 has its own: two graphs, as in the source
            assert out.rank_file(rank).length(L.GRAPHS) == 2
            assert [s.graph for s in out.summaries(rank)] == [s.graph for s in src.summaries(rank)]
            # each step stores only its own attributes and offsets, as the source does
            assert out.rank_file(rank).length(L.OP_ATTRS) == src.rank_file(rank).length(L.OP_ATTRS)
            assert out.rank_file(rank).length(L.TENSOR_OFFSETS) == src.rank_file(rank).length(
                L.TENSOR_OFFSETS
            )
            for s in range(STEPS):
                assert_same_step(out.step(s, rank), src.step(s, rank))
                assert_step_matches(out.step(s, rank), records[rank][s], load_values=False)


def test_one_step_of_a_long_run_is_small(tmp_path: Path) -> None:
    run, rng = tmp_path / "long", np.random.default_rng(0)
    graph = mlp_graph(width=128)
    with TraceWriter(rank_file_path(run, 0), run_id="long", values_filter="gzip", fsync=False) as w:
        for s in range(60):
            w.write_step(synthetic_step(s, graph, rng))
        w.flush()
    summary = extract(run, tmp_path / "small", steps=parse_step_range("41"))
    assert summary.steps == 1
    assert summary.ranks[0].first_step == 41
    assert summary.output_bytes * 10 < summary.source_bytes, summary
    with tracefmt.open(run) as src, tracefmt.open(tmp_path / "small") as out:
        assert_same_step(out.step(41), src.step(41))


def test_a_rank_file_alone_and_a_rank_without_steps_in_the_range(
    source: tuple[Path, dict[int, list[StepRecord]]], tmp_path: Path
) -> None:
    run, _ = source
    summary = extract(rank_file_path(run, 0), tmp_path / "one", steps=range(7, 100))
    assert [(r.rank, r.steps) for r in summary.ranks] == [(0, 1)]
    assert summary.step_range == (7, 99)
    assert read_manifest(tmp_path / "one") is None  # a rank file alone is a run without one
    # rank 0 of a two-rank output has no step in 7:7 when rank 1 does: it gets an empty file
    other = tmp_path / "other"
    with TraceWriter(rank_file_path(other, 0), run_id="r", world_size=2, fsync=False) as w:
        w.write_step(synthetic_step(1, mlp_graph(), np.random.default_rng(0)))
    with TraceWriter(rank_file_path(other, 1), run_id="r", rank=1, world_size=2, fsync=False) as w:
        w.write_step(synthetic_step(7, mlp_graph(), np.random.default_rng(1)))
    summary = extract(other, tmp_path / "out", steps=range(7, 8))
    assert [(r.rank, r.steps) for r in summary.ranks] == [(0, 0), (1, 1)]
    assert validate(tmp_path / "out") == []
    with tracefmt.open(tmp_path / "out") as t:
        assert t.steps(0) == []
        assert t.steps(1) == [7]


# -- the CLI -----------------------------------------------------------------------------------
def test_cli_summary_line_and_overwrite(
    source: tuple[Path, dict[int, list[StepRecord]]], tmp_path: Path
) -> None:
    run, _ = source
    small = tmp_path / "small"
    result = _cli("extract", run, "--steps", "3:4", "--ranks", "1", "-o", small)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("extracted 2 steps (3:4) of rank 1 from ")
    assert "MiB" in result.output or "KiB" in result.output
    assert "with run.json" in result.output
    again = _cli("extract", run, "--steps", "5", "-o", small)
    assert again.exit_code == 2
    assert "already exists" in again.output
    assert "--overwrite" in again.output
    with tracefmt.open(small) as t:
        assert t.ranks == (1,)
        assert t.steps(1) == [3, 4]
    result = _cli("extract", run, "--steps", "5", "-o", small, "--overwrite")
    assert result.exit_code == 0, result.output
    assert "of ranks 0, 1 " in result.output
    with tracefmt.open(small) as t:
        assert t.ranks == (0, 1)
        assert t.steps(0) == t.steps(1) == [5]
    assert read_manifest(small) == _manifest()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--steps", "4:3"), "selects no step"),
        (("--steps", "x"), "is not A:B"),
        (("--steps", "-1:2"), "selects no step"),
        (("--steps", "100:200"), "have no committed step in 100:200"),
        (("--steps", "100:"), "have no committed step in 100:"),
        (("--ranks", "1", "--steps", "100:200"), "Rank 1 of"),
        (("--ranks", "7"), "Rank 7 is not in"),
        (("--ranks", "1,9"), "Rank 9 is not in"),
        (("--ranks", ","), "rank selection is empty"),
        (("--ranks", "a"), "comma-separated list of rank numbers"),
    ],
)
def test_cli_refuses_a_bad_selection(
    source: tuple[Path, dict[int, list[StepRecord]]], tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    run, _ = source
    result = _cli("extract", run, *args, "-o", tmp_path / "small")
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output
    assert list(tmp_path.iterdir()) == []  # nothing written, no temp dir left


def test_refuses_outputs_that_would_lose_or_mix_data(
    source: tuple[Path, dict[int, list[StepRecord]]], tmp_path: Path
) -> None:
    run, _ = source
    before = sorted(p.name for p in run.iterdir())
    for inside in (run, run / "small", run / "a" / "b"):
        with pytest.raises(TraceError, match="inside the source run"):
            extract(run, inside, overwrite=True)
    with pytest.raises(TraceError, match="inside the source run"):
        extract(rank_file_path(run, 1), run / "small")
    with pytest.raises(TraceError, match="holds the source run"):
        extract(run, run.parent, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == before
    # an existing directory with other files is never replaced, even with overwrite
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    with pytest.raises(TraceError, match="already exists"):
        extract(run, other)
    with pytest.raises(TraceError, match=r"not part of a run \(todo.txt\)"):
        extract(run, other, overwrite=True)
    assert (other / "todo.txt").read_text() == "keep me"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(TraceError, match="not a directory"):
        extract(run, a_file, overwrite=True)
    # an empty directory is fine: nothing to lose
    (tmp_path / "empty").mkdir()
    assert extract(run, tmp_path / "empty", steps=range(0, 1)).steps == 2
    with pytest.raises(TraceError, match="consecutive"):
        extract(run, tmp_path / "x", steps=range(0, 4, 2))
    with pytest.raises(TraceError, match="is empty"):
        extract(run, tmp_path / "x", steps=range(3, 3))
    with pytest.raises(TraceError, match="rank selection is empty"):
        extract(run, tmp_path / "x", ranks=[])


def test_a_failed_extract_leaves_no_output(
    source: tuple[Path, dict[int, list[StepRecord]]], tmp_path: Path
) -> None:
    run, _ = source

    def fail(done: int, total: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract(run, tmp_path / "small", progress=fail)
    assert list(tmp_path.iterdir()) == []


def test_parse_step_range() -> None:
    assert parse_step_range("3:4") == range(3, 5)
    assert parse_step_range(" 41207 ") == range(41207, 41208)
    assert parse_step_range(":2") == range(0, 3)
    assert parse_step_range("5:").start == 5
    assert parse_step_range("5:").stop > 2**62
    for bad in ("", "a:b", "1:2:3", "3:2", "-2"):
        with pytest.raises(TraceError):
            parse_step_range(bad)


# -- a recorded trace --------------------------------------------------------------------------
def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def test_a_recorded_gpt_trace(tmp_path: Path) -> None:
    if not _has_module("torch"):
        pytest.skip("torch is not installed: recording the GPT example needs it")
    from replayer.cli import main as replayer_main

    run = tmp_path / "gpt"
    cmd = [sys.executable, "-m", "recorder.examples.gpt", "--steps", "4", "--out", str(run)]
    done = subprocess.run(
        [*cmd, "--values", "all", "--quiet"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    small = tmp_path / "small"
    result = _cli("extract", run, "--steps", "1:2", "-o", small)
    assert result.exit_code == 0, result.output
    assert validate(small, deep=True) == []
    with tracefmt.open(run) as src, tracefmt.open(small) as out:
        assert out.run_id == src.run_id
        assert out.steps(0) == [1, 2]
        assert out.rank_file(0).length(L.GRAPHS) == 1  # steps 1 and 2 share their graph
        for s in (1, 2):
            assert_same_step(out.step(s), src.step(s))
    result = CliRunner().invoke(replayer_main, ["diff", f"{run}:2@0", f"{small}:2@0", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["verdict"] == "identical"


def test_damaged_and_missing_ranks_are_skipped_and_named(tmp_path: Path) -> None:
    from tests.tracefmt.multirank import truncate, write_run

    run = write_run(tmp_path / "run", world=3, ranks=[0, 1])  # rank 2 wrote nothing
    truncate(rank_file_path(run, 1))
    result = _cli("extract", run, "--steps", "1", "-o", tmp_path / "small")
    assert result.exit_code == 0, result.output
    assert "skipped rank 1: " in result.output
    assert "skipped rank 2: its file is missing" in result.output
    summary = extract(run, tmp_path / "small2", steps=range(1, 2))
    assert [r.rank for r in summary.ranks] == [0]
    assert sorted(summary.skipped) == [1, 2]
    manifest = read_manifest(tmp_path / "small")
    assert manifest is not None
    assert manifest.expected_ranks == (0,)
    assert manifest.world_size == 3
    assert validate(tmp_path / "small", deep=True) == []
    with tracefmt.open(run) as src, tracefmt.open(tmp_path / "small") as out:
        assert out.missing_ranks == ()
        assert_same_step(out.step(1, 0), src.step(1, 0))  # collective ops and their c10d attrs
    for rank, message in (("1", "cannot be read"), ("2", "wrote no file")):
        result = _cli("extract", run, "--ranks", rank, "-o", tmp_path / "x")
        assert result.exit_code == 2, result.output
        assert message in result.output, result.output
