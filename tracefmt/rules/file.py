"""Rules about the file as a whole: HDF5 format, root attributes, run directories, datasets, filters."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator

import h5py

from tracefmt import _layout as L
from tracefmt._primitives import (
    Problem,
    read_hist_bins,
    read_provenance,
    read_rank,
    read_run_id,
    read_superblock,
    read_values_filter,
    read_version,
    trace_mark,
    truncation,
    unsupported,
)
from tracefmt.errors import MissingFilterError
from tracefmt.filters import FILTERS, ensure_readable
from tracefmt.rules._base import GATE_NONE, GATE_TRACE, Issue, Severity, Skip, rule
from tracefmt.rules._context import FileContext, RunContext
from tracefmt.schema import H5Z_DEFLATE, H5Z_FLETCHER32, H5Z_SHUFFLE, values_filter_ids

_TABLE_FILTER_IDS = {H5Z_DEFLATE, H5Z_SHUFFLE, H5Z_FLETCHER32}


def _issue(ctx: FileContext, problem: Problem, severity: Severity = "error") -> Issue:
    """A problem with the file's root attributes, reported at the attribute it names."""
    loc = ctx.loc() if problem.attr is None else f"{ctx.path}:/@{problem.attr}"
    return Issue(loc, problem.message, severity)


def _pipeline(ds: h5py.Dataset) -> list[int]:
    plist = ds.id.get_create_plist()
    return [int(plist.get_filter(i)[0]) for i in range(plist.get_nfilters())]


@rule("TF-FILE-001", "A rank file is a complete HDF5 file marked as a trace", gate=GATE_NONE)
def file_is_trace(ctx: FileContext) -> Iterator[Issue]:
    if ctx.file is None:
        yield Issue(
            ctx.loc(),
            f"The file cannot be opened as HDF5 ({ctx.open_error}); it is not a "
            "trace, or it is damaged or truncated.",
        )
        return
    problem = trace_mark(ctx.file)
    if problem is not None:
        yield _issue(ctx, problem)
    truncated = truncation(ctx.path)
    if truncated is not None:
        yield Issue(ctx.loc(), truncated.message)


@rule(
    "TF-FILE-002", "A rank file uses superblock version 3 or later (HDF5 1.10 format)", gate=GATE_TRACE
)
def file_superblock(ctx: FileContext) -> Iterator[Issue]:
    block = read_superblock(ctx.path)
    if block is None:
        yield Issue(ctx.loc(), "No HDF5 superblock signature was found.")
    elif block.version < 3:
        yield Issue(
            ctx.loc(),
            f"The HDF5 superblock has version {block.version}; the format needs "
            "version 3 or later (the HDF5 1.10 format) for SWMR and metadata "
            "checksums. Rewrite the file with tracefmt.",
        )


@rule("TF-FILE-003", "format_version is MAJOR.MINOR with a known major version", gate=GATE_TRACE)
def file_version(ctx: FileContext) -> Iterator[Issue]:
    version = read_version(ctx.h5)
    if isinstance(version, Problem):
        yield _issue(ctx, version)
        return
    problem = unsupported(version)
    if problem is not None:
        yield _issue(ctx, problem)
    elif version.minor > L.FORMAT_MINOR:
        yield _issue(
            ctx,
            Problem(
                f"The file has format version {version.major}.{version.minor}, newer than this "
                f"validator's {L.FORMAT_VERSION}; it is checked against the {L.FORMAT_VERSION} "
                "rules and what they do not know is ignored.",
                attr=L.ATTR_VERSION,
            ),
            "warning",
        )


@rule("TF-FILE-004", "provenance is a JSON object naming the writing software", gate=GATE_TRACE)
def file_provenance(ctx: FileContext) -> Iterator[Issue]:
    provenance = read_provenance(ctx.h5)
    if isinstance(provenance, Problem):
        yield _issue(ctx, provenance)


@rule("TF-FILE-005", "run_id, rank and world_size identify the file in its run", gate=GATE_TRACE)
def file_identity(ctx: FileContext) -> Iterator[Issue]:
    for value in (read_run_id(ctx.h5), read_rank(ctx.h5)):
        if isinstance(value, Problem):
            yield _issue(ctx, value)


@rule("TF-FILE-006", "values_filter names a known pipeline and hist_bins is 0..4096", gate=GATE_TRACE)
def file_settings(ctx: FileContext) -> Iterator[Issue]:
    for value in (read_values_filter(ctx.h5), read_hist_bins(ctx.h5)):
        if isinstance(value, Problem):
            yield _issue(ctx, value)


@rule(
    "TF-RUN-001", "A rank file named rank-*.tft.h5 is named after its rank", scope="run", gate=GATE_NONE
)
def run_file_names(run: RunContext) -> Iterator[Issue]:
    for path, identity in run.files:
        if identity is None or not fnmatch.fnmatchcase(path.name, L.RANK_FILE_GLOB):
            continue
        expected = L.RANK_FILE_PATTERN.format(rank=identity.rank)
        if path.name != expected:
            yield Issue(
                str(path),
                f"The file holds rank {identity.rank} and so must be named "
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
    first_path, first = known[0]
    for path, other in known[1:]:
        if (other.run_id, other.world_size) != (first.run_id, first.world_size):
            yield Issue(
                str(path),
                f"run_id {other.run_id!r} / world_size {other.world_size} differ from "
                f"{first_path.name}'s {first.run_id!r} / {first.world_size}; the files belong "
                "to different runs.",
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
