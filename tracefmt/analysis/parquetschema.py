"""The tables of the Parquet export: their columns and types (``spec/parquet.md`` in code), and
the conversion of a scanned table (:class:`tracefmt.tablescan.ColumnTable`) to Arrow.

The declaration (:data:`SCHEMAS`) is plain data; pyarrow is imported only by the functions that
build Arrow objects, so the schema can be listed (``_tracefmt.json``, the spec test) without it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from tracefmt.analysis.extra import require
from tracefmt.errors import TraceError
from tracefmt.tablescan import TABLES, ColumnTable, Labels, Masked, Ragged

__all__ = [
    "PARQUET_FORMAT_VERSION",
    "SCHEMAS",
    "ColumnSpec",
    "arrow_schema",
    "arrow_table",
    "empty_arrow_table",
]

#: The version of the export's layout (``MAJOR.MINOR``, spec/parquet.md "Versioning"): in
#: ``_tracefmt.json`` and in every file's key-value metadata.
PARQUET_FORMAT_VERSION = "1.0"


class ColumnSpec(NamedTuple):
    """One column: its name, its type (``int64``, ``string``, ``list<int32>``, ...) and whether
    it may hold nulls."""

    name: str
    type: str
    nullable: bool = False


def _cols(spec: str) -> tuple[ColumnSpec, ...]:
    """Columns written ``name:type`` (``?`` after the type: nullable), separated by spaces."""
    out = []
    for item in spec.split():
        name, kind = item.split(":")
        out.append(ColumnSpec(name, kind.rstrip("?"), kind.endswith("?")))
    return tuple(out)


_MOMENTS = "min:float64? max:float64? mean:float64? std:float64? norm:float64?"
#: Every table's columns, in order; the partition columns ``rank`` and ``step_block`` are the
#: directories, not in the files.
SCHEMAS: dict[str, tuple[ColumnSpec, ...]] = {
    "steps": _cols(
        "step:int64 step_kind:string graph:int64? num_ops:int64? num_tensors:int64? "
        "num_values:int64? num_events:int64 num_scalars:int64 num_light_rows:int64? "
        "wall_time:float64 duration:float64? has_nan:bool has_inf:bool nonfinite_created:bool "
        "nonfinite_state:bool dropped:int64?"
    ),
    "ops": _cols(
        "step:int64 op:int32 name:string phase:string module:string attrs:string source:string? "
        "inputs:list<int32> outputs:list<int32>"
    ),
    "tensors": _cols(
        "step:int64 tensor:int32 name:string? role:string dtype:string shape:list<int64> "
        "device:string producer:int32? producer_slot:int32 version:int32 storage_offset:int64"
    ),
    "stats": _cols(
        f"step:int64 tensor:int32 {_MOMENTS} nan:int64? inf:int64? zero:int64? fingerprint:uint64?"
    ),
    "op_timings": _cols(
        "step:int64 op:int32 host_ns:int64? device_ns:int64? mem_bytes:int64? host_start_ns:int64?"
    ),
    "events": _cols(
        "step:int64 step_kind:string event:int32 kind:string message:string op:int32? tensor:int32?"
    ),
    "scalars": _cols("step:int64 step_kind:string name:string value:float64"),
    "light_stats": _cols(
        f"step:int64 row:int32 name:string kind:string numel:int64 {_MOMENTS} nan:int64? "
        "inf:int64? inputs_nonfinite:bool"
    ),
}
if tuple(SCHEMAS) != TABLES:  # pragma: no cover - a mistake in this file, caught on import
    raise RuntimeError("The Parquet schemas and tracefmt.tablescan.TABLES name different tables.")


def _arrow_type(pa: Any, kind: str) -> Any:
    if kind.startswith("list<"):
        return pa.list_(_arrow_type(pa, kind[5:-1]))
    special = {"string": pa.string(), "bool": pa.bool_()}
    return special[kind] if kind in special else getattr(pa, kind)()


def arrow_schema(table: str, metadata: dict[str, str] | None = None) -> Any:
    """The Arrow schema of ``table`` (a ``pyarrow.Schema``), with key-value ``metadata``."""
    pa = require("pyarrow", "The Parquet export")
    return pa.schema(
        [pa.field(c.name, _arrow_type(pa, c.type), nullable=c.nullable) for c in SCHEMAS[table]],
        metadata=metadata,
    )


def _array(pa: Any, column: object, kind: Any) -> Any:
    if isinstance(column, Labels):
        missing = column.codes < 0
        indices = pa.array(column.codes, pa.int32(), mask=missing if missing.any() else None)
        labels = pa.array(list(column.labels), pa.string())
        return pa.DictionaryArray.from_arrays(indices, labels).cast(pa.string())
    if isinstance(column, Masked):
        missing = ~column.valid
        return pa.array(column.values, kind, mask=missing if missing.any() else None)
    if isinstance(column, Ragged):
        if len(column.offsets) and column.offsets[-1] >= 1 << 31:
            raise TraceError("A batch holds more than 2**31 list items; scan it in smaller batches.")
        offsets = pa.array(column.offsets.astype(np.int32), pa.int32())
        return pa.ListArray.from_arrays(offsets, pa.array(column.values, kind.value_type))
    return pa.array(column, kind)


def arrow_table(table: ColumnTable, metadata: dict[str, str] | None = None) -> Any:
    """``table`` as a ``pyarrow.Table`` of its export schema (strings resolved, nulls where the
    scan masked values)."""
    pa = require("pyarrow", "The Parquet export")
    schema = arrow_schema(table.name, metadata)
    arrays = [_array(pa, table.columns[f.name], f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def empty_arrow_table(name: str, metadata: dict[str, str] | None = None) -> Any:
    """A ``pyarrow.Table`` of table ``name`` with no rows."""
    return arrow_schema(name, metadata).empty_table()
