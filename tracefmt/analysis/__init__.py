"""SQL and DataFrames over traces: a run's tables as a Parquet dataset (:func:`to_parquet`, spec
``spec/parquet.md``) and DuckDB queries over it (:func:`run_sql`).

Needs the ``analysis`` extra (pyarrow, duckdb): ``pip install 'tracefmt[analysis]'``.  This
package imports without it; its functions then raise a :class:`~tracefmt.errors.TraceError`
saying so.  The bulk reading underneath is :mod:`tracefmt.tablescan` (numpy only).
"""

from tracefmt.analysis.extra import INSTALL_HINT
from tracefmt.analysis.parquet import (
    EXPORT_MANIFEST,
    ExportOptions,
    ExportSummary,
    TableExport,
    read_export_manifest,
    to_parquet,
)
from tracefmt.analysis.parquetschema import PARQUET_FORMAT_VERSION, SCHEMAS, ColumnSpec
from tracefmt.analysis.sql import QueryResult, cache_path, connect, query_export, run_sql

__all__ = [
    "EXPORT_MANIFEST",
    "INSTALL_HINT",
    "PARQUET_FORMAT_VERSION",
    "SCHEMAS",
    "ColumnSpec",
    "ExportOptions",
    "ExportSummary",
    "QueryResult",
    "TableExport",
    "cache_path",
    "connect",
    "query_export",
    "read_export_manifest",
    "run_sql",
    "to_parquet",
]
