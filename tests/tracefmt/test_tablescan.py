"""tracefmt.tablescan against the reader: every column of every table equals what
``tracefmt.open`` gives for the same steps, across graphs, a step's own attributes and offsets,
light steps, batches and step blocks; hostile rows are refused as the reader refuses them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tracefmt
from tests.synth import mlp_graph, synthetic_step
from tracefmt import Event, LightKind, LightStepRecord, TraceWriter
from tracefmt.attrcodec import decode_attrs
from tracefmt.light import empty_light_rows
from tracefmt.tablescan import ColumnTable, Labels, Masked, Ragged, RankScan


def _light(step: int, rng: np.random.Generator) -> LightStepRecord:
    rows = empty_light_rows(3)
    rows["name"] = [0, 1, 1]
    rows["kind"] = [LightKind.OUTPUT, LightKind.GRADIENT, LightKind.PARAMETER]
    rows["flags"] = [3, 3, 1]
    for name in ("min", "max", "mean", "std", "norm"):
        rows[name] = rng.random(3)
    rows["numel"] = [10, 20, 20]
    return LightStepRecord(
        step=step,
        names=["layers.0", "layers.0.weight"],
        rows=rows,
        scalars={"loss": float(rng.random())},
        events=[Event("spike", f"light {step}")] if step % 4 == 0 else [],
        wall_time=1.7e9 + step,
        duration=0.01,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 full steps over two graph structures (one with a step's own lr and input offset) and
    16 light steps."""
    path = tmp_path_factory.mktemp("scan") / "rank-00000.tft.h5"
    rng = np.random.default_rng(3)
    with TraceWriter(path) as w:
        for s in range(12):
            graph = mlp_graph(layers=3 if s % 5 == 4 else 2, lr=0.01 * (1 + s % 3), input_offset=8 * s)
            w.write_step(synthetic_step(s, graph, rng, with_values=False))
        for s in range(16):
            w.write_light_step(_light(s, rng))
        w.flush()
    return path


def _column(table: ColumnTable, name: str) -> list[object]:
    col = table.columns[name]
    if isinstance(col, Labels):
        return list(col.strings())
    if isinstance(col, Masked):
        return [v if ok else None for v, ok in zip(col.values.tolist(), col.valid.tolist(), strict=True)]
    if isinstance(col, Ragged):
        return [col.values[a:b].tolist() for a, b in zip(col.offsets[:-1], col.offsets[1:], strict=True)]
    return list(col.tolist())


def _rows(scan: RankScan, kind: str, table: str) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for batch in scan.batches():
        if batch.kind == kind and table in batch.tables:
            t = batch.tables[table]
            cols = {name: _column(t, name) for name in t.columns}
            out.extend({k: v[i] for k, v in cols.items()} for i in range(t.rows))
    return out


@pytest.mark.parametrize("batch_rows", [1, 100, 1 << 20])
def test_full_tables_equal_the_reader(run: Path, batch_rows: int) -> None:
    with tracefmt.open(run) as trace:
        scan = RankScan(trace, batch_rows=batch_rows, block_steps=5)
        steps = list(trace.iter_steps())
        ops = _rows(scan, "full", "ops")
        assert [(r["step"], r["op"]) for r in ops] == [(s.step, o.index) for s in steps for o in s.ops]
        for r, op in zip(ops, (o for s in steps for o in s.ops), strict=True):
            assert (r["name"], r["phase"], r["module"], r["source"]) == (
                op.name,
                op.phase.label,
                op.module,
                op.source,
            )
            assert decode_attrs(str(r["attrs"])) == dict(op.attrs)
            assert (r["inputs"], r["outputs"]) == (list(op.inputs), list(op.outputs))
        tensors = _rows(scan, "full", "tensors")
        want = [(s.step, t) for s in steps for t in s.tensors]
        assert len(tensors) == len(want)
        for r, (step, t) in zip(tensors, want, strict=True):
            assert (r["step"], r["tensor"], r["name"], r["role"], r["dtype"]) == (
                step,
                t.index,
                t.name,
                t.role.label,
                t.dtype.label,
            )
            assert (r["shape"], r["producer"], r["storage_offset"]) == (
                list(t.shape),
                t.meta.producer,
                t.meta.storage_offset,
            )
        stats = _rows(scan, "full", "stats")
        assert len(stats) == len(want)
        for r, (_, t) in zip(stats, want, strict=True):
            assert t.stats is not None
            for field in ("min", "max", "mean", "std", "norm", "nan", "inf", "zero", "fingerprint"):
                assert r[field] == getattr(t.stats, field), field
        timings = _rows(scan, "full", "op_timings")
        for r, op in zip(timings, (o for s in steps for o in s.ops), strict=True):
            assert (r["host_ns"], r["device_ns"], r["mem_bytes"], r["host_start_ns"]) == (
                op.host_ns,
                op.device_ns,
                op.mem_bytes,
                op.host_start_ns,
            )
        events = _rows(scan, "full", "events")
        assert [(r["step"], r["kind"], r["message"], r["op"]) for r in events] == [
            (s.step, e.kind, e.message, e.op) for s in steps for e in s.events
        ]
        scalars = _rows(scan, "full", "scalars")
        assert [(r["step"], r["name"], r["value"]) for r in scalars] == [
            (s.step, k, v) for s in steps for k, v in s.scalars.items()
        ]
        index = _rows(scan, "full", "steps")
        assert [(r["step"], r["graph"], r["num_ops"], r["step_kind"]) for r in index] == [
            (s.step, s.graph, len(s.ops), "full") for s in steps
        ]


def test_light_tables_equal_the_reader(run: Path) -> None:
    with tracefmt.open(run) as trace:
        scan = RankScan(trace, block_steps=5, batch_rows=7)
        lights = trace.light_steps()
        rows = _rows(scan, "light", "light_stats")
        want = [(ls.step, i, r) for ls in lights for i, r in enumerate(ls.rows)]
        assert len(rows) == len(want) == 48
        for got, (step, i, r) in zip(rows, want, strict=True):
            assert (got["step"], got["row"], got["name"], got["kind"], got["numel"]) == (
                step,
                i,
                r.name,
                r.kind.label,
                r.numel,
            )
            assert (got["norm"], got["nan"], got["inputs_nonfinite"]) == (r.norm, r.nan, False)
        events = _rows(scan, "light", "events")
        assert [(r["step"], r["kind"], r["message"], r["step_kind"]) for r in events] == [
            (ls.step, e.kind, e.message, "light") for ls in lights for e in ls.events
        ]
        index = _rows(scan, "light", "steps")
        assert [(r["step"], r["num_light_rows"], r["graph"]) for r in index] == [
            (ls.step, len(ls.rows), None) for ls in lights
        ]


def test_batches_keep_to_step_blocks_and_the_selection(run: Path) -> None:
    with tracefmt.open(run) as trace:
        scan = RankScan(trace, steps=range(3, 11), block_steps=4, batch_rows=1 << 20)
        assert (scan.full_steps, scan.light_steps) == (8, 8)
        batches = list(scan.batches())
    for b in batches:
        steps = b.tables["steps"].columns["step"]
        assert isinstance(steps, np.ndarray)
        assert set((steps // 4).tolist()) == {b.block}
        assert b.steps == len(steps)
    full = [s for b in batches if b.kind == "full" for s in b.tables["steps"].columns["step"]]
    assert full == list(range(3, 11))
    assert [b.block for b in batches if b.kind == "full"] == [0, 1, 2]


def test_a_bad_stats_count_is_refused_as_the_reader_refuses_it(run: Path, tmp_path: Path) -> None:
    import h5py

    bad = tmp_path / "bad.tft.h5"
    bad.write_bytes(run.read_bytes())
    with h5py.File(bad, "r+") as f:
        rows = f["steps"][...]
        rows["stats_count"][2] = 1
        f["steps"][...] = rows
    with tracefmt.open(bad) as trace:
        with pytest.raises(tracefmt.TraceFormatError, match="step 2") as reader_error:
            trace.step(2)
        with pytest.raises(tracefmt.TraceFormatError, match="step 2") as scan_error:
            for _ in RankScan(trace).batches():
                pass
    assert "1 stats rows" in str(reader_error.value)
    assert "1 stats rows" in str(scan_error.value)


@pytest.mark.parametrize(
    ("table", "field", "row", "value", "message"),
    [
        ("steps", "graph", 2, 99, "step 2: graph 99 is out of range"),
        ("events", "op", 3, 999, "step 3: an event names an op or tensor out of range"),
        ("light_stats", "kind", 4, 9, "step 1: a light row has kind 9"),
        ("light_stats", "name", 5, -1, "step 1: a light row has no name"),
        ("light_events", "op", 0, 2, "step 0: a light step's event names an op"),
    ],
)
def test_hostile_rows_are_refused_naming_the_step(
    run: Path, tmp_path: Path, table: str, field: str, row: int, value: int, message: str
) -> None:
    import h5py

    bad = tmp_path / "bad.tft.h5"
    bad.write_bytes(run.read_bytes())
    with h5py.File(bad, "r+") as f:
        rows = f[table][...]
        rows[field][row] = value
        f[table][...] = rows
    with tracefmt.open(bad) as trace, pytest.raises(tracefmt.TraceFormatError, match=message):
        for _ in RankScan(trace).batches():
            pass


def test_bad_arguments_are_trace_errors(run: Path) -> None:
    with tracefmt.open(run) as trace:
        with pytest.raises(tracefmt.TraceError, match="at least 1"):
            RankScan(trace, block_steps=0)
        with pytest.raises(tracefmt.TraceError, match="consecutive"):
            RankScan(trace, steps=range(0, 10, 2))
