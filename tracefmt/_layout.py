"""Every HDF5 detail of the format in one place: names, row dtypes, chunking, filters and limits.

Nothing outside ``tracefmt`` should need this module; ``spec/format.md`` describes the same layout
in prose and ``spec/schema.json`` is generated from it (``python -m tracefmt.schema``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tracefmt._modlayout import MODULE_DTYPE, MODULES, STEP_MODULE_DTYPE, STEP_MODULES  # 1.5
from tracefmt._rnglayout import RNG_HEAPS, RNG_SINCE, RNG_TABLES  # 1.6: per-step RNG states
from tracefmt.dtypes import STORAGE_HEAPS
from tracefmt.model import StatFlags, StepFlags

FORMAT_MAGIC = "tracefmt"
FORMAT_MAJOR = 1
FORMAT_MINOR = 6
FORMAT_VERSION = f"{FORMAT_MAJOR}.{FORMAT_MINOR}"
RANK_FILE_PATTERN = "rank-{rank:05d}.tft.h5"
RANK_FILE_GLOB = "rank-*.tft.h5"
RUN_MANIFEST = "run.json"  # a run directory's manifest (format 1.2), written by global rank 0

# Root attributes.
ATTR_MAGIC = "tracefmt_format"
ATTR_VERSION = "format_version"
ATTR_PROVENANCE = "provenance"
ATTR_RUN_ID = "run_id"
ATTR_RANK = "rank"
ATTR_WORLD_SIZE = "world_size"
ATTR_VALUES_FILTER = "values_filter"
ATTR_HIST_BINS = "hist_bins"
ROOT_ATTRS = frozenset(
    {
        ATTR_MAGIC,
        ATTR_VERSION,
        ATTR_PROVENANCE,
        ATTR_RUN_ID,
        ATTR_RANK,
        ATTR_WORLD_SIZE,
        ATTR_VALUES_FILTER,
        ATTR_HIST_BINS,
    }
)

NO_STRING = -1  # string id meaning "none"
NO_INDEX = -1  # op / tensor index meaning "none"

STRINGS_BYTES = "strings/bytes"
STRINGS_INDEX = "strings/index"
GRAPHS = "graphs"
OPS = "ops"
EDGES = "edges"
TENSORS = "tensors"
DIMS = "dims"
STEPS = "steps"
STATS = "stats"
OP_STATS = "op_stats"
HISTS = "hists"
DATA_INDEX = "data_index"
EVENTS = "events"
SCALARS = "scalars"
OP_ATTRS = "op_attrs"
TENSOR_OFFSETS = "tensor_offsets"
STEP_OVERRIDES = "step_overrides"
OP_STARTS = "op_starts"
LIGHT_STEPS = "light_steps"
LIGHT_STATS = "light_stats"
LIGHT_EVENTS = "light_events"
LIGHT_SCALARS = "light_scalars"
DATA_GROUP = "data"

STRING_INDEX_DTYPE = np.dtype([("offset", "<u8"), ("length", "<u4")])

GRAPH_DTYPE = np.dtype(
    [
        ("op_start", "<u8"),
        ("op_count", "<u4"),
        ("edge_start", "<u8"),
        ("edge_count", "<u4"),
        ("tensor_start", "<u8"),
        ("tensor_count", "<u4"),
        ("dim_start", "<u8"),
        ("dim_count", "<u4"),
        ("digest", "u1", (16,)),
    ]
)

OP_DTYPE = np.dtype(
    [
        ("name", "<i4"),
        ("phase", "u1"),
        ("module", "<i4"),
        ("attrs", "<i4"),
        ("source", "<i4"),
        ("in_start", "<u4"),
        ("in_count", "<u4"),
        ("out_start", "<u4"),
        ("out_count", "<u4"),
    ]
)

EDGE_DTYPE = np.dtype([("tensor", "<u4"), ("arg", "<i4"), ("item", "<i4")])

TENSOR_DTYPE = np.dtype(
    [
        ("dtype", "u1"),
        ("role", "u1"),
        ("ndim", "u1"),
        ("dim_start", "<u4"),
        ("device", "<i4"),
        ("name", "<i4"),
        ("producer", "<i4"),
        ("producer_slot", "<i4"),
        ("version", "<i4"),
        ("storage_offset", "<i8"),
    ]
)

STEP_DTYPE = np.dtype(
    [
        ("step", "<i8"),
        ("graph", "<u8"),
        ("stats_start", "<u8"),
        ("stats_count", "<u4"),
        ("op_stats_start", "<u8"),
        ("op_stats_count", "<u4"),
        ("data_start", "<u8"),
        ("data_count", "<u4"),
        ("hist_start", "<u8"),
        ("hist_count", "<u4"),
        ("event_start", "<u8"),
        ("event_count", "<u4"),
        ("scalar_start", "<u8"),
        ("scalar_count", "<u4"),
        ("wall_time", "<f8"),
        ("duration", "<f8"),
        ("flags", "<u4"),
        ("dropped", "<u8"),
    ]
)

STATS_DTYPE = np.dtype(
    [
        ("flags", "u1"),
        ("min", "<f8"),
        ("max", "<f8"),
        ("mean", "<f8"),
        ("std", "<f8"),
        ("norm", "<f8"),
        ("nan", "<u8"),
        ("inf", "<u8"),
        ("zero", "<u8"),
        ("fingerprint", "<u8"),
    ]
)
# STATS_DTYPE flags
STAT_MOMENTS = StatFlags.MOMENTS
STAT_COUNTS = StatFlags.COUNTS
STAT_FINGERPRINT = StatFlags.FINGERPRINT

OP_STATS_DTYPE = np.dtype([("host_ns", "<i8"), ("device_ns", "<i8"), ("mem_bytes", "<i8")])
# Since 1.3, when each op started on the host, in ns after its step's start (-1: not measured).
# Row r belongs to row r of ``op_stats`` and is read with the step's op_stats range.  A table of
# its own, not a field of OP_STATS_DTYPE: readers check row dtypes exactly (a 1.2 reader refuses
# an ``op_stats`` with a fourth field), and they skip a dataset they do not know.
OP_START_DTYPE = np.dtype([("host_start_ns", "<i8")])

DATA_INDEX_DTYPE = np.dtype(
    [
        ("tensor", "<u4"),
        ("offset", "<u8"),
        ("count", "<u8"),
        ("fingerprint", "<u8"),
    ]
)

EVENT_DTYPE = np.dtype([("kind", "<i4"), ("op", "<i4"), ("tensor", "<i4"), ("message", "<i4")])

SCALAR_DTYPE = np.dtype([("name", "<i4"), ("value", "<f8")])

# Since 1.1, a step stores apart what changes from step to step on an unchanged graph: an op's
# attributes (an optimizer's step size, a slice's bounds) and a tensor's storage offset (a view
# sliced at a per-step position).  ``op_attrs`` and ``tensor_offsets`` hold the ops and tensors
# of a step whose value differs from the graph's (its base value: the first step's).
OP_ATTRS_DTYPE = np.dtype([("op", "<u4"), ("attrs", "<i4")])
TENSOR_OFFSET_DTYPE = np.dtype([("tensor", "<u4"), ("storage_offset", "<i8")])
# Row k holds the ranges of those tables of row k of ``steps``.  A table of its own, not fields of
# STEP_DTYPE: a field changes the dtype of ``steps``, and 1.0 readers refuse that.
STEP_OVERRIDE_DTYPE = np.dtype(
    [
        ("op_attrs_start", "<u8"),
        ("op_attrs_count", "<u4"),
        ("tensor_offset_start", "<u8"),
        ("tensor_offset_count", "<u4"),
    ]
)


# Since 1.4, light steps: per-module and per-parameter statistics of a step without its graph.
# One ``light_steps`` row per light step (its commit marker, like ``steps``), with ranges into
# its own tables: a light step's events and scalars are not in ``events`` and ``scalars``, so that
# each index table's ranges follow its own rows (TF-STEP-004, TF-LIGHT-002).
LIGHT_STEP_DTYPE = np.dtype(
    [
        ("step", "<i8"),
        ("stats_start", "<u8"),
        ("stats_count", "<u4"),
        ("event_start", "<u8"),
        ("event_count", "<u4"),
        ("scalar_start", "<u8"),
        ("scalar_count", "<u4"),
        ("wall_time", "<f8"),
        ("duration", "<f8"),
        ("flags", "<u4"),
    ]
)
# A light row: ``name`` is the string id of a module path or parameter FQN, ``kind`` a LightKind
# code, ``flags`` LightFlags bits; ``tracefmt.light.LIGHT_ROW_DTYPE`` is this dtype (in memory
# ``name`` indexes the record's names instead).
LIGHT_STATS_DTYPE = np.dtype(
    [
        ("name", "<i4"),
        ("kind", "u1"),
        ("flags", "u1"),
        ("min", "<f8"),
        ("max", "<f8"),
        ("mean", "<f8"),
        ("std", "<f8"),
        ("norm", "<f8"),
        ("nan", "<u8"),
        ("inf", "<u8"),
        ("numel", "<u8"),
    ]
)
LIGHT_MOMENTS, LIGHT_COUNTS, LIGHT_INPUTS_NONFINITE = 1, 2, 8  # light_stats.flags


def hist_dtype(bins: int) -> np.dtype[np.void]:
    """Row dtype of the histogram table for a file with ``bins`` bins per histogram."""
    return np.dtype([("tensor", "<u4"), ("lo", "<f8"), ("hi", "<f8"), ("counts", "<u8", (bins,))])


# Step flags (STEP_DTYPE.flags and, from 1.4, LIGHT_STEP_DTYPE.flags).
STEP_HAS_NAN = int(StepFlags.HAS_NAN)
STEP_HAS_INF = int(StepFlags.HAS_INF)
STEP_NONFINITE_CREATED = int(StepFlags.NONFINITE_CREATED)  # 1.4
STEP_NONFINITE_STATE = int(StepFlags.NONFINITE_STATE)  # 1.4


def step_flag_bits(minor: int) -> int:
    """The step flag bits defined in format version ``1.minor`` (plain ints: ``~`` of a flag
    enum drops the undefined bits instead of keeping them)."""
    since_1_4 = STEP_NONFINITE_CREATED | STEP_NONFINITE_STATE if minor >= 4 else 0
    return STEP_HAS_NAN | STEP_HAS_INF | since_1_4


# Tables: path -> (row dtype, rows per chunk).  Chunks hold about 32-64 KiB of rows.
TABLES: dict[str, tuple[np.dtype[Any], int]] = {
    STRINGS_INDEX: (STRING_INDEX_DTYPE, 4096),
    GRAPHS: (GRAPH_DTYPE, 512),
    OPS: (OP_DTYPE, 2048),
    EDGES: (EDGE_DTYPE, 4096),
    TENSORS: (TENSOR_DTYPE, 2048),
    STEPS: (STEP_DTYPE, 512),
    STATS: (STATS_DTYPE, 1024),
    OP_STATS: (OP_STATS_DTYPE, 2048),
    DATA_INDEX: (DATA_INDEX_DTYPE, 1024),
    EVENTS: (EVENT_DTYPE, 1024),
    SCALARS: (SCALAR_DTYPE, 2048),
    # 8-12 KiB: every file stores at least one whole chunk of each per-step table, and a step
    # has a few override rows or none.
    OP_ATTRS: (OP_ATTRS_DTYPE, 1024),
    TENSOR_OFFSETS: (TENSOR_OFFSET_DTYPE, 1024),
    STEP_OVERRIDES: (STEP_OVERRIDE_DTYPE, 512),
    # The rows per chunk of op_stats, so that chunk k of each holds the same rows (16 KiB).
    OP_STARTS: (OP_START_DTYPE, 2048),
    LIGHT_STEPS: (LIGHT_STEP_DTYPE, 1024),  # 64 KiB
    LIGHT_STATS: (LIGHT_STATS_DTYPE, 1024),  # 56 KiB: a few light steps of a mid-size model
    LIGHT_EVENTS: (EVENT_DTYPE, 256),  # light steps have events only when a trigger fires
    LIGHT_SCALARS: (SCALAR_DTYPE, 2048),
    MODULES: (MODULE_DTYPE, 1024),  # 1.5 (tracefmt._modlayout): 48 KiB, 1024 modules
    STEP_MODULES: (STEP_MODULE_DTYPE, 1024),  # 12 KiB, like step_overrides
    **RNG_TABLES,  # 1.6 (tracefmt._rnglayout): rng_states, step_rng_states
}
#: The minor version that added a dataset (unlisted: 1.0); a file of an older minor version lacks it.
SINCE_MINOR: dict[str, int] = {
    OP_ATTRS: 1, TENSOR_OFFSETS: 1, STEP_OVERRIDES: 1, OP_STARTS: 3, **RNG_SINCE,  # 1.6: _rnglayout
    LIGHT_STEPS: 4, LIGHT_STATS: 4, LIGHT_EVENTS: 4, LIGHT_SCALARS: 4, MODULES: 5, STEP_MODULES: 5,
}  # fmt: skip
# 1-D heaps of plain numbers: path -> (dtype, items per chunk).
HEAPS: dict[str, tuple[np.dtype[Any], int]] = {
    STRINGS_BYTES: (np.dtype("u1"), 65536),
    DIMS: (np.dtype("<i8"), 8192),
    **RNG_HEAPS,  # 1.6: rng_bytes
}
HIST_ROWS_PER_CHUNK = 256

#: A step's ranges: table path -> (start field, count field) of its ``steps`` row.
STEP_RANGES: dict[str, tuple[str, str]] = {
    STATS: ("stats_start", "stats_count"),
    OP_STATS: ("op_stats_start", "op_stats_count"),
    DATA_INDEX: ("data_start", "data_count"),
    HISTS: ("hist_start", "hist_count"),
    EVENTS: ("event_start", "event_count"),
    SCALARS: ("scalar_start", "scalar_count"),
}
#: A step's ranges of its own op attributes and storage offsets (format 1.1): table path ->
#: (start field, count field) of its ``step_overrides`` row.
OVERRIDE_RANGES: dict[str, tuple[str, str]] = {
    OP_ATTRS: ("op_attrs_start", "op_attrs_count"),
    TENSOR_OFFSETS: ("tensor_offset_start", "tensor_offset_count"),
}
#: Tables parallel to a table of STEP_RANGES (format 1.3): row r of the key belongs to row r of
#: the value, so a step's rows of the key are its range of the value.
PARALLEL_TABLES: dict[str, str] = {OP_STARTS: OP_STATS}
#: A light step's ranges (format 1.4): table path -> (start field, count field) of its
#: ``light_steps`` row.
LIGHT_RANGES: dict[str, tuple[str, str]] = {
    LIGHT_STATS: ("stats_start", "stats_count"),
    LIGHT_EVENTS: ("event_start", "event_count"),
    LIGHT_SCALARS: ("scalar_start", "scalar_count"),
}
VALUE_CHUNK_BYTES = 1 << 20  # one chunk of a value heap; a power of two, so it divides most tensors

#: Paths of the value heaps, one per storage dtype.
VALUE_HEAPS: tuple[str, ...] = tuple(f"{DATA_GROUP}/{name}" for name in STORAGE_HEAPS)

# Tables are small and repetitive: deflate + shuffle, and fletcher32 so corruption is never silent.
TABLE_FILTERS: dict[str, Any] = {
    "compression": "gzip",
    "compression_opts": 1,
    "shuffle": True,
    "fletcher32": True,
}
# Tables every step appends to: no filter.  Each flush rewrites a table's last, partial chunk.
# Compressed, the chunk is written anew and in SWMR mode HDF5 never reuses the space freed: with
# deflate a 10-op stats-only step flushed every step cost 21x its raw bytes, a 100-op step 2.8x.
# With fletcher32 the chunk is rewritten in place, and a SIGKILL during that rewrite leaves a chunk
# whose checksum fails, losing rows that were already flushed (seen in tests/test_crash.py).
# Unfiltered, the rewrite puts the same bytes over the flushed rows: a torn write cannot hurt them.
STEP_TABLES = frozenset(
    {
        STEPS, STATS, OP_STATS, DATA_INDEX, HISTS, EVENTS, SCALARS, OP_ATTRS, TENSOR_OFFSETS,
        STEP_OVERRIDES, OP_STARTS, LIGHT_STEPS, LIGHT_STATS, LIGHT_EVENTS, LIGHT_SCALARS,
        STEP_MODULES, *RNG_TABLES, *RNG_HEAPS,
    }
)  # fmt: skip
STEP_TABLE_FILTERS: dict[str, Any] = {}


def has_dataset(name: str, minor: int) -> bool:
    """Whether a file of format version ``1.minor`` has dataset ``name`` (see SINCE_MINOR)."""
    return SINCE_MINOR.get(name, 0) <= minor


def expected_datasets(hist_bins: int, minor: int = FORMAT_MINOR) -> dict[str, np.dtype[Any]]:
    """Every dataset path of a file of format version ``1.minor`` with ``hist_bins`` bins per
    histogram, with its row dtype.  (A file of an older minor version lacks the datasets added
    since; one of a newer minor version has at least these.)  The step indices come first (from
    1.4 the light step index second): a reader opens them before the tables their rows point into
    (see ``RankFile.refresh``)."""
    out: dict[str, np.dtype[Any]] = {STEPS: STEP_DTYPE}
    if has_dataset(LIGHT_STEPS, minor):  # the light step index, before the tables it points into
        out[LIGHT_STEPS] = LIGHT_STEP_DTYPE
    out.update({name: dt for name, (dt, _) in TABLES.items() if has_dataset(name, minor)})
    out.update({name: dt for name, (dt, _) in HEAPS.items() if has_dataset(name, minor)})
    out[HISTS] = hist_dtype(max(hist_bins, 1))
    out.update({name: np.dtype(name.rsplit("/", 1)[1]) for name in VALUE_HEAPS})
    return out


def table_filters(name: str) -> dict[str, Any]:
    """The h5py filter arguments of table or heap ``name`` (not of the value heaps)."""
    return STEP_TABLE_FILTERS if name in STEP_TABLES else TABLE_FILTERS


# Reader limits (hostile files).  Generous for real traces, small enough to refuse absurd ones.
MAX_NDIM = 64
MAX_STRING_BYTES = 1 << 20
MAX_GRAPH_OPS = 10_000_000
MAX_STEP_ROWS = 50_000_000
MAX_VALUE_BYTES = 1 << 36  # 64 GiB for one tensor's values
MAX_HIST_BINS = 4096
MAX_STEP_COUNT_SCAN = 100_000_000
MAX_WORLD_SIZE = 1 << 24
MAX_RUN_ID_CHARS = 4096
MAX_PROCESS_GROUPS = 1 << 20
MAX_MANIFEST_BYTES = 64 << 20

#: A graph's ranges: table path -> (start field, count field) of its ``graphs`` row, and the
#: largest count a reader accepts.
GRAPH_RANGES: dict[str, tuple[str, str, int]] = {
    OPS: ("op_start", "op_count", MAX_GRAPH_OPS),
    EDGES: ("edge_start", "edge_count", MAX_STEP_ROWS),
    TENSORS: ("tensor_start", "tensor_count", MAX_STEP_ROWS),
    DIMS: ("dim_start", "dim_count", MAX_STEP_ROWS),
}
