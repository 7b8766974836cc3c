"""Reading traces: :func:`open` a rank file or a run directory, get :class:`Step` objects.

Every file is treated as hostile: each row is range-checked against the tables it points into,
every size is checked before anything is allocated, and any HDF5 failure becomes a
:class:`~tracefmt.errors.TraceError` naming the dataset and step.  Loading a step reads that step's
rows (and its graph, once), never the whole file.

This module owns the run: :func:`open` finds the rank files and the run manifest (``run.json``,
:mod:`tracefmt.manifest`), checks the files belong together, and :class:`Trace` routes each
request to a rank.  A rank file that is damaged, belongs to another run or is missing does not
make the run unreadable: it is reported (:attr:`Trace.damaged_ranks`, :attr:`Trace.missing_ranks`)
and the other ranks read.  One rank file's reads are :class:`~tracefmt._rankfile.RankFile`'s,
through the reading primitives the validator shares (:mod:`tracefmt._primitives`); turning rows
into steps is :mod:`tracefmt._decode`'s.  Both are re-exported here, so ``tracefmt.reader`` stays
the one place to import from.

Example::

    with tracefmt.open("runs/exp1") as trace:
        print(trace.ranks, trace.missing_ranks, trace.damaged_ranks)
        step = trace.step(41207, rank=3)
        for op in step.ops:
            print(op.index, op.phase.label, op.module, op.name)
        for light in trace.light_steps(rank=3):     # format 1.4: module and parameter statistics
            print(light.step, [(r.name, r.kind.label, r.norm) for r in light.rows])
        modules = trace.modules(41207, rank=3)      # format 1.5: the model's modules, or None
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType

from tracefmt._decode import Step, StepSummary
from tracefmt._modread import step_modules
from tracefmt._openfiles import OpenFiles
from tracefmt._primitives import Problem, rank_files, rank_of_name
from tracefmt._rankfile import DatasetSize, RankFile
from tracefmt.errors import TraceError, TraceFormatError
from tracefmt.light import LightStep, LightStepSummary
from tracefmt.manifest import RunManifest, load_manifest, manifest_path
from tracefmt.model import Provenance
from tracefmt.moduletable import ModuleTable

__all__ = [
    "DatasetSize",
    "LightStep",
    "LightStepSummary",
    "RankFile",
    "Step",
    "StepSummary",
    "Trace",
    "open",
    "rank_of_name",
]

#: At most this many rank files of a run are open at once (:class:`~tracefmt._openfiles.OpenFiles`):
#: a file descriptor and ~3 MB of HDF5 caches each, and HDF5 closes a file the slower the more are
#: open (``tracefmt info`` of 256 ranks: 7.3 s with 16 open, 11.5 s with 32 or all).  The others are
#: opened again when read, each dataset checked again as it is first read (~0.4 ms each).
MAX_OPEN_FILES = 16
#: Light steps :meth:`Trace.light_steps` reads at once.
LIGHT_BLOCK = 4096


class Trace:
    """A run: one or more rank files.  Close it (or use ``with``) to release the files.

    ``manifest`` is the run's ``run.json`` (None without one, or when it cannot be read:
    ``manifest_problem`` says why).  ``expected_ranks`` are the ranks the run has: the manifest's,
    else ``0..world_size-1`` of the rank files (a single file: its own rank).  Of those, ``ranks``
    have a readable file, ``damaged_ranks`` a file that cannot be used (rank -> why) and
    ``missing_ranks`` none at all.
    """

    def __init__(
        self,
        files: dict[int, RankFile],
        path: Path,
        *,
        manifest: RunManifest | None = None,
        manifest_problem: str | None = None,
        damaged: Mapping[Path, str] | None = None,
        is_dir: bool = False,
    ) -> None:
        self._files = files
        self.path = path
        first = files[min(files)]
        self.manifest = manifest
        self.manifest_problem = manifest_problem
        self.run_id = manifest.run_id if manifest else first.run_id
        self.world_size = manifest.world_size if manifest else first.world_size
        self.provenance: Provenance = first.provenance
        #: Rank files in the run directory that cannot be used, with why (one sentence each).
        self.damaged_files: dict[Path, str] = dict(damaged or {})
        if manifest is not None:
            self.expected_ranks: tuple[int, ...] = manifest.expected_ranks
        elif is_dir:
            self.expected_ranks = tuple(range(self.world_size))
        else:
            self.expected_ranks = (first.rank,)

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
        """Ranks with a readable file in this trace, ascending."""
        return tuple(sorted(self._files))

    @property
    def damaged_ranks(self) -> dict[int, str]:
        """Ranks whose file is present but cannot be used (named ``rank-NNNNN.tft.h5`` and not
        read), with a one-sentence reason, ascending."""
        out: dict[int, str] = {}
        for path, why in sorted(self.damaged_files.items()):
            rank = rank_of_name(path)
            if rank is not None and rank not in self._files:
                out.setdefault(rank, why)
        return dict(sorted(out.items()))

    @property
    def missing_ranks(self) -> tuple[int, ...]:
        """Expected ranks with no file at all, ascending."""
        present = set(self._files) | set(self.damaged_ranks)
        return tuple(r for r in self.expected_ranks if r not in present)

    def rank_file(self, rank: int | None = None) -> RankFile:
        """The file of ``rank`` (default: the lowest rank present)."""
        if rank is None:
            rank = min(self._files)
        try:
            return self._files[rank]
        except KeyError:
            pass
        damaged = self.damaged_ranks.get(rank)
        if damaged is not None:
            raise TraceError(f"Rank {rank}'s file in {self.path} cannot be read: {damaged}")
        have = ", ".join(map(str, self.ranks))
        if rank in self.expected_ranks:
            raise TraceError(
                f"Rank {rank} wrote no file in {self.path} (the run expects it); it has ranks {have}."
            )
        raise TraceError(f"Rank {rank} is not in {self.path}; it has ranks {have}.")

    def steps(self, rank: int | None = None) -> list[int]:
        """Step numbers committed by ``rank``."""
        return [int(s) for s in self.rank_file(rank).step_rows()["step"]]

    def summaries(self, rank: int | None = None) -> list[StepSummary]:
        return self.rank_file(rank).summaries()

    def step(self, step: int, rank: int | None = None) -> Step:
        """Load one step (its ops, tensors and statistics; values stay on disk until asked)."""
        f = self.rank_file(rank)
        return f.load(f.find(step))

    def modules(self, step: int, rank: int | None = None) -> ModuleTable | None:
        """The model's modules as recorded with ``step`` of ``rank`` (format 1.5): path, class
        and parameter counts of each (:mod:`tracefmt.moduletable`); None when the step has none
        (a file older than 1.5, or one recorded without a model).  Steps share one table while
        the model does not change, and it is read once."""
        f = self.rank_file(rank)
        return step_modules(f, f.find(step))

    def iter_steps(self, rank: int | None = None) -> Iterator[Step]:
        f = self.rank_file(rank)
        for i in range(f.num_steps()):
            yield f.load(i)

    # -- light steps (format 1.4) ----------------------------------------------------------------
    def light_summaries(self, rank: int | None = None) -> list[LightStepSummary]:
        """One summary per light step of ``rank``, from the light step index alone (none in a
        file older than 1.4)."""
        return self.rank_file(rank).light_summaries()

    def light_step(self, step: int, rank: int | None = None) -> LightStep:
        """Load one light step of ``rank``: its index row and its own rows, nothing else."""
        f = self.rank_file(rank)
        i = f.find(step, light=True)
        return f.load_lights(i, i + 1)[0]

    def light_steps(self, rank: int | None = None) -> list[LightStep]:
        """Every light step of ``rank``, in step order (none in a file older than 1.4): the
        index and each table read in blocks of :data:`LIGHT_BLOCK` steps, not step by step."""
        f = self.rank_file(rank)
        n = f.num_light_steps()
        return [s for i in range(0, n, LIGHT_BLOCK) for s in f.load_lights(i, i + LIGHT_BLOCK)]

    def refresh(self) -> None:
        """Pick up steps a live writer committed since opening."""
        for f in self._files.values():
            f.refresh()


def _probe(rf: RankFile) -> None:
    """Read the first and last rows of ``rf``'s step index, so that a rank file cut short (its
    step index unreadable) is reported as damaged at open rather than failing later."""
    try:
        rf.step_range()
    except BaseException:
        rf.close()
        raise


def _manifest(path: Path, is_dir: bool) -> tuple[RunManifest | None, str | None]:
    """The run's manifest, or why it cannot be read (a run then reads as if it had none)."""
    if not is_dir:
        return None, None
    found = load_manifest(path)
    if isinstance(found, Problem):
        return None, f"{manifest_path(path)}: {found.message}"
    return found, None


def _conflict(rf: RankFile, files: dict[int, RankFile], manifest: RunManifest | None) -> str | None:
    """Why rank file ``rf`` cannot join a run of ``files`` (and ``manifest``), or None."""
    named = rank_of_name(rf.path)
    if named is not None and named != rf.rank:
        return (
            f"The file is named for rank {named} but holds rank {rf.rank}; rank files are named "
            "after their rank (TF-RUN-001)."
        )
    if rf.rank in files:
        return f"It and {str(files[rf.rank].path)!r} both claim rank {rf.rank}."
    if manifest is not None:
        run_id, world = manifest.run_id, manifest.world_size
        where = "the run manifest"
    elif files:
        other = files[min(files)]
        run_id, world, where = other.run_id, other.world_size, repr(other.path.name)
    else:
        return None
    if (rf.run_id, rf.world_size) != (run_id, world):
        return (
            f"It belongs to another run: run_id {rf.run_id!r}, world_size {rf.world_size}, "
            f"where {where} has {run_id!r}, {world}."
        )
    return None


def open(path: str | os.PathLike[str]) -> Trace:
    """Open a rank file or a run directory (which holds ``rank-NNNNN.tft.h5`` files and, from
    format 1.2, a ``run.json`` manifest).

    In a run directory, a rank file that cannot be read or does not belong to the run is reported
    in :attr:`Trace.damaged_ranks` and the others are read; only when no rank file is readable
    does opening fail (with the error of the one file, or a summary of all).
    """
    p = Path(path)
    candidates, is_dir = rank_files(p)
    manifest, manifest_problem = _manifest(p, is_dir)
    files: dict[int, RankFile] = {}
    damaged: dict[Path, str] = {}
    errors: list[TraceError] = []
    pool = OpenFiles(MAX_OPEN_FILES)
    try:
        for c in candidates:
            try:
                rf = RankFile(c, pool=pool)
                if is_dir:
                    _probe(rf)
            except TraceError as e:
                if not is_dir:
                    raise
                errors.append(e)
                damaged[c] = str(e)
                continue
            why = _conflict(rf, files, manifest)
            if why is not None:
                rf.close()
                damaged[c] = why
                errors.append(TraceFormatError(f"{str(c)!r}: {why}"))
                continue
            files[rf.rank] = rf
    except BaseException:
        for rf in files.values():
            rf.close()
        raise
    if not files:
        if len(errors) == 1 and len(candidates) == 1:
            raise errors[0]
        reasons = " ".join(f"{c.name}: {why}" for c, why in damaged.items())
        raise TraceFormatError(
            f"None of the {len(candidates)} rank files in {str(p)!r} can be read. {reasons}"
        )
    return Trace(
        files,
        p,
        manifest=manifest,
        manifest_problem=manifest_problem,
        damaged=damaged,
        is_dir=is_dir,
    )
