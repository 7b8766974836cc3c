"""Rules about the file as a whole: HDF5 format, root attributes, run directories, datasets, filters."""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterator
from pathlib import Path

import h5py

from tracefmt import _layout as L
from tracefmt.errors import MissingFilterError
from tracefmt.filters import FILTERS, ensure_readable
from tracefmt.model import Provenance
from tracefmt.rules._base import GATE_NONE, GATE_TRACE, Issue, Skip, rule
from tracefmt.rules._context import FileContext, RunContext
from tracefmt.rules._views import int_value, parse_version, text_value
from tracefmt.schema import H5Z_DEFLATE, H5Z_FLETCHER32, H5Z_SHUFFLE, values_filter_ids

_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_TABLE_FILTER_IDS = {H5Z_DEFLATE, H5Z_SHUFFLE, H5Z_FLETCHER32}


def _attr_loc(ctx: FileContext, name: str) -> str:
    return f"{ctx.path}:/@{name}"


def _pipeline(ds: h5py.Dataset) -> list[int]:
    plist = ds.id.get_create_plist()
    return [int(plist.get_filter(i)[0]) for i in range(plist.get_nfilters())]


def _superblock(path: Path) -> tuple[int, int | None] | None:
    """``(version, end-of-file address)`` of the HDF5 superblock, or None when there is none.

    The superblock is at offset 0, 512, 1024, 2048, ... (after a user block).
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        offset = 0
        while offset + 64 <= max(size, 64):
            f.seek(offset)
            head = f.read(96)
            if head[:8] == _SIGNATURE and len(head) >= 12:
                version, width = head[8], head[13] if head[8] < 2 else head[9]
                if width not in (2, 4, 8):
                    return version, None
                # Fields before the base address: 16 bytes (v0), 20 (v1), 4 (v2 and v3).
                first = {0: 24, 1: 28}.get(version, 12)
                at = first + 2 * width  # base address, then one more address, then end of file
                if len(head) < at + width:
                    return version, None
                base = int.from_bytes(head[first : first + width], "little")
                eof = int.from_bytes(head[at : at + width], "little")
                return version, offset + base + eof if base + eof < 1 << 62 else None
            offset = 512 if offset == 0 else offset * 2
    return None


@rule("TF-FILE-001", "A rank file is a complete HDF5 file marked as a trace", gate=GATE_NONE)
def file_is_trace(ctx: FileContext) -> Iterator[Issue]:
    if ctx.file is None:
        yield Issue(
            ctx.loc(),
            f"The file cannot be opened as HDF5 ({ctx.open_error}); it is not a "
            "trace, or it is damaged or truncated.",
        )
        return
    if not ctx.is_trace:
        value, problem = ctx.attr(L.ATTR_MAGIC)
        yield Issue(
            _attr_loc(ctx, L.ATTR_MAGIC),
            problem
            or f"The root attribute {L.ATTR_MAGIC!r} is {value!r}, not "
            f"{L.FORMAT_MAGIC!r}; this HDF5 file is not a trace.",
        )
    block = _superblock(ctx.path)
    size = ctx.path.stat().st_size
    if block is not None and block[1] is not None and size < block[1]:
        yield Issue(
            ctx.loc(), f"The file is truncated: it has {size} bytes, and its superblock says {block[1]}."
        )


@rule(
    "TF-FILE-002", "A rank file uses superblock version 3 or later (HDF5 1.10 format)", gate=GATE_TRACE
)
def file_superblock(ctx: FileContext) -> Iterator[Issue]:
    block = _superblock(ctx.path)
    if block is None:
        yield Issue(ctx.loc(), "No HDF5 superblock signature was found.")
    elif block[0] < 3:
        yield Issue(
            ctx.loc(),
            f"The HDF5 superblock has version {block[0]}; the format needs "
            "version 3 or later (the HDF5 1.10 format) for SWMR and metadata "
            "checksums. Rewrite the file with tracefmt.",
        )


@rule("TF-FILE-003", "format_version is MAJOR.MINOR with a known major version", gate=GATE_TRACE)
def file_version(ctx: FileContext) -> Iterator[Issue]:
    value, problem = ctx.attr(L.ATTR_VERSION)
    loc = _attr_loc(ctx, L.ATTR_VERSION)
    if problem:
        yield Issue(loc, problem)
        return
    text = text_value(value)
    version = None if text is None else parse_version(text)
    if version is None:
        yield Issue(loc, f"format_version {value!r} is not a string 'MAJOR.MINOR'.")
    elif version[0] != L.FORMAT_MAJOR:
        yield Issue(
            loc,
            f"The file has format version {text}; this validator knows major version "
            f"{L.FORMAT_MAJOR} only and checks nothing else. Use a tracefmt release "
            f"that supports version {version[0]}.",
        )
    elif version[1] > L.FORMAT_MINOR:
        yield Issue(
            loc,
            f"The file has format version {text}, newer than this validator's "
            f"{L.FORMAT_VERSION}; it is checked against the {L.FORMAT_VERSION} rules "
            "and what they do not know is ignored.",
            "warning",
        )


@rule("TF-FILE-004", "provenance is a JSON object naming the writing software", gate=GATE_TRACE)
def file_provenance(ctx: FileContext) -> Iterator[Issue]:
    value, problem = ctx.attr(L.ATTR_PROVENANCE)
    loc = _attr_loc(ctx, L.ATTR_PROVENANCE)
    if problem:
        yield Issue(loc, problem)
        return
    text = text_value(value)
    if text is None:
        yield Issue(loc, "The provenance attribute is not a UTF-8 string.")
        return
    try:
        Provenance.from_json(text)
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        yield Issue(loc, f"The provenance attribute is not valid: {e}.")
        return
    for key in ("host", "torch"):
        if key in data and not isinstance(data[key], str):
            yield Issue(loc, f"The provenance field {key!r} is {data[key]!r}, not a string.")


@rule("TF-FILE-005", "run_id, rank and world_size identify the file in its run", gate=GATE_TRACE)
def file_identity(ctx: FileContext) -> Iterator[Issue]:
    values = {}
    for name in (L.ATTR_RUN_ID, L.ATTR_RANK, L.ATTR_WORLD_SIZE):
        value, problem = ctx.attr(name)
        if problem:
            yield Issue(_attr_loc(ctx, name), problem)
            return
        values[name] = value
    run_id = text_value(values[L.ATTR_RUN_ID])
    if not run_id:
        yield Issue(
            _attr_loc(ctx, L.ATTR_RUN_ID), f"run_id {values[L.ATTR_RUN_ID]!r} is not a non-empty string."
        )
    rank, world = int_value(values[L.ATTR_RANK]), int_value(values[L.ATTR_WORLD_SIZE])
    if rank is None or world is None:
        yield Issue(
            ctx.loc(),
            f"rank {values[L.ATTR_RANK]!r} and world_size "
            f"{values[L.ATTR_WORLD_SIZE]!r} must be integers.",
        )
    elif not 0 <= rank < world:
        yield Issue(ctx.loc(), f"rank {rank} is outside 0..world_size-1 (world_size {world}).")


@rule("TF-FILE-006", "values_filter names a known pipeline and hist_bins is 0..4096", gate=GATE_TRACE)
def file_settings(ctx: FileContext) -> Iterator[Issue]:
    value, problem = ctx.attr(L.ATTR_VALUES_FILTER)
    if problem or text_value(value) not in FILTERS:
        yield Issue(
            _attr_loc(ctx, L.ATTR_VALUES_FILTER),
            problem or f"values_filter {value!r} is not one of {', '.join(FILTERS)}.",
        )
    value, problem = ctx.attr(L.ATTR_HIST_BINS)
    bins = int_value(value)
    if problem or bins is None or not 0 <= bins <= L.MAX_HIST_BINS:
        yield Issue(
            _attr_loc(ctx, L.ATTR_HIST_BINS),
            problem or f"hist_bins {value!r} is not an integer in 0..{L.MAX_HIST_BINS}.",
        )


@rule(
    "TF-RUN-001", "A rank file named rank-*.tft.h5 is named after its rank", scope="run", gate=GATE_NONE
)
def run_file_names(run: RunContext) -> Iterator[Issue]:
    for path, identity in run.files:
        if identity is None or not fnmatch.fnmatchcase(path.name, L.RANK_FILE_GLOB):
            continue
        expected = L.RANK_FILE_PATTERN.format(rank=identity[1])
        if path.name != expected:
            yield Issue(
                str(path),
                f"The file holds rank {identity[1]} and so must be named "
                f"{expected!r}, not {path.name!r}.",
            )


@rule(
    "TF-RUN-002",
    "All rank files of a run have the same run_id and world_size",
    scope="run",
    gate=GATE_NONE,
)
def run_identity(run: RunContext) -> Iterator[Issue]:
    known = [(path, identity) for path, identity in run.files if identity is not None]
    if not known:
        return
    first_path, (run_id, _, world) = known[0]
    for path, (other_id, _, other_world) in known[1:]:
        if (other_id, other_world) != (run_id, world):
            yield Issue(
                str(path),
                f"run_id {other_id!r} / world_size {other_world} differ from "
                f"{first_path.name}'s {run_id!r} / {world}; the files belong to "
                "different runs.",
            )


@rule("TF-LAYOUT-001", "Every dataset exists, 1-D, chunked, extendable, with its row dtype")
def layout_datasets(ctx: FileContext) -> Iterator[Issue]:
    for name in ctx.expected_datasets():
        problem = ctx.layout_problem(name)
        if problem:
            yield Issue(ctx.loc(name), problem)


@rule("TF-FILT-001", "Graph tables use fletcher32 and standard filters; per-step tables none")
def filters_tables(ctx: FileContext) -> Iterator[Issue]:
    for name in ctx.expected_datasets():
        if name in L.VALUE_HEAPS:
            continue
        try:
            ds = ctx.dataset(name)
        except Skip:
            continue
        ids = _pipeline(ds)
        if name in L.STEP_TABLES:
            if ids:
                yield Issue(
                    ctx.loc(name),
                    f"/{name} uses HDF5 filters {ids}; a per-step table "
                    "must be unfiltered (its last chunk is rewritten in "
                    "place at every flush).",
                )
        elif H5Z_FLETCHER32 not in ids or not set(ids) <= _TABLE_FILTER_IDS:
            yield Issue(
                ctx.loc(name),
                f"/{name} uses HDF5 filters {ids}; tables must use "
                "fletcher32 (3) and no filters but shuffle (2) and "
                "deflate (1).",
            )


@rule("TF-FILT-002", "Value heaps use the filters named by values_filter")
def filters_values(ctx: FileContext) -> Iterator[Issue]:
    if ctx.values_filter is None:
        raise Skip
    try:
        expected = list(values_filter_ids(ctx.values_filter))
    except MissingFilterError as e:
        yield Issue(ctx.loc(), f"The value heaps' filters cannot be checked: {e}", "warning")
        return
    for name in L.VALUE_HEAPS:
        try:
            ids = sorted(_pipeline(ctx.dataset(name)))
        except Skip:
            continue
        if ids != expected:
            yield Issue(
                ctx.loc(name),
                f"/{name} uses HDF5 filters {ids}; values_filter "
                f"{ctx.values_filter!r} means {expected}.",
            )


@rule("TF-FILT-003", "Every stored chunk reads back through its filters", deep=True)
def filters_chunks(ctx: FileContext) -> Iterator[Issue]:
    skip_values = False
    if ctx.values_filter is not None and FILTERS[ctx.values_filter].needs_plugin:
        try:
            ensure_readable(ctx.values_filter)
        except MissingFilterError as e:
            skip_values = True
            yield Issue(ctx.loc(), f"The value heaps cannot be read: {e}", "warning")
    for name in ctx.expected_datasets():
        if skip_values and name in L.VALUE_HEAPS:
            continue
        try:
            rows, n = int(ctx.dataset(name).chunks[0]), ctx.length(name)
        except Skip:
            continue
        # Chunk by chunk over the extent.  (Listing the stored chunks with H5Dchunk_iter instead
        # hung inside HDF5 on a damaged chunk index; plain reads fail cleanly.)
        for start in range(0, n, rows):
            try:
                ctx.read(name, start, min(start + rows, n))
            except Skip:
                break  # the failure is recorded; one per dataset is enough
    for finding in ctx.failure_findings():
        yield Issue(finding.location, finding.message)
