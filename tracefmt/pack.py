"""``tracefmt pack``: a finished run consolidated into an archive, its values compressed.

An archive is a **run directory** like any other (one rank file per rank, ``rank-00000.tft.h5``,
and the manifest ``run.json``), written in the current format version: ``tracefmt.open``, the
validator and every ``replayer`` command read it as they read the run it came from.  A run
directory rather than one file, because a rank file is the unit every reader, the validator and
``replayer ranks`` already open, and because one HDF5 file per rank keeps a damaged file from
taking the other ranks with it.

:func:`pack` copies every step (full and light) of every rank, as ``tracefmt extract`` copies a
selection (:func:`tracefmt.torecord.step_record`), into new files whose value heaps use a
compressing filter (``blosc2-zstd`` by default; ``zstd`` or ``gzip``; the plugin filters need the
``hdf5plugin`` package, ``pip install 'tracefmt[archive]'``).  The writer stores each graph
structure once and each string once, so graphs and strings that a source file holds more than
once (a run appended to by several writers, a file of format 1.0, whose steps with different op
attributes have separate graphs) are merged.  The run's manifest is copied, each rank file keeps
its source's provenance (who recorded it, the code, command, hardware) and gains ``packed_from``
(:mod:`tracefmt.packinfo`): the tool, tracefmt version, time and filter, and the source rank file
and manifest with their paths, sizes and SHA-256.

A source rank that is damaged is refused: an archive must not silently lack a rank
(``tracefmt extract`` can copy the good ranks first); so is a ``run.json`` that cannot be
read.  The archive is built in a hidden directory next to the output and renamed into place
when complete.

Example::

    summary = pack("runs/exp1", "archive/exp1", values_filter="blosc2-zstd")
    print(summary.ratio)   # source bytes / archive bytes
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from tracefmt import _layout as L
from tracefmt.errors import MissingFilterError, TraceError
from tracefmt.filters import get_filter
from tracefmt.manifest import write_manifest
from tracefmt.packinfo import PACKED_FROM_KEY, PackedFrom, PackedSource
from tracefmt.progress import ProgressFn
from tracefmt.reader import Trace
from tracefmt.reader import open as open_trace
from tracefmt.runcopy import (
    check_output,
    copy_light,
    copy_steps,
    dir_size,
    replace_run,
    run_dir,
    with_provenance,
)
from tracefmt.torecord import GraphCache
from tracefmt.version import __version__
from tracefmt.writer import TraceWriter, rank_file_path

__all__ = ["PACK_FILTERS", "PACK_TOOL", "PackSummary", "RankPack", "pack"]

#: The ``tool`` of the ``packed_from`` provenance key.
PACK_TOOL = "tracefmt pack"
#: The filters ``tracefmt pack`` offers (spec/format.md section 11); the first is the default.
PACK_FILTERS = ("blosc2-zstd", "zstd", "gzip")
_HASH_BLOCK = 1 << 20


class _Packed(NamedTuple):
    """One rank as packed into the hidden directory, before the archive is in place."""

    rank: int
    steps: int
    light_steps: int
    source: PackedSource
    graphs_before: int
    strings_before: int


@dataclass(frozen=True)
class RankPack:
    """One rank of an archive: steps copied, graphs and strings before and after, its bytes."""

    rank: int
    steps: int
    light_steps: int
    source: PackedSource
    path: Path
    bytes: int
    graphs_before: int
    graphs_after: int
    strings_before: int
    strings_after: int


@dataclass(frozen=True)
class PackSummary:
    """The result of :func:`pack`.  ``source_bytes`` counts every source rank file and the
    manifest, ``output_bytes`` the archive; ``seconds`` the whole pack (hashing included)."""

    source: Path
    output: Path
    run_id: str
    values_filter: str
    ranks: tuple[RankPack, ...]
    source_bytes: int
    output_bytes: int
    seconds: float
    manifest: bool
    #: Ranks the manifest expects that have no file in the source (nothing to pack).
    missing: tuple[int, ...] = ()

    @property
    def steps(self) -> int:
        return sum(r.steps for r in self.ranks)

    @property
    def ratio(self) -> float:
        """Source bytes per archive byte (2.0: the archive is half the size)."""
        return self.source_bytes / self.output_bytes if self.output_bytes else float("inf")

    @property
    def mb_per_s(self) -> float:
        """Source megabytes (10^6 bytes) packed per second."""
        return self.source_bytes / 1e6 / self.seconds if self.seconds > 0 else float("inf")


def sha256_file(path: Path) -> str:
    """The SHA-256 of the bytes of ``path``, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def _describe(
    path: Path, format_version: str | None = None, values_filter: str | None = None
) -> PackedSource:
    return PackedSource(
        path=str(path.resolve()),
        bytes=path.stat().st_size,
        sha256=sha256_file(path),
        format_version=format_version,
        values_filter=values_filter,
    )


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _check_source(trace: Trace) -> None:
    if trace.damaged_ranks:
        why = "; ".join(f"rank {r}: {w}" for r, w in trace.damaged_ranks.items())
        raise TraceError(
            f"The run {str(trace.path)!r} has damaged rank files ({why}); an archive would lack "
            "them. Copy the readable ranks with 'tracefmt extract --ranks ...' and pack that, or "
            "repair the files first."
        )
    if not trace.ranks:
        raise TraceError(f"The run {str(trace.path)!r} has no rank file to pack.")
    if trace.manifest_problem is not None:
        manifest = run_dir(trace.path) / L.RUN_MANIFEST
        raise TraceError(
            f"The run's manifest {str(manifest)!r} cannot be read ({trace.manifest_problem}); an "
            "archive would lose it. Repair or restore run.json, or move it away to pack the rank "
            "files without a manifest."
        )


def pack(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    values_filter: str = PACK_FILTERS[0],
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> PackSummary:
    """Pack the run ``src`` (a run directory, or one rank file) into the run directory ``dst``
    with its values under ``values_filter`` (one of :data:`PACK_FILTERS`); return what was done.

    Refuses (:class:`~tracefmt.errors.TraceError`) a filter not offered, a filter whose plugin is
    not installed (:class:`~tracefmt.errors.MissingFilterError`), a run with a damaged rank file
    or an unreadable ``run.json``, an output inside the source or holding it, and an output that
    exists and is not empty unless ``overwrite`` (which replaces only a run directory's files).
    ``progress(done, total)`` is called after each step copied.
    """
    t0 = time.perf_counter()
    if values_filter not in PACK_FILTERS:
        raise TraceError(
            f"tracefmt pack compresses values with one of {', '.join(PACK_FILTERS)}, "
            f"not {values_filter!r}."
        )
    try:
        get_filter(values_filter).h5py_kwargs()  # a missing plugin fails here, before any work
    except MissingFilterError as e:
        raise MissingFilterError(
            f"Packing with the {values_filter!r} filter needs the hdf5plugin package, which is "
            "not installed: run pip install 'tracefmt[archive]' (or pip install hdf5plugin), or "
            "pack with --filter gzip, which every HDF5 reads."
        ) from e
    source, output = Path(src), Path(dst)
    old_files = check_output(source, output, overwrite)
    with open_trace(source) as trace:
        _check_source(trace)
        manifest = trace.manifest  # None for a rank file given alone
        manifest_file = run_dir(source) / L.RUN_MANIFEST
        manifest_source = _describe(manifest_file) if manifest is not None else None
        total = sum(len(trace.steps(r)) for r in trace.ranks)
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.parent / f".{output.name}.pack-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
        done, packed = 0, list[_Packed]()
        try:
            for rank in trace.ranks:
                rf = trace.rank_file(rank)
                version = f"{rf.version.major}.{rf.version.minor}"
                own = _describe(rf.path, version, rf.values_filter)
                info = PackedFrom(
                    tool=PACK_TOOL,
                    tracefmt=__version__,
                    time=_now(),
                    filter=values_filter,
                    sources=(own,) if manifest_source is None else (own, manifest_source),
                )
                steps = trace.steps(rank)
                lights = [s.step for s in trace.light_summaries(rank)]
                graphs = GraphCache()
                path = rank_file_path(tmp, rank)
                with TraceWriter(
                    path,
                    run_id=rf.run_id,
                    rank=rf.rank,
                    world_size=rf.world_size,
                    values_filter=values_filter,
                    hist_bins=rf.hist_bins,
                    provenance=with_provenance(rf.provenance, PACKED_FROM_KEY, info.to_json()),
                ) as writer:
                    done = copy_steps(
                        trace, rank, steps, graphs, writer, progress=progress, done=done, total=total
                    )
                    copy_light(trace, rank, lights, writer)
                packed.append(
                    _Packed(
                        rank=rank,
                        steps=len(steps),
                        light_steps=len(lights),
                        source=own,
                        graphs_before=rf.length(L.GRAPHS),
                        strings_before=rf.length(L.STRINGS_INDEX),
                    )
                )
            if manifest is not None:
                write_manifest(tmp, manifest)
            after = _counts(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        missing = trace.missing_ranks
        run_id = trace.run_id
        source_bytes = sum(p.source.bytes for p in packed) + (
            manifest_source.bytes if manifest_source else 0
        )
    replace_run(tmp, output, old_files, what="archive")
    ranks = tuple(
        RankPack(
            rank=p.rank,
            steps=p.steps,
            light_steps=p.light_steps,
            source=p.source,
            path=rank_file_path(output, p.rank),
            bytes=dir_size([rank_file_path(output, p.rank)]),
            graphs_before=p.graphs_before,
            graphs_after=after[p.rank].graphs,
            strings_before=p.strings_before,
            strings_after=after[p.rank].strings,
        )
        for p in packed
    )
    return PackSummary(
        source=source,
        output=output,
        run_id=run_id,
        values_filter=values_filter,
        ranks=ranks,
        source_bytes=source_bytes,
        output_bytes=dir_size(output.iterdir()),
        seconds=time.perf_counter() - t0,
        manifest=manifest is not None,
        missing=missing,
    )


class _Counts(NamedTuple):
    """Rows of ``graphs`` and of ``strings/index`` in one rank file."""

    graphs: int
    strings: int


def _counts(run: Path) -> Mapping[int, _Counts]:
    """Per rank of the finished archive ``run``: its rows of ``graphs`` and ``strings/index``."""
    with open_trace(run) as archive:
        return {
            r: _Counts(
                graphs=archive.rank_file(r).length(L.GRAPHS),
                strings=archive.rank_file(r).length(L.STRINGS_INDEX),
            )
            for r in archive.ranks
        }
