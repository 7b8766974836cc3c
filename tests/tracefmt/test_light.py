"""Light steps (format 1.4): written by ``TraceWriter.write_light_step``, read back bit for bit by
``Trace.light_steps`` and ``Trace.light_step``, hostile rows refused, live files followed, and
files older than 1.4 read as having none."""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tracefmt
from tests import badfiles as bad
from tests.checks import same_float
from tests.synth import mlp_graph, synthetic_step
from tracefmt import Event, TraceError, TraceFormatError, TraceWriter, reader
from tracefmt import _layout as L
from tracefmt.events import LOSS_SPIKE, message_fields, message_problem, trigger_event
from tracefmt.light import LightFlags, LightKind, LightStep, LightStepRecord, empty_light_rows
from tracefmt.validate import validate

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "data" / "1.0"  # format 1.0 goldens (tests/golden.py)


def _record(step: int, rng: np.random.Generator, n: int = 5) -> LightStepRecord:
    """A light step with every kind, random statistics, some NaN/Inf and unmeasured fields."""
    rows = empty_light_rows(n)
    rows["name"] = rng.integers(0, 3, n)
    rows["kind"] = [list(LightKind)[i % 4] for i in range(n)]
    rows["flags"] = rng.choice([0, 1, 2, 3, 3 | 8], n)
    lo = rng.standard_normal(n)
    rows["min"], rows["max"] = lo, lo + rng.random(n)
    rows["mean"], rows["std"], rows["norm"] = lo, rng.random(n), rng.random(n) * 10
    rows["numel"] = rng.integers(10, 1000, n)
    rows["nan"] = rng.integers(0, 2, n) * ((rows["flags"] & 2) != 0)
    rows["inf"] = rng.integers(0, 2, n) * ((rows["flags"] & 2) != 0)
    return LightStepRecord(
        step,
        ["encoder.0", "encoder.0.weight", ""],
        rows,
        scalars={"loss": float(rng.random()), "lr": 1e-3},
        events=[Event("note", f"light {step}")] if step % 2 else (),
        wall_time=1.7e9 + step,
        duration=0.25,
    )


def _assert_light_matches(got: LightStep, record: LightStepRecord) -> None:
    assert got.step == record.step
    assert len(got.rows) == len(record.rows)
    for row, want in zip(got.rows, record.rows, strict=True):
        flags = int(want["flags"])
        assert row.name == record.names[int(want["name"])]
        assert row.kind is LightKind(int(want["kind"]))
        assert row.numel == int(want["numel"])
        for field in ("min", "max", "mean", "std", "norm"):
            value = getattr(row, field)
            assert value is None if not flags & LightFlags.MOMENTS else same_float(value, want[field])
        for field in ("nan", "inf"):
            value = getattr(row, field)
            assert value == (int(want[field]) if flags & LightFlags.COUNTS else None)
        assert row.inputs_nonfinite == bool(flags & LightFlags.INPUTS_NONFINITE)
    assert list(got.events) == list(record.events)
    assert got.scalars.keys() == record.scalars.keys()
    assert all(same_float(got.scalars[k], v) for k, v in record.scalars.items())
    assert same_float(got.wall_time, record.wall_time)
    assert same_float(got.duration, record.duration)


def _write(path: Path, records: list[LightStepRecord], full: tuple[int, ...] = ()) -> Path:
    rng = np.random.default_rng(9)
    with TraceWriter(path, fsync=False) as w:
        for r in records:
            w.write_light_step(r)
            if r.step in full:
                w.write_step(synthetic_step(r.step, mlp_graph(), rng, with_values=False))
            w.flush()
    return path


def test_light_steps_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    records = [_record(s, rng) for s in (0, 1, 2, 5, 9)]
    path = _write(tmp_path / "t.tft.h5", records, full=(2, 9))
    assert validate(path, deep=True) == []
    with tracefmt.open(path) as trace:
        assert trace.steps() == [2, 9]  # a step number can have both kinds
        got = trace.light_steps()
        assert [s.step for s in got] == [0, 1, 2, 5, 9]
        for light, record in zip(got, records, strict=True):
            _assert_light_matches(light, record)
        _assert_light_matches(trace.light_step(5), records[3])
        summaries = trace.light_summaries()
        assert [(s.step, s.num_rows, s.num_events, s.kind) for s in summaries] == [
            (r.step, 5, len(r.events), "light") for r in records
        ]
        with pytest.raises(TraceError, match="Light step 3 is not in"):
            trace.light_step(3)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=6, unique=True), st.integers(0, 2**32 - 1))
def test_light_steps_round_trip_any_shape(
    tmp_path_factory: pytest.TempPathFactory, steps: list[int], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    records = [_record(s, rng, n=int(rng.integers(0, 7))) for s in sorted(steps)]
    path = _write(tmp_path_factory.mktemp("h") / "t.tft.h5", records)
    with tracefmt.open(path) as trace:
        for light, record in zip(trace.light_steps(), records, strict=True):
            _assert_light_matches(light, record)
    assert validate(path) == []


def test_reading_in_blocks_reads_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    records = [_record(s, rng) for s in range(10)]
    path = _write(tmp_path / "t.tft.h5", records)
    monkeypatch.setattr(reader, "LIGHT_BLOCK", 3)
    monkeypatch.setattr("tracefmt._tableread.SPAN_BYTES", 100)  # range by range, too
    with tracefmt.open(path) as trace:
        for light, record in zip(trace.light_steps(), records, strict=True):
            _assert_light_matches(light, record)


def test_the_writer_refuses_light_steps_out_of_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    with TraceWriter(tmp_path / "t.tft.h5", fsync=False) as w:
        w.write_light_step(_record(4, rng))
        with pytest.raises(ValueError, match="increasing order"):
            w.write_light_step(_record(4, rng))
        bad_names = _record(5, rng)
        bad_names.names = ["only"]
        with pytest.raises(ValueError, match="names no entry"):
            w.write_light_step(bad_names)
        w.write_light_step(_record(5, rng))  # a refused record leaves the writer usable
    with tracefmt.open(tmp_path / "t.tft.h5") as trace:
        assert [s.step for s in trace.light_steps()] == [4, 5]


def test_light_steps_commit_with_the_next_flush(tmp_path: Path) -> None:
    path = tmp_path / "t.tft.h5"
    w = TraceWriter(path, fsync=False)
    w.write_light_step(_record(0, np.random.default_rng(3)))
    with tracefmt.open(path) as trace:
        assert trace.light_steps() == []  # written, not committed
    w.flush()
    with tracefmt.open(path) as trace:
        assert [s.step for s in trace.light_steps()] == [0]
    w.close()


@pytest.mark.parametrize("name", ["values.tft.h5", "stats_only.tft.h5", "run"])
def test_files_older_than_1_4_have_no_light_steps(name: str) -> None:
    with tracefmt.open(GOLDEN / name) as trace:
        assert trace.rank_file().version < (1, 4)
        assert trace.light_steps() == []
        assert trace.light_summaries() == []
        with pytest.raises(TraceError, match="no committed light steps"):
            trace.light_step(0)


@pytest.mark.parametrize(
    ("table", "row", "fields", "match"),
    [
        ("light_stats", 0, {"kind": 9}, "kind 9"),
        ("light_stats", 0, {"name": -1}, "no name"),
        ("light_stats", 0, {"name": 10**6}, "string id"),
        ("light_steps", 1, {"stats_count": 10**6}, "/light_stats"),
        ("light_steps", 1, {"scalar_start": 10**12}, "/light_scalars"),
        ("light_events", 0, {"tensor": 2}, "no graph"),
    ],
)
def test_hostile_light_rows_are_refused(
    tmp_path: Path, table: str, row: int, fields: dict[str, int], match: str
) -> None:
    path = bad.write_flight(tmp_path / "f.tft.h5")
    bad.set_field(path, table, row, **fields)
    with tracefmt.open(path) as trace, pytest.raises(TraceFormatError, match=match):
        trace.light_steps()


def test_a_light_step_reads_alone(tmp_path: Path) -> None:
    """Loading one light step reads its index row and its own rows: a damaged other step's
    rows do not matter."""
    path = bad.write_flight(tmp_path / "f.tft.h5")
    bad.set_field(path, "light_stats", 0, kind=9)  # light step 0's first row
    with tracefmt.open(path) as trace:
        assert trace.light_step(2).nonfinite_state
        assert trace.light_step(1).nonfinite_created
        assert trace.light_step(3).rows[0].name == "attn"


def test_update_ratio_and_row_lookup() -> None:
    from tracefmt.light import LightRow

    rows = (
        LightRow("fc.weight", LightKind.UPDATE, 4, norm=0.02),
        LightRow("fc.weight", LightKind.PARAMETER, 4, norm=4.0),
    )
    light = LightStep(0, 0, rows, {}, (), 0.0, math.nan)
    assert light.update_ratio("fc.weight") == pytest.approx(0.005)
    assert light.update_ratio("fc.bias") is None
    assert light.row("fc.weight", LightKind.GRADIENT) is None


LIVE_WRITER = r"""
import sys
from tests.badfiles import light_record
from tracefmt import TraceWriter
w = TraceWriter(sys.argv[1], fsync=False)
for batch in ((0, 1), (2, 3)):
    for s in batch:
        w.write_light_step(light_record(s))
    w.flush()
    print(batch[-1], flush=True)
    sys.stdin.readline()
w.close()
"""


def test_a_live_file_shows_light_steps_after_refresh(tmp_path: Path) -> None:
    path = tmp_path / "rank-00000.tft.h5"
    proc = subprocess.Popen(
        [sys.executable, "-c", LIVE_WRITER, str(path)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "1"
        with tracefmt.open(path) as trace:
            assert [s.step for s in trace.light_steps()] == [0, 1]
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "3"
            assert trace.rank_file().num_light_steps() == 2  # not refreshed yet
            trace.refresh()
            assert [s.step for s in trace.light_steps()] == [0, 1, 2, 3]
            proc.stdin.write("\n")
            proc.stdin.flush()
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == 0


def test_trigger_messages() -> None:
    event = trigger_event(LOSS_SPIKE, "loss 9.1 is far above 2.3", rank=1, value=9.1, score=math.inf)
    assert message_problem(event.message, world_size=2) is None
    assert message_fields(event)["score"] == "inf"
    assert message_problem(event.message, world_size=1) is not None  # rank 1 of 1
    for text in ("plain words", "[1, 2]", '{"rank": 0}', '{"reason": "r", "rank": true}'):
        assert message_problem(text, world_size=2) is not None, text
    assert message_problem('{"reason": "r", "rank": 0, "value": NaN}', world_size=1) is not None
    with pytest.raises(ValueError, match="Unknown trigger kind"):
        trigger_event("spike", "r", rank=0)


def test_the_layout_names_light_steps_since_1_4() -> None:
    assert L.has_dataset(L.LIGHT_STEPS, 4)
    assert not L.has_dataset(L.LIGHT_STATS, 3)
    assert list(L.expected_datasets(0, 4))[:2] == [L.STEPS, L.LIGHT_STEPS]  # the indices first
    assert L.step_flag_bits(3) == 3
    assert L.step_flag_bits(4) == 15


def test_extract_copies_the_light_steps_in_range(tmp_path: Path) -> None:
    from tracefmt.extract import extract

    (tmp_path / "src").mkdir()
    source = bad.write_flight(tmp_path / "src" / "f.tft.h5")
    summary = extract(source, tmp_path / "out", steps=range(1, 3))
    assert [(r.steps, r.light_steps) for r in summary.ranks] == [(2, 2)]
    with tracefmt.open(source) as src, tracefmt.open(tmp_path / "out") as out:
        assert out.steps() == [1, 2]
        assert out.light_steps() == [s for s in src.light_steps() if s.step in (1, 2)]
        assert out.light_summaries() == [s for s in src.light_summaries() if s.step in (1, 2)]
    assert validate(tmp_path / "out", deep=True) == []
    light_only = extract(source, tmp_path / "light", steps=range(3, 4))  # no full step there
    assert [(r.steps, r.light_steps) for r in light_only.ranks] == [(0, 1)]


def test_mutated_light_steps_read_or_raise_trace_errors(tmp_path: Path) -> None:
    """Random byte flips and truncations of a file with light steps: reading its light steps,
    summaries and event kinds gives them or a TraceError, never another exception.  (The fuzz
    test reads full steps and summaries of the same file in a subprocess.)"""
    base = bad.write_flight(tmp_path / "base.tft.h5")
    data = base.read_bytes()
    rng = np.random.default_rng(11)
    for i in range(24):
        blob = bytearray(data)
        if i % 4 == 3:
            blob = blob[: int(rng.integers(64, len(blob)))]
        else:
            for pos in rng.integers(0, len(blob), 8).tolist():
                blob[pos] ^= 1 << int(rng.integers(0, 8))
        path = tmp_path / f"m{i}.tft.h5"
        path.write_bytes(bytes(blob))
        with contextlib.suppress(TraceError), tracefmt.open(path) as trace:
            for read in (
                trace.light_steps,
                trace.light_summaries,
                lambda t=trace: t.rank_file().event_kinds(light=True),
            ):
                with contextlib.suppress(TraceError):
                    read()
