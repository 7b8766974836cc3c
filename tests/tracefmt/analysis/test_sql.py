"""``tracefmt to-parquet`` + ``tracefmt sql`` answer questions about a recorded run exactly as the
Python reader does; the export is cached next to the run and made again when the run changes."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("pyarrow", reason="needs the analysis extra: pip install 'tracefmt[analysis]'")
pytest.importorskip("duckdb", reason="needs the analysis extra: pip install 'tracefmt[analysis]'")

import tracefmt
from tests.synth import mlp_graph, synthetic_step
from tracefmt.analysis import cache_path, query_export, run_sql, to_parquet
from tracefmt.analysis.cli import sql_cmd, to_parquet_cmd
from tracefmt.cli import TraceErrorGroup

TOP_OPS = """
    SELECT o.op, o.name, o.module, max(s.norm) AS norm
    FROM (SELECT rank, step, op, name, module, unnest(outputs) AS tensor FROM ops WHERE step = 3) o
    JOIN stats s USING (rank, step, tensor)
    WHERE s.norm IS NOT NULL
    GROUP BY o.op, o.name, o.module
    ORDER BY norm DESC, o.op
    LIMIT 10
"""
GRAD_NORM = """
    SELECT s.step, sqrt(sum(s.norm * s.norm)) AS norm
    FROM stats s JOIN tensors t USING (rank, step, tensor)
    WHERE t.role = 'gradient' AND t.name LIKE '{module}.%'
    GROUP BY s.step
"""
FIRST_ABOVE = "SELECT min(step) AS step FROM (" + GRAD_NORM + ") WHERE norm > {threshold}"


def _cli() -> click.Group:
    """The two commands under the group that turns TraceError into one line (as the lead
    registers them in ``tracefmt``)."""
    group = TraceErrorGroup("tracefmt")
    group.add_command(to_parquet_cmd)
    group.add_command(sql_cmd)
    return group


def _top_ops_reader(run: Path, step: int) -> list[tuple[int, str, str, float]]:
    with tracefmt.open(run) as trace:
        s = trace.step(step)
    best: list[tuple[int, str, str, float]] = []
    for op in s.ops:
        norms = [
            st.norm for t in op.outputs if (st := s.tensors[t].stats) is not None and st.norm is not None
        ]
        if norms:
            best.append((op.index, op.name, op.module, max(norms)))
    best.sort(key=lambda r: (-r[3], r[0]))
    return best[:10]


def _grad_norms_reader(run: Path, module: str) -> dict[int, float]:
    out = {}
    with tracefmt.open(run) as trace:
        for s in trace.iter_steps():
            norms = [
                t.stats.norm
                for t in s.tensors
                if t.role is tracefmt.Role.GRADIENT
                and (t.name or "").startswith(module + ".")
                and t.stats is not None
                and t.stats.norm is not None
            ]
            out[s.step] = math.sqrt(sum(n * n for n in norms))
    return out


def test_top_ops_by_output_norm_match_the_reader(recorded_run: Path, tmp_path: Path) -> None:
    to_parquet(recorded_run, tmp_path / "export")
    got = run_sql(recorded_run, TOP_OPS, parquet=tmp_path / "export")
    assert got.columns == ("op", "name", "module", "norm")
    want = _top_ops_reader(recorded_run, 3)
    assert len(want) == 10
    assert [tuple(r) for r in got.rows] == want


def test_first_step_past_a_gradient_norm_matches_the_reader(recorded_run: Path, tmp_path: Path) -> None:
    norms = _grad_norms_reader(recorded_run, "0")
    ordered = sorted(set(norms.values()))
    assert len(ordered) >= 4  # the norms change from step to step
    threshold = (ordered[2] + ordered[3]) / 2
    want = min(s for s, n in norms.items() if n > threshold)
    per_step = run_sql(
        recorded_run, GRAD_NORM.format(module="0") + " ORDER BY step", parquet=tmp_path / "x"
    )
    assert [r[0] for r in per_step.rows] == sorted(norms)
    for step, norm in per_step.rows:
        assert norm == pytest.approx(norms[step], rel=1e-12)
    got = run_sql(
        recorded_run, FIRST_ABOVE.format(module="0", threshold=repr(threshold)), parquet=tmp_path / "x"
    )
    assert got.rows == ((want,),)


def test_the_cache_next_to_the_run_is_reused_and_made_again_when_the_run_changes(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    with tracefmt.TraceWriter(tracefmt.rank_file_path(run, 0)) as w:
        for s in range(3):
            w.write_step(synthetic_step(s, mlp_graph(), np.random.default_rng(s)))
    notes: list[str] = []
    query = "SELECT count(*) FROM steps"
    assert run_sql(run, query, note=notes.append).rows == ((3,),)
    assert cache_path(run) == (tmp_path / "run.parquet").resolve()
    assert cache_path(run).is_dir()
    assert len(notes) == 1
    assert "run.parquet" in notes[0]
    assert run_sql(run, query, note=notes.append).rows == ((3,),)
    assert len(notes) == 1  # reused
    with tracefmt.TraceWriter(tracefmt.rank_file_path(run, 0), overwrite=True) as w:
        for s in range(5):
            w.write_step(synthetic_step(s, mlp_graph(), np.random.default_rng(s)))
    assert run_sql(run, query, note=notes.append).rows == ((5,),)
    assert len(notes) == 2


def test_a_foreign_directory_where_the_cache_goes_is_left_alone(
    synthetic_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(synthetic_run, run)
    cache_path(run).mkdir()
    (cache_path(run) / "mine.txt").write_text("not an export")
    notes: list[str] = []
    got = run_sql(run, "SELECT count(DISTINCT rank) FROM steps", note=notes.append)
    assert got.rows == ((2,),)
    assert "temporary" in notes[0]
    assert [p.name for p in cache_path(run).iterdir()] == ["mine.txt"]


def test_cli_prints_a_table_json_and_csv(synthetic_run: Path, tmp_path: Path) -> None:
    export = tmp_path / "e"
    runner = CliRunner()
    result = runner.invoke(_cli(), ["to-parquet", str(synthetic_run), "-o", str(export)])
    assert result.exit_code == 0, result.output
    assert "exported 20 steps and 24 light steps of ranks 0, 1" in result.output
    query = (
        "SELECT rank, step, value FROM scalars WHERE step_kind = 'full' AND step < 2 ORDER BY rank, step"
    )
    args = ["sql", str(synthetic_run), query, "--parquet", str(export)]
    table = runner.invoke(_cli(), args)
    assert table.exit_code == 0, table.output
    assert "value" in table.output
    assert "4 rows" in table.output
    as_json = runner.invoke(_cli(), [*args, "--json"])
    rows = json.loads(as_json.output)
    with tracefmt.open(synthetic_run) as trace:
        want = [
            {"rank": r, "step": s, "value": trace.step(s, rank=r).scalars["loss"]}
            for r in (0, 1)
            for s in (0, 1)
        ]
    assert rows == want
    as_csv = runner.invoke(_cli(), [*args, "--csv"])
    parsed = list(csv.DictReader(io.StringIO(as_csv.output)))
    assert [float(r["value"]) for r in parsed] == [w["value"] for w in want]


def test_cli_errors_are_one_line(synthetic_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    bad = runner.invoke(
        _cli(), ["sql", str(synthetic_run), "SELECT nope FROM ops", "--parquet", str(tmp_path / "e")]
    )
    assert bad.exit_code == 2
    last = bad.output.splitlines()[-1]
    assert last.startswith("error: DuckDB could not run the query: Binder Error")
    assert '"nope"' in last
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    foreign = runner.invoke(
        _cli(), ["sql", str(synthetic_run), "SELECT 1", "--parquet", str(tmp_path / "mine")]
    )
    assert foreign.exit_code == 2
    assert "not a tracefmt Parquet export" in foreign.output
    both = runner.invoke(_cli(), ["sql", str(synthetic_run), "SELECT 1", "--json", "--csv"])
    assert both.exit_code == 2
    assert "one of --json and --csv" in both.output


def test_a_table_missing_from_an_export_is_an_empty_view_with_its_columns(
    synthetic_run: Path, tmp_path: Path
) -> None:
    """An export made before a table existed (a later minor version adds tables) still opens."""
    export = tmp_path / "e"
    to_parquet(synthetic_run, export)
    with_table = query_export(export, "SELECT * FROM light_stats LIMIT 0")
    shutil.rmtree(export / "light_stats")
    without = query_export(export, "SELECT * FROM light_stats")
    assert without.rows == ()
    assert (without.columns, without.types) == (with_table.columns, with_table.types)
