"""Reading traces: :func:`open` a rank file or a run directory, get :class:`Step` objects.

Every file is treated as hostile: each row is range-checked against the tables it points into,
every size is checked before anything is allocated, and any HDF5 failure becomes a
:class:`~tracefmt.errors.TraceError` naming the dataset and step.  Loading a step reads that step's
rows (and its graph, once), never the whole file.

This module owns the run: :func:`open` finds the rank files and checks they belong together, and
:class:`Trace` routes each request to a rank.  One rank file's reads are
:class:`~tracefmt._rankfile.RankFile`'s, through the reading primitives the validator shares
(:mod:`tracefmt._primitives`); turning rows into steps is :mod:`tracefmt._decode`'s.
Both are re-exported here, so ``tracefmt.reader`` stays the one place to import from.

Example::

    with tracefmt.open("runs/exp1") as trace:
        step = trace.step(41207)
        for op in step.ops:
            print(op.index, op.phase.label, op.module, op.name)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from tracefmt._decode import Step, StepSummary
from tracefmt._primitives import rank_files
from tracefmt._rankfile import DatasetSize, RankFile
from tracefmt.errors import TraceError, TraceFormatError
from tracefmt.model import Provenance

__all__ = ["DatasetSize", "RankFile", "Step", "StepSummary", "Trace", "open"]


class Trace:
    """A run: one or more rank files.  Close it (or use ``with``) to release the files."""

    def __init__(self, files: dict[int, RankFile], path: Path) -> None:
        self._files = files
        self.path = path
        first = files[min(files)]
        self.run_id = first.run_id
        self.world_size = first.world_size
        self.provenance: Provenance = first.provenance

    def __enter__(self) -> Trace:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        for f in self._files.values():
            f.close()

    @property
    def ranks(self) -> tuple[int, ...]:
        """Ranks with a file in this trace, ascending."""
        return tuple(sorted(self._files))

    def rank_file(self, rank: int | None = None) -> RankFile:
        """The file of ``rank`` (default: the lowest rank present)."""
        if rank is None:
            rank = min(self._files)
        try:
            return self._files[rank]
        except KeyError:
            raise TraceError(
                f"Rank {rank} is not in {self.path}; it has ranks {', '.join(map(str, self.ranks))}."
            ) from None

    def steps(self, rank: int | None = None) -> list[int]:
        """Step numbers committed by ``rank``."""
        return [int(s) for s in self.rank_file(rank).step_rows()["step"]]

    def summaries(self, rank: int | None = None) -> list[StepSummary]:
        return self.rank_file(rank).summaries()

    def step(self, step: int, rank: int | None = None) -> Step:
        """Load one step (its ops, tensors and statistics; values stay on disk until asked)."""
        f = self.rank_file(rank)
        return f.load(f.find(step))

    def iter_steps(self, rank: int | None = None) -> Iterator[Step]:
        f = self.rank_file(rank)
        for i in range(f.num_steps()):
            yield f.load(i)

    def refresh(self) -> None:
        """Pick up steps a live writer committed since opening."""
        for f in self._files.values():
            f.refresh()


def open(path: str | os.PathLike[str]) -> Trace:
    """Open a rank file or a run directory (which holds ``rank-NNNNN.tft.h5`` files)."""
    p = Path(path)
    candidates, _ = rank_files(p)
    files: dict[int, RankFile] = {}
    try:
        for c in candidates:
            rf = RankFile(c)
            if rf.rank in files:
                rf.close()
                raise TraceFormatError(
                    f"{str(c)!r} and {str(files[rf.rank].path)!r} both claim rank {rf.rank}."
                )
            if files and (rf.run_id, rf.world_size) != (
                next(iter(files.values())).run_id,
                next(iter(files.values())).world_size,
            ):
                rf.close()
                raise TraceFormatError(
                    f"{str(c)!r} belongs to another run (run_id or world_size "
                    "differ from the other rank files in the directory)."
                )
            files[rf.rank] = rf
    except BaseException:
        for rf in files.values():
            rf.close()
        raise
    return Trace(files, p)
