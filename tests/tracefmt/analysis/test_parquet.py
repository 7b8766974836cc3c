"""``tracefmt to-parquet``: the export's tables, partitions, manifest and metadata (spec/parquet.md),
its selections, and what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tracefmt
from tracefmt.analysis import (
    EXPORT_MANIFEST,
    PARQUET_FORMAT_VERSION,
    SCHEMAS,
    ExportOptions,
    to_parquet,
)
from tracefmt.attrcodec import decode_attrs

pa_dataset = pytest.importorskip(
    "pyarrow.dataset", reason="needs the analysis extra: pip install 'tracefmt[analysis]'"
)
pq = pytest.importorskip("pyarrow.parquet", reason="needs the analysis extra")


def _table(export: Path, name: str) -> list[dict[str, object]]:
    ds = pa_dataset.dataset(export / name, format="parquet", partitioning="hive")
    rows: list[dict[str, object]] = ds.to_table().to_pylist()
    return sorted(
        rows, key=lambda r: (r["rank"], r["step"], *(v for k, v in r.items() if k in ("op", "tensor")))
    )


@pytest.fixture(scope="module")
def export(synthetic_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "run.parquet"
    seen: list[tuple[int, int]] = []
    summary = to_parquet(
        synthetic_run, out, ExportOptions(block_steps=4), progress=lambda d, t: seen.append((d, t))
    )
    assert seen[-1] == (44, 44)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert summary.full_steps == 20
    assert summary.light_steps == 24
    return out


def test_every_table_holds_what_the_reader_reads(synthetic_run: Path, export: Path) -> None:
    """PQ-ROWS-001, PQ-TABLE-002: rows per step as the reader reads them, strings resolved."""
    ops, steps = _table(export, "ops"), _table(export, "steps")
    stats = _table(export, "stats")
    with tracefmt.open(synthetic_run) as trace:
        want_ops = [(r, s.step, op) for r in (0, 1) for s in trace.iter_steps(r) for op in s.ops]
        want_tensors = [(r, s.step, t) for r in (0, 1) for s in trace.iter_steps(r) for t in s.tensors]
        lights = {r: trace.light_steps(r) for r in (0, 1)}
    assert len(ops) == len(want_ops)
    for got, (rank, step, op) in zip(ops, want_ops, strict=True):
        assert (got["rank"], got["step"], got["op"], got["name"], got["module"]) == (
            rank,
            step,
            op.index,
            op.name,
            op.module,
        )
        assert decode_attrs(str(got["attrs"])) == dict(op.attrs)  # the step's own lr included
        assert got["outputs"] == list(op.outputs)
    tensors = _table(export, "tensors")
    assert [(r["name"], r["role"], r["dtype"]) for r in tensors] == [
        (t.name, t.role.label, t.dtype.label) for _, _, t in want_tensors
    ]
    assert {r["phase"] for r in ops} == {"forward", "backward", "optimizer"}
    assert [(r["rank"], r["step"], r["tensor"], r["norm"]) for r in stats] == [
        (rank, step, t.index, t.stats.norm if t.stats else None) for rank, step, t in want_tensors
    ]
    assert sum(1 for r in steps if r["step_kind"] == "full") == 20
    assert sum(1 for r in steps if r["step_kind"] == "light") == 24
    light_rows = _table(export, "light_stats")
    assert len(light_rows) == sum(len(ls.rows) for ls in lights[0] + lights[1])
    events = [r for r in _table(export, "events") if r["step_kind"] == "light"]
    assert [(r["rank"], r["step"], r["kind"]) for r in events] == [(0, 7, "spike"), (1, 7, "spike")]


def test_partitions_manifest_and_file_metadata(synthetic_run: Path, export: Path) -> None:
    """PQ-LAYOUT-001, PQ-META-001, PQ-META-002."""
    blocks = sorted(p.name for p in (export / "ops" / "rank=1").iterdir())
    assert blocks == [
        "step_block=000000000-000000003",
        "step_block=000000004-000000007",
        "step_block=000000008-000000011",
    ]
    light_files = sorted(p.name for p in (export / "steps" / "rank=0" / blocks[0]).iterdir())
    assert light_files == ["full-0.parquet", "light-0.parquet"]
    manifest = json.loads((export / EXPORT_MANIFEST).read_text())
    assert manifest["tracefmt_parquet"] == PARQUET_FORMAT_VERSION
    assert (manifest["run_id"], manifest["ranks"], manifest["steps"]) == ("r1", [0, 1], None)
    assert manifest["partitioning"] == {
        "style": "hive",
        "keys": ["rank", "step_block"],
        "block_steps": 4,
    }
    with tracefmt.open(synthetic_run) as trace:
        version = trace.rank_file(0).version
    assert manifest["trace_format_versions"] == {r: f"{version.major}.{version.minor}" for r in "01"}
    assert list(manifest["tables"]) == list(SCHEMAS)
    assert manifest["tables"]["ops"]["columns"][:2] == [["step", "int64", False], ["op", "int32", False]]
    assert [s["file"] for s in manifest["source_state"]] == [
        "rank-00000.tft.h5",
        "rank-00001.tft.h5",
        "run.json",
    ]
    f = pq.ParquetFile(export / "ops" / "rank=1" / blocks[1] / "full-0.parquet")
    meta = f.metadata.metadata
    assert meta[b"tracefmt_parquet"] == PARQUET_FORMAT_VERSION.encode()
    assert meta[b"tracefmt_table"] == b"ops"
    assert meta[b"tracefmt_rank"] == b"1"
    assert f.schema_arrow.names == [c.name for c in SCHEMAS["ops"]]


def test_a_selection_of_ranks_and_steps(synthetic_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "sel"
    summary = to_parquet(synthetic_run, out, ExportOptions(ranks=(1,), steps=range(3, 8)))
    assert (summary.ranks, summary.full_steps, summary.light_steps) == ((1,), 5, 5)
    steps = _table(out, "steps")
    assert sorted({(r["rank"], r["step"]) for r in steps}) == [(1, s) for s in range(3, 8)]
    assert json.loads((out / EXPORT_MANIFEST).read_text())["steps"] == [3, 7]


def test_an_empty_table_still_has_a_file_with_its_columns(tmp_path: Path) -> None:
    """PQ-LAYOUT-002."""
    from tests.synth import write_synthetic

    write_synthetic(tmp_path / "one.tft.h5", steps=2)
    to_parquet(tmp_path / "one.tft.h5", tmp_path / "one.parquet")
    files = list((tmp_path / "one.parquet" / "light_stats").rglob("*.parquet"))
    assert [f.name for f in files] == ["empty-0.parquet"]
    assert pq.ParquetFile(files[0]).schema_arrow.names == [c.name for c in SCHEMAS["light_stats"]]


def test_what_it_refuses(synthetic_run: Path, tmp_path: Path) -> None:
    """PQ-LAYOUT-003: an existing directory that is not an export is never replaced, and no
    partial or replaced export is left behind."""
    with pytest.raises(tracefmt.TraceError, match="Rank 5 is not in"):
        to_parquet(synthetic_run, tmp_path / "a", ExportOptions(ranks=(5,)))
    with pytest.raises(tracefmt.TraceError, match="No step of rank"):
        to_parquet(synthetic_run, tmp_path / "a", ExportOptions(steps=range(100, 200)))
    with pytest.raises(tracefmt.TraceError, match="holds the run"):
        to_parquet(synthetic_run, synthetic_run.parent)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("keep")
    with pytest.raises(tracefmt.TraceError, match="already exists"):
        to_parquet(synthetic_run, mine)
    with pytest.raises(tracefmt.TraceError, match="not a tracefmt Parquet export"):
        to_parquet(synthetic_run, mine, ExportOptions(overwrite=True))
    assert [p.name for p in mine.iterdir()] == ["keep.txt"]
    to_parquet(synthetic_run, tmp_path / "b", ExportOptions(steps=range(0, 1)))
    to_parquet(synthetic_run, tmp_path / "b", ExportOptions(overwrite=True))
    assert json.loads((tmp_path / "b" / EXPORT_MANIFEST).read_text())["full_steps"] == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "mine"]  # no partial or old export left
    with pytest.raises(tracefmt.TraceError, match="compression"):
        ExportOptions(compression="xz")
