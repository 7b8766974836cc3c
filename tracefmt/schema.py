"""The format's layout as plain data, generated from :mod:`tracefmt._layout`.

``python -m tracefmt.schema > spec/schema.json`` writes the machine-readable schema that
``spec/format.md`` describes in prose; a test checks the committed file equals the generated one.
The validator also asks this module which HDF5 filter ids a file's datasets should use
(:func:`filter_ids`); :func:`expected_datasets` (which datasets, with which rows) is
:mod:`tracefmt._layout`'s, shown here too.  The layout is stated once.

Example::

    >>> from tracefmt.schema import schema
    >>> schema()["format_version"]
    '1.6'
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from tracefmt import _layout as L
from tracefmt._layout import expected_datasets
from tracefmt.dtypes import DTYPE_INFO, DType
from tracefmt.filters import ALIASES, FILTERS
from tracefmt.light import LightKind
from tracefmt.model import Phase, Role

__all__ = [
    "H5Z_DEFLATE",
    "H5Z_FLETCHER32",
    "H5Z_LZF",
    "H5Z_SCALEOFFSET",
    "H5Z_SHUFFLE",
    "ROOT_ATTRIBUTES",
    "expected_datasets",
    "filter_ids",
    "schema",
    "schema_json",
    "values_filter_ids",
]

#: HDF5 filter ids of the standard filters (H5Z_FILTER_*).
H5Z_DEFLATE = 1
H5Z_SHUFFLE = 2
H5Z_FLETCHER32 = 3
H5Z_SCALEOFFSET = 6
H5Z_LZF = 32000

#: Root attributes: name -> (kind, meaning).  ``kind`` is ``string``, ``integer`` or ``json``.
ROOT_ATTRIBUTES: dict[str, tuple[str, str]] = {
    L.ATTR_MAGIC: ("string", f"always {L.FORMAT_MAGIC!r}: marks an HDF5 file as a trace"),
    L.ATTR_VERSION: ("string", "format version 'MAJOR.MINOR'"),
    L.ATTR_PROVENANCE: (
        "json",
        "JSON object: versions of tracefmt, h5py, hdf5, numpy, python (and torch), creation time, host",
    ),
    L.ATTR_RUN_ID: ("string", "identifies the run; equal in every rank file of a run"),
    L.ATTR_RANK: ("integer", "rank of the process that wrote the file, 0 <= rank < world_size"),
    L.ATTR_WORLD_SIZE: ("integer", "number of ranks in the run"),
    L.ATTR_VALUES_FILTER: ("string", "name of the filter pipeline of the value heaps"),
    L.ATTR_HIST_BINS: ("integer", f"bins per histogram, 0..{L.MAX_HIST_BINS} (0: no histograms)"),
}


def filter_ids(kwargs: Mapping[str, Any]) -> tuple[int, ...]:
    """Sorted HDF5 filter ids that h5py ``create_dataset`` keyword arguments ``kwargs`` set up."""
    ids: set[int] = set()
    compression = kwargs.get("compression")
    if compression == "gzip":
        ids.add(H5Z_DEFLATE)
    elif compression == "lzf":
        ids.add(H5Z_LZF)
    elif isinstance(compression, (int, np.integer)):
        ids.add(int(compression))
    elif compression is not None:
        raise ValueError(f"Unknown h5py compression {compression!r}.")
    if kwargs.get("shuffle"):
        ids.add(H5Z_SHUFFLE)
    if kwargs.get("fletcher32"):
        ids.add(H5Z_FLETCHER32)
    if kwargs.get("scaleoffset") is not None:
        ids.add(H5Z_SCALEOFFSET)
    return tuple(sorted(ids))


def values_filter_ids(name: str) -> tuple[int, ...]:
    """HDF5 filter ids of the values filter ``name`` (imports hdf5plugin for plugin filters)."""
    return filter_ids(FILTERS[name].h5py_kwargs())


def _fields(dtype: np.dtype[Any]) -> list[dict[str, Any]]:
    fields = []
    for name in dtype.names or ():
        ftype = dtype.fields[name][0] if dtype.fields else dtype
        shape: list[int | str] = list(ftype.shape)
        fields.append({"name": name, "type": ftype.base.str, "shape": shape})
    return fields


def _dataset(
    kind: str, dtype: np.dtype[Any], chunk_rows: int, filters: Any, since: str = f"{L.FORMAT_MAJOR}.0"
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "kind": kind,
        "since": since,
        "chunk_rows": chunk_rows,
        "filters": filters,
        "row_bytes": dtype.itemsize,
    }
    if dtype.names:
        entry["fields"] = _fields(dtype)
    else:
        entry["type"] = dtype.str
    return entry


def schema() -> dict[str, Any]:
    """The whole schema as JSON-ready data."""

    def table_filters(name: str) -> dict[str, Any]:
        kwargs = L.table_filters(name)
        return {"h5py": dict(kwargs), "ids": list(filter_ids(kwargs))}

    datasets: dict[str, Any] = {}
    for name, (dtype, rows) in L.TABLES.items():
        datasets[name] = _dataset(
            "table", dtype, rows, table_filters(name), f"{L.FORMAT_MAJOR}.{L.SINCE_MINOR.get(name, 0)}"
        )
    for name, (dtype, rows) in L.HEAPS.items():
        since = f"{L.FORMAT_MAJOR}.{L.SINCE_MINOR.get(name, 0)}"  # 1.6: rng_bytes
        datasets[name] = _dataset("heap", dtype, rows, table_filters(name), since)
    hists = _dataset("table", L.hist_dtype(1), L.HIST_ROWS_PER_CHUNK, table_filters(L.HISTS))
    hists["row_bytes"] = "depends on bins"
    for field in hists["fields"]:
        if field["name"] == "counts":
            field["shape"] = ["bins"]
    hists["bins"] = f"max({L.ATTR_HIST_BINS}, 1)"
    datasets[L.HISTS] = hists
    for name in L.VALUE_HEAPS:
        dtype = np.dtype(name.rsplit("/", 1)[1])
        datasets[name] = _dataset(
            "values",
            dtype,
            L.VALUE_CHUNK_BYTES // dtype.itemsize,
            f"the pipeline named by the {L.ATTR_VALUES_FILTER!r} attribute",
        )
    return {
        "format": L.FORMAT_MAGIC,
        "format_version": L.FORMAT_VERSION,
        "major": L.FORMAT_MAJOR,
        "minor": L.FORMAT_MINOR,
        "rank_file_pattern": L.RANK_FILE_PATTERN,
        "rank_file_glob": L.RANK_FILE_GLOB,
        "byte_order": "little",
        "root_attributes": {
            name: {"kind": kind, "meaning": meaning} for name, (kind, meaning) in ROOT_ATTRIBUTES.items()
        },
        "datasets": datasets,
        "values_filters": {
            name: {
                "description": f.description,
                "needs_plugin": f.needs_plugin,
                "ids": list(values_filter_ids(name)),
            }
            for name, f in FILTERS.items()
        },
        "values_filter_aliases": dict(ALIASES),
        "enums": {
            "DType": {
                str(int(d)): {
                    "name": d.label,
                    "storage": DTYPE_INFO[d].storage.name,
                    "items_per_element": DTYPE_INFO[d].per_element,
                }
                for d in DType
            },
            "Phase": {str(int(p)): p.label for p in Phase},
            "Role": {str(int(r)): r.label for r in Role},
            "LightKind": {str(int(k)): k.label for k in LightKind},
        },
        "flags": {
            "stats": {
                "STAT_MOMENTS": L.STAT_MOMENTS,
                "STAT_COUNTS": L.STAT_COUNTS,
                "STAT_FINGERPRINT": L.STAT_FINGERPRINT,
            },
            "step": {
                "STEP_HAS_NAN": L.STEP_HAS_NAN,
                "STEP_HAS_INF": L.STEP_HAS_INF,
                "STEP_NONFINITE_CREATED": L.STEP_NONFINITE_CREATED,
                "STEP_NONFINITE_STATE": L.STEP_NONFINITE_STATE,
            },
            "light_stats": {
                "LIGHT_MOMENTS": L.LIGHT_MOMENTS,
                "LIGHT_COUNTS": L.LIGHT_COUNTS,
                "LIGHT_INPUTS_NONFINITE": L.LIGHT_INPUTS_NONFINITE,
            },
        },
        "sentinels": {"NO_STRING": L.NO_STRING, "NO_INDEX": L.NO_INDEX},
        "limits": {
            "MAX_NDIM": L.MAX_NDIM,
            "MAX_STRING_BYTES": L.MAX_STRING_BYTES,
            "MAX_GRAPH_OPS": L.MAX_GRAPH_OPS,
            "MAX_STEP_ROWS": L.MAX_STEP_ROWS,
            "MAX_VALUE_BYTES": L.MAX_VALUE_BYTES,
            "MAX_HIST_BINS": L.MAX_HIST_BINS,
            "MAX_STEP_COUNT_SCAN": L.MAX_STEP_COUNT_SCAN,
        },
    }


def schema_json() -> str:
    """The schema as the text of ``spec/schema.json`` (two-space indent, trailing newline)."""
    return json.dumps(schema(), indent=2) + "\n"


def main() -> None:
    sys.stdout.write(schema_json())


if __name__ == "__main__":
    main()
