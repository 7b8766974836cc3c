"""spec/parquet.md and the code agree: the tables and columns the spec lists are those of
``tracefmt.analysis.SCHEMAS`` and of the files an export holds (PQ-TABLE-001), and every
requirement id of the spec is named by a test of this directory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tracefmt.analysis import SCHEMAS, ColumnSpec, to_parquet

ROOT = Path(__file__).resolve().parents[3]
SPEC = ROOT / "spec" / "parquet.md"
ROW = re.compile(r"^\| `(?P<name>\w+)` \| `(?P<type>[\w<>]+)` \| (?P<null>yes|no) \|")


def _spec_tables() -> dict[str, tuple[ColumnSpec, ...]]:
    tables: dict[str, list[ColumnSpec]] = {}
    current: str | None = None
    for line in SPEC.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"^### `(\w+)`$", line)
        if heading:
            current = heading.group(1)
            tables[current] = []
        elif current is not None and (m := ROW.match(line)):
            tables[current].append(ColumnSpec(m["name"], m["type"], m["null"] == "yes"))
    return {name: tuple(cols) for name, cols in tables.items()}


def test_the_spec_lists_the_tables_and_columns_of_the_code() -> None:
    assert _spec_tables() == SCHEMAS


def test_the_files_have_the_declared_arrow_schema(synthetic_run: Path, tmp_path: Path) -> None:
    """PQ-TABLE-001: what the files hold, not only what the code declares."""
    pq = pytest.importorskip("pyarrow.parquet", reason="needs the analysis extra")
    from tracefmt.analysis.parquetschema import arrow_schema

    to_parquet(synthetic_run, tmp_path / "e")
    for table in SCHEMAS:
        for f in (tmp_path / "e" / table).rglob("*.parquet"):
            assert pq.ParquetFile(f).schema_arrow.remove_metadata() == arrow_schema(table), f
            read = pq.read_table(f)
            for column in SCHEMAS[table]:
                if not column.nullable:
                    assert read.column(column.name).null_count == 0, (f, column.name)


def test_every_requirement_id_is_tested() -> None:
    ids = set(re.findall(r"\*\*(PQ-[A-Z]+-\d{3})\.\*\*", SPEC.read_text(encoding="utf-8")))
    assert ids, "the spec states no requirement"
    tests = "".join(p.read_text(encoding="utf-8") for p in Path(__file__).parent.glob("test_*.py"))
    named = set(re.findall(r"PQ-[A-Z]+-\d{3}", tests))
    assert ids == named
