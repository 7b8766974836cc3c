"""``tracefmt sql``: SQL over a run, with DuckDB (embedded, no server) over its Parquet export.

:func:`connect` opens an in-memory DuckDB database with one view per table of the export
(``steps``, ``ops``, ``tensors``, ``stats``, ``op_timings``, ``events``, ``scalars``,
``light_stats``; spec/parquet.md), each with the partition columns ``rank`` (BIGINT) and
``step_block`` (VARCHAR).  :func:`run_sql` runs a query over a run: over the export ``parquet``
when given (exporting there first when it does not exist yet), else over a cached export next
to the run (:func:`cache_path`: ``RUN.parquet`` beside a run directory or rank file), made when
missing and made again when the run has changed since; where that directory cannot be written,
over an export to a temporary directory, removed after the query.

Example::

    result = run_sql("runs/exp1", "SELECT step, value FROM scalars WHERE name = 'loss'")
    for row in result.records():
        print(row["step"], row["value"])
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracefmt.analysis.extra import require
from tracefmt.analysis.parquet import (
    EXPORT_MANIFEST,
    ExportOptions,
    read_export_manifest,
    source_state,
    to_parquet,
)
from tracefmt.analysis.parquetschema import SCHEMAS
from tracefmt.errors import TraceError
from tracefmt.progress import ProgressFn
from tracefmt.tablescan import TABLES

__all__ = ["QueryResult", "cache_path", "connect", "prepared_export", "query_export", "run_sql"]

#: ``note(text)``: told what is being exported where (the CLI prints it on stderr).
NoteFn = Callable[[str], None]


@dataclass(frozen=True)
class QueryResult:
    """A query's result: column names and DuckDB types, and the rows as tuples."""

    columns: tuple[str, ...]
    types: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]

    def records(self) -> list[dict[str, Any]]:
        """The rows as ``{column: value}`` dicts."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def connect(export: str | os.PathLike[str]) -> Any:
    """An in-memory DuckDB connection with a view per table of the export at ``export``."""
    duckdb = require("duckdb", "tracefmt sql")
    root = Path(export)
    if read_export_manifest(root) is None:
        raise TraceError(
            f"{str(root)!r} is not a tracefmt Parquet export (it has no readable {EXPORT_MANIFEST}); "
            "make one with 'tracefmt to-parquet'."
        )
    con = duckdb.connect(":memory:")
    for table in TABLES:
        if not any((root / table).glob("*/*/*.parquet")):  # an export older than the table
            con.execute(f"CREATE VIEW {table} AS {_empty_select(table)}")
            continue
        files = _quoted(str(root / table / "*" / "*" / "*.parquet"))
        con.execute(
            f"CREATE VIEW {table} AS SELECT * FROM read_parquet({files}, hive_partitioning = true, "
            "hive_types = {'rank': BIGINT, 'step_block': VARCHAR})"
        )
    return con


_SQL_TYPES = {
    "int32": "INTEGER",
    "int64": "BIGINT",
    "uint64": "UBIGINT",
    "float64": "DOUBLE",
    "bool": "BOOLEAN",
    "string": "VARCHAR",
}


def _sql_type(kind: str) -> str:
    return _sql_type(kind[5:-1]) + "[]" if kind.startswith("list<") else _SQL_TYPES[kind]


def _empty_select(table: str) -> str:
    """A query of no rows with the columns of ``table`` (and the partition columns)."""
    columns = [f"CAST(NULL AS {_sql_type(c.type)}) AS {c.name}" for c in SCHEMAS[table]]
    columns += ["CAST(NULL AS BIGINT) AS rank", "CAST(NULL AS VARCHAR) AS step_block"]
    return f"SELECT {', '.join(columns)} WHERE false"


def query_export(export: str | os.PathLike[str], query: str) -> QueryResult:
    """Run ``query`` over the export at ``export`` (see :func:`connect`)."""
    duckdb = require("duckdb", "tracefmt sql")
    con = connect(export)
    try:
        cursor = con.execute(query)
        description = cursor.description or []
        rows = tuple(tuple(r) for r in cursor.fetchall()) if description else ()
    except duckdb.Error as e:
        # DuckDB's message ends with the query and a caret under the error; one line here.
        message = " ".join(str(e).split("\n\nLINE ")[0].split())
        raise TraceError(f"DuckDB could not run the query: {message}") from e
    finally:
        con.close()
    return QueryResult(tuple(d[0] for d in description), tuple(str(d[1]) for d in description), rows)


def cache_path(run: str | os.PathLike[str]) -> Path:
    """Where :func:`run_sql` keeps the export of ``run`` between queries: ``RUN.parquet`` next
    to the run directory (or rank file)."""
    p = Path(run).resolve()  # "." and "runs/exp1/" have the name of the directory they are
    return p.with_name(p.name + ".parquet")


def _current(export: Path, run: Path) -> bool:
    """Whether ``export`` is a whole-run export of ``run`` as the run is now (its files unchanged:
    a rank skipped as damaged then is damaged now)."""
    manifest = read_export_manifest(export)
    return (
        manifest is not None
        and manifest.get("source") == str(run.resolve())
        and manifest.get("steps") is None
        and manifest.get("source_state") == source_state(run)
        and manifest.get("partitioning", {}).get("block_steps") == ExportOptions().block_steps
    )


@contextlib.contextmanager
def prepared_export(
    run: str | os.PathLike[str],
    parquet: str | os.PathLike[str] | None = None,
    *,
    progress: ProgressFn | None = None,
    note: NoteFn | None = None,
) -> Iterator[Path]:
    """The export to query for ``run``, made first where needed (see the module docstring); a
    temporary one is removed when the ``with`` block ends."""
    src = Path(run)
    say = note or (lambda text: None)
    if parquet is not None:
        out = Path(parquet)
        if not out.exists() or (out.is_dir() and not any(out.iterdir())):
            say(f"exporting {src} to {out}")
            to_parquet(src, out, progress=progress)
        else:
            manifest = read_export_manifest(out)
            if manifest is None:
                raise TraceError(
                    f"{str(out)!r} is not a tracefmt Parquet export; give an export made by "
                    "'tracefmt to-parquet', or a directory that does not exist yet."
                )
            if manifest.get("source") != str(src.resolve()):
                say(f"note: {out} was exported from {manifest.get('source')}, not from {src}")
            elif manifest.get("source_state") != source_state(src):
                say(
                    f"note: {src} has changed since {out} was exported; 'tracefmt to-parquet "
                    "--overwrite' exports it again"
                )
        yield out
        return
    cache = cache_path(src)
    if _current(cache, src):
        yield cache
        return
    fresh = read_export_manifest(cache) is not None or not cache.exists()
    if fresh:
        try:
            say(f"exporting {src} to {cache} (kept for later queries until the run changes)")
            to_parquet(src, cache, ExportOptions(overwrite=True), progress=progress)
        except OSError as e:  # a read-only or foreign directory: a temporary export instead
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            fresh = False
    if fresh:
        yield cache
        return
    tmp = Path(tempfile.mkdtemp(prefix="tracefmt-sql-"))
    try:
        say(f"exporting {src} to the temporary directory {tmp} ({cache} cannot be used)")
        to_parquet(src, tmp / "export", progress=progress)
        yield tmp / "export"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_sql(
    run: str | os.PathLike[str],
    query: str,
    *,
    parquet: str | os.PathLike[str] | None = None,
    progress: ProgressFn | None = None,
    note: NoteFn | None = None,
) -> QueryResult:
    """Run ``query`` (DuckDB SQL over the views of :func:`connect`) over ``run``'s export."""
    require("duckdb", "tracefmt sql")  # before exporting, not after
    with prepared_export(run, parquet, progress=progress, note=note) as export:
        return query_export(export, query)
