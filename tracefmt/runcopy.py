"""What ``tracefmt extract`` and ``tracefmt pack`` share: copying a run into a new run directory.

Both commands refuse an output inside the source or holding it (:func:`check_output`), write the
copy into a hidden directory next to the output and rename it into place when complete
(:func:`replace_run`), copy light steps in blocks (:func:`copy_light`), add one key to each rank
file's provenance (:func:`with_provenance`) and count bytes (:func:`dir_size`).

Example::

    old = check_output(Path("runs/a"), Path("copy"), overwrite=False)
    ...  # write the copy into tmp
    replace_run(tmp, Path("copy"), old, what="extracted run")
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tracefmt import _layout as L
from tracefmt.errors import TraceError
from tracefmt.model import Provenance
from tracefmt.progress import ProgressFn
from tracefmt.reader import LIGHT_BLOCK, Trace
from tracefmt.torecord import GraphCache, light_record, step_record
from tracefmt.writer import TraceWriter

__all__ = ["check_output", "copy_light", "dir_size", "replace_run", "run_dir", "with_provenance"]


def run_dir(src: Path) -> Path:
    """The run directory of ``src``: itself, or the folder of a rank file given alone."""
    return src if src.is_dir() else src.parent


def check_output(src: Path, dst: Path, overwrite: bool) -> list[Path]:
    """Refuse an output inside the source or holding it, or one that exists without
    ``overwrite``; return the files of an existing output run that the new one replaces."""
    source, output = run_dir(src).resolve(), dst.resolve()
    if output == source or source in output.parents:
        raise TraceError(
            f"The output {str(dst)!r} is inside the source run {str(run_dir(src))!r}; "
            "choose a directory outside it."
        )
    if output in source.parents:
        raise TraceError(
            f"The output {str(dst)!r} holds the source run {str(run_dir(src))!r}; "
            "choose a directory outside it."
        )
    if not dst.exists():
        return []
    if not dst.is_dir():
        raise TraceError(f"The output {str(dst)!r} exists and is not a directory; choose another.")
    old = sorted(dst.iterdir())
    if not old:
        return []
    if not overwrite:
        raise TraceError(
            f"The output {str(dst)!r} already exists; choose a new directory or pass "
            "--overwrite (overwrite=True) to replace the run in it."
        )
    foreign = [p.name for p in old if not _run_member(p)]
    if foreign:
        raise TraceError(
            f"The output {str(dst)!r} holds files that are not part of a run "
            f"({', '.join(foreign[:5])}); overwrite replaces only a run directory. Remove them "
            "or choose another output."
        )
    return old


def _run_member(p: Path) -> bool:
    """Whether ``p`` is a file a run directory holds (a rank file, the manifest, their temps)."""
    if not p.is_file() or p.is_symlink():
        return False
    name = p.name.removesuffix(".tmp")
    return (
        fnmatch.fnmatchcase(name, L.RANK_FILE_GLOB)
        or name == L.RUN_MANIFEST
        or (name != p.name and name.startswith(f".{L.RUN_MANIFEST}."))
    )


#: Steps written between two flushes while copying a rank's steps (each flush pads filtered value
#: heaps to a chunk boundary; the padding compresses to almost nothing).
FLUSH_EVERY = 64


def copy_steps(
    trace: Trace,
    rank: int,
    steps: Iterable[int],
    graphs: GraphCache,
    writer: TraceWriter,
    *,
    progress: ProgressFn | None = None,
    done: int = 0,
    total: int = 0,
) -> int:
    """Write ``steps`` of ``rank`` (full steps, their module tables with them) into ``writer``,
    one step in memory at a time, flushing every :data:`FLUSH_EVERY`; returns ``done`` plus the
    steps written (``progress(done, total)`` after each)."""
    for i, step in enumerate(steps):
        record = step_record(trace.step(step, rank), graphs)
        record.modules = trace.modules(step, rank)  # format 1.5
        writer.write_step(record)
        if (i + 1) % FLUSH_EVERY == 0:
            writer.flush()
        done += 1
        if progress is not None:
            progress(done, total)
    return done


def copy_light(trace: Trace, rank: int, numbers: list[int], writer: TraceWriter) -> None:
    """Copy light steps ``numbers`` (consecutive rows of the rank's light step index) in blocks."""
    if not numbers:
        return
    f = trace.rank_file(rank)
    first = f.find(numbers[0], light=True)
    for start in range(first, first + len(numbers), LIGHT_BLOCK):
        for light in f.load_lights(start, min(start + LIGHT_BLOCK, first + len(numbers))):
            writer.write_light_step(light_record(light))
        writer.flush()


def with_provenance(source: Provenance, key: str, value: Any) -> Provenance:
    """The source file's provenance with ``extra[key]`` set to ``value`` (an earlier one replaced)."""
    return dataclasses.replace(source, extra={**source.extra, key: value})


def dir_size(paths: Iterable[Path]) -> int:
    """The bytes of the regular files among ``paths``."""
    return sum(p.stat().st_size for p in paths if p.is_file())


def replace_run(tmp: Path, output: Path, old_files: list[Path], *, what: str) -> None:
    """Move the finished run ``tmp`` (``what``: "extracted run", "archive") to ``output``,
    removing the old run's ``old_files`` first.

    A failure here (someone wrote into the output meanwhile) keeps the finished copy in ``tmp``,
    and the error says where it is and what to do.
    """
    try:
        for p in old_files:
            p.unlink(missing_ok=True)
        if output.exists():
            output.rmdir()  # empty now, unless someone wrote into it meanwhile
        os.replace(tmp, output)
    except OSError as e:
        raise TraceError(
            f"The {what} is complete in {str(tmp)!r} but could not be moved to {str(output)!r} "
            f"({e.strerror or e}); move it there yourself (mv), or remove it and run again with "
            "an output directory that nothing else writes into."
        ) from e
