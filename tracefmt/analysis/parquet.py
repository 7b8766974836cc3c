"""``tracefmt to-parquet``: a run's tables as a Parquet dataset that DuckDB, Spark, Trino and Dask
read as it is (spec/parquet.md).

:func:`to_parquet` reads each rank through :class:`tracefmt.tablescan.RankScan` (each graph
decoded once, its rows repeated per step with numpy) and writes one directory per table,
partitioned hive-style by rank and step block::

    OUT/_tracefmt.json                                  what was exported, from where, versions
    OUT/ops/rank=0/step_block=000000000-000009999/full-0.parquet
    OUT/light_stats/rank=0/step_block=000000000-000009999/light-0.parquet

The export is built in a hidden directory next to ``OUT`` and renamed into place when complete,
so a failed or interrupted export leaves nothing under the output's name.

Example::

    summary = to_parquet("runs/exp1", "exp1.parquet", ExportOptions(steps=range(0, 1000)))
    print(summary.rows, summary.rows_per_s)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tracefmt.analysis.extra import require
from tracefmt.analysis.parquetschema import (
    PARQUET_FORMAT_VERSION,
    SCHEMAS,
    arrow_schema,
    arrow_table,
)
from tracefmt.errors import TraceError
from tracefmt.progress import ProgressFn
from tracefmt.reader import open as open_trace
from tracefmt.tablescan import DEFAULT_BLOCK_STEPS, TABLES, RankScan, ScanBatch, count_steps
from tracefmt.version import __version__

__all__ = [
    "EXPORT_MANIFEST",
    "ExportOptions",
    "ExportSummary",
    "TableExport",
    "read_export_manifest",
    "source_state",
    "to_parquet",
]

#: The file at the root of an export that says what it holds (written last).
EXPORT_MANIFEST = "_tracefmt.json"
COMPRESSIONS = ("zstd", "snappy", "gzip", "lz4", "none")


@dataclass(frozen=True)
class ExportOptions:
    """What :func:`to_parquet` exports: ``ranks`` (default: every readable rank), ``steps`` (a
    range of step numbers, default all), ``block_steps`` steps per ``step_block`` partition,
    the Parquet ``compression``, and whether an existing export at the output is replaced."""

    ranks: tuple[int, ...] | None = None
    steps: range | None = None
    block_steps: int = DEFAULT_BLOCK_STEPS
    compression: str = "zstd"
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.ranks is not None and not self.ranks:
            raise TraceError("The rank selection is empty; name at least one rank, or none for all.")
        if self.block_steps < 1:
            raise TraceError(f"block_steps must be at least 1, not {self.block_steps}.")
        if self.steps is not None and (self.steps.step != 1 or len(self.steps) == 0):
            raise TraceError(f"The step selection {self.steps} is not a non-empty range of steps.")
        if self.compression not in COMPRESSIONS:
            raise TraceError(
                f"Unknown Parquet compression {self.compression!r}; use one of "
                f"{', '.join(COMPRESSIONS)}."
            )


@dataclass(frozen=True)
class TableExport:
    """One table of an export: its rows, files and bytes on disk."""

    name: str
    rows: int
    files: int
    bytes: int


@dataclass(frozen=True)
class ExportSummary:
    """What :func:`to_parquet` wrote: the source run, the output, the ranks and steps exported,
    each table, and how long it took.  ``skipped`` names the ranks whose files cannot be read."""

    source: Path
    output: Path
    run_id: str
    ranks: tuple[int, ...]
    full_steps: int
    light_steps: int
    tables: tuple[TableExport, ...]
    seconds: float
    skipped: Mapping[int, str] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)

    @property
    def bytes(self) -> int:
        return sum(t.bytes for t in self.tables)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


def source_state(run: Path) -> list[dict[str, Any]]:
    """Name, size and modification time of each file of ``run`` (a run directory's rank files and
    ``run.json``, or one rank file): an export made from the same state is current."""
    files = sorted([*run.glob("rank-*.tft.h5"), *run.glob("run.json")]) if run.is_dir() else [run]
    out = []
    for f in files:
        st = f.stat()
        out.append({"file": f.name, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def read_export_manifest(path: Path) -> dict[str, Any] | None:
    """The ``_tracefmt.json`` of the export at ``path``; None when ``path`` holds no export."""
    try:
        data = json.loads((path / EXPORT_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "tracefmt_parquet" in data else None


def _check_output(run: Path, output: Path, overwrite: bool) -> None:
    src, dst = run.resolve(), output.resolve()
    if dst == src or dst in src.parents:
        raise TraceError(
            f"The output {str(output)!r} holds the run {str(run)!r}; choose another directory."
        )
    if dst.is_file():
        raise TraceError(f"The output {str(output)!r} is a file; give a directory.")
    if dst.is_dir() and any(dst.iterdir()):
        if not overwrite:
            raise TraceError(
                f"The output {str(output)!r} already exists; pass --overwrite (overwrite=True) to "
                "replace the export there."
            )
        if read_export_manifest(dst) is None:
            raise TraceError(
                f"The output {str(output)!r} is not a tracefmt Parquet export (it has no "
                f"{EXPORT_MANIFEST}); it is left as it is: choose another directory."
            )


def _block_dir(block: int, block_steps: int) -> str:
    lo = block * block_steps
    return f"step_block={lo:09d}-{lo + block_steps - 1:09d}"


class _Files:
    """The open Parquet files of the partition being written (one rank, kind and step block),
    and what each table has written so far."""

    def __init__(self, root: Path, options: ExportOptions, run_id: str) -> None:
        self._pq = require("pyarrow.parquet", "The Parquet export")
        self._root, self._options, self._run_id = root, options, run_id
        self._key: tuple[int, str, int] | None = None
        self._open: dict[str, Any] = {}
        self._parts: Counter[tuple[str, int, str, int]] = Counter()
        self.rows: Counter[str] = Counter()
        self.paths: dict[str, list[Path]] = {name: [] for name in TABLES}

    def metadata(self, table: str, rank: int | None) -> dict[str, str]:
        """The key-value metadata of each file of ``table``."""
        out = {"tracefmt_parquet": PARQUET_FORMAT_VERSION, "tracefmt_table": table}
        out["tracefmt_run_id"] = self._run_id
        if rank is not None:
            out["tracefmt_rank"] = str(rank)
        return out

    def _writer(self, table: str, rank: int, kind: str, block: int) -> Any:
        part = (table, rank, kind, block)
        folder = self._root / table / f"rank={rank}" / _block_dir(block, self._options.block_steps)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{kind}-{self._parts[part]}.parquet"
        self._parts[part] += 1
        self.paths[table].append(path)
        compression = self._options.compression
        return self._pq.ParquetWriter(
            path,
            arrow_schema(table, self.metadata(table, rank)),
            compression=None if compression == "none" else compression,
            # Dictionary pages for the strings only: numbers rarely repeat enough, and trying
            # costs more than the rest of writing (stats of 10,000 steps: 0.38 s against 0.16 s).
            use_dictionary=[c.name for c in SCHEMAS[table] if c.type == "string"],
        )

    def write(self, batch: ScanBatch) -> None:
        key = (batch.rank, batch.kind, batch.block)
        if key != self._key:
            self.close()
            self._key = key
        for name, table in batch.tables.items():
            if not table.rows:
                continue
            writer = self._open.get(name)
            if writer is None:
                writer = self._open[name] = self._writer(name, *key)
            writer.write_table(arrow_table(table))
            self.rows[name] += table.rows

    def close(self) -> None:
        for writer in self._open.values():
            writer.close()
        self._open.clear()
        self._key = None

    def fill_empty(self, rank: int, block: int) -> None:
        """Write a file with no rows for each table that has none, so every table's directory
        can be read (with its columns) by any Parquet reader."""
        for name in TABLES:
            if not self.paths[name]:
                self._writer(name, rank, "empty", block).close()

    def summary(self) -> tuple[TableExport, ...]:
        return tuple(
            TableExport(name, self.rows[name], len(paths), sum(p.stat().st_size for p in paths))
            for name, paths in self.paths.items()
        )


def _install(tmp: Path, output: Path) -> None:
    """Move the finished export ``tmp`` to ``output``, replacing the export there."""
    old = output.with_name(f".{output.name}.old-{uuid.uuid4().hex[:8]}")
    had = output.exists()
    if had:
        os.replace(output, old)
    try:
        os.replace(tmp, output)
    except OSError:
        if had:
            os.replace(old, output)
        raise
    if had:
        shutil.rmtree(old, ignore_errors=True)


def to_parquet(
    run: str | os.PathLike[str],
    output: str | os.PathLike[str],
    options: ExportOptions | None = None,
    *,
    progress: ProgressFn | None = None,
) -> ExportSummary:
    """Export ``run`` (a run directory or a rank file) to the Parquet dataset ``output``.

    Every table of spec/parquet.md is written for each exported rank; ``progress(done, total)``
    counts steps (full and light) as each batch is written.
    """
    options = options or ExportOptions()
    require("pyarrow.parquet", "The Parquet export")
    src, dst = Path(run), Path(output)
    _check_output(src, dst, options.overwrite)
    started = time.perf_counter()
    state = source_state(src)
    with open_trace(src) as trace:
        ranks = tuple(sorted(set(options.ranks if options.ranks is not None else trace.ranks)))
        counts = [count_steps(trace, rank, options.steps) for rank in ranks]
        total = sum(full + light for full, light in counts)
        if total == 0 and options.steps is not None:
            raise TraceError(
                f"No step of rank(s) {', '.join(map(str, ranks))} of {str(src)!r} is in steps "
                f"{options.steps.start}:{options.steps.stop - 1}; 'tracefmt ls' lists the steps."
            )
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.partial-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        files: _Files | None = None
        try:
            files = _Files(tmp, options, trace.run_id)
            done = 0
            versions: dict[str, str] = {}
            for rank in ranks:  # one rank's step index in memory at a time
                scan = RankScan(trace, rank, steps=options.steps, block_steps=options.block_steps)
                versions[str(scan.rank)] = scan.format_version
                for batch in scan.batches():
                    files.write(batch)
                    done += batch.steps
                    if progress is not None:
                        progress(done, total)
                files.close()
            first = options.steps.start if options.steps is not None else 0
            files.fill_empty(ranks[0], first // options.block_steps)
            tables = files.summary()
            skipped = {} if options.ranks is not None else dict(trace.damaged_ranks)
            summary = ExportSummary(
                source=src,
                output=dst,
                run_id=trace.run_id,
                ranks=ranks,
                full_steps=sum(full for full, _ in counts),
                light_steps=sum(light for _, light in counts),
                tables=tables,
                seconds=time.perf_counter() - started,
                skipped=skipped,
            )
            manifest = _manifest(summary, options, state, trace.world_size, trace.missing_ranks)
            manifest["trace_format_versions"] = versions
            (tmp / EXPORT_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            _install(tmp, dst)
        except BaseException:
            if files is not None:  # the open Parquet writers' file handles
                with contextlib.suppress(Exception):
                    files.close()
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp)
            raise
    return summary


def _manifest(
    summary: ExportSummary,
    options: ExportOptions,
    state: list[dict[str, Any]],
    world_size: int,
    missing: tuple[int, ...],
) -> dict[str, Any]:
    """The ``_tracefmt.json`` of an export (spec/parquet.md, "The manifest")."""
    pyarrow = require("pyarrow", "The Parquet export")
    steps = options.steps
    return {
        "tracefmt_parquet": PARQUET_FORMAT_VERSION,
        "run_id": summary.run_id,
        "world_size": world_size,
        "ranks": list(summary.ranks),
        "missing_ranks": list(missing),
        "skipped_ranks": {str(r): why for r, why in summary.skipped.items()},
        "steps": None if steps is None else [steps.start, steps.stop - 1],
        "full_steps": summary.full_steps,
        "light_steps": summary.light_steps,
        "partitioning": {
            "style": "hive",
            "keys": ["rank", "step_block"],
            "block_steps": options.block_steps,
        },
        "compression": options.compression,
        "tables": {
            t.name: {
                "rows": t.rows,
                "files": t.files,
                "bytes": t.bytes,
                "columns": [[c.name, c.type, c.nullable] for c in SCHEMAS[t.name]],
            }
            for t in summary.tables
        },
        "source": str(summary.source.resolve()),
        "source_state": state,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "writer": {"tracefmt": __version__, "pyarrow": pyarrow.__version__},
    }
