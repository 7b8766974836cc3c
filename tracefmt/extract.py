"""``tracefmt extract``: a run cut down to some steps of some ranks, small enough for a laptop.

:func:`extract` copies the chosen steps of the chosen ranks into a new run directory: one rank file
per rank with everything each step has (its graph, op timings, statistics, histograms, recorded
values, events, scalars, and its own op attributes and storage offsets) and the light steps (format
1.4) in the same range, the source's run id, rank, world size, values filter and histogram bins,
and the source's provenance plus ``"extracted_from"``.  A source ``run.json`` is copied
restricted to the extracted ranks.  Steps that share a graph in the source share it in the copy
(the writer stores each graph structure once), so one step of a long run costs one step.

Steps are read one at a time (:func:`tracefmt.torecord.step_record`), so memory holds one step's
recorded values at most, as when it was recorded.  The copy is built in a hidden directory next to
the output and renamed into place when complete: a failed or interrupted extract leaves no
half-written run under the output's name.

Example::

    summary = extract("runs/big", "small", steps=range(41207, 41208), ranks=[3])
    # then: replayer diff runs/big:41207@3 small:41207@3
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracefmt import _layout as L
from tracefmt.errors import TraceError
from tracefmt.manifest import RunManifest, write_manifest
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
from tracefmt.writer import TraceWriter, rank_file_path

__all__ = ["EXTRACT_TOOL", "ExtractSummary", "RankExtract", "extract", "parse_step_range"]

#: The ``tool`` of the ``extracted_from`` provenance key.
EXTRACT_TOOL = "tracefmt extract"
#: The open end of ``A:`` (the largest step number the format holds).
_LAST_STEP = (1 << 63) - 1
#: Steps written between two commits of an output file.


@dataclass(frozen=True)
class RankExtract:
    """What was copied of one rank: its step count and first and last step, its output file."""

    rank: int
    steps: int
    first_step: int | None
    last_step: int | None
    path: Path
    bytes: int
    #: light steps copied (format 1.4), in the same step range
    light_steps: int = 0


@dataclass(frozen=True)
class ExtractSummary:
    """The result of :func:`extract`: the run, what was copied of each rank, bytes before and after.

    ``source_bytes`` is the whole source run (every rank file and its manifest), what a user would
    have copied without extracting; ``output_bytes`` the output run.
    """

    source: Path
    output: Path
    run_id: str
    step_range: tuple[int, int]
    ranks: tuple[RankExtract, ...]
    source_bytes: int
    output_bytes: int
    manifest: bool
    #: Ranks of the run left out of an all-ranks extract: damaged or missing files, with why.
    skipped: Mapping[int, str] = dataclasses.field(default_factory=dict)

    @property
    def steps(self) -> int:
        """Steps copied, all ranks together."""
        return sum(r.steps for r in self.ranks)


def parse_step_range(text: str) -> range:
    """Parse the CLI's step selection: ``A:B`` (both included), ``A`` (one step), ``A:`` (from A
    on), ``:B`` (up to B).  Raises :class:`~tracefmt.errors.TraceError` on anything else.

    >>> parse_step_range("3:4")
    range(3, 5)
    """
    start_text, colon, stop_text = text.strip().partition(":")
    try:
        if not text.strip():
            raise ValueError(text)
        start = int(start_text) if start_text.strip() else 0
        stop = int(stop_text) if stop_text.strip() else (_LAST_STEP if colon else start)
    except ValueError:
        raise TraceError(
            f"The step range {text!r} is not A:B (two step numbers, both included), A, A: or :B."
        ) from None
    if start < 0 or stop < start:
        raise TraceError(
            f"The step range {text!r} selects no step: A:B needs 0 <= A <= B (both included)."
        )
    return range(start, stop + 1)


def _range_text(steps: range) -> str:
    """``3:4`` (both included), or ``3:`` for an open end."""
    return f"{steps.start}:{'' if steps.stop > _LAST_STEP else steps.stop - 1}"


def _ranks_text(ranks: Sequence[int]) -> str:
    """``Rank 3`` or ``Ranks 0, 1``."""
    return f"Rank{'s' if len(ranks) != 1 else ''} {', '.join(map(str, ranks))}"


def _select_ranks(trace: Trace, ranks: Sequence[int] | None) -> tuple[int, ...]:
    if ranks is None:
        return trace.ranks
    chosen = tuple(sorted(set(int(r) for r in ranks)))
    if not chosen:
        raise TraceError("The rank selection is empty; name at least one rank, or none for all.")
    unknown = [r for r in chosen if r not in trace.ranks]
    for r in unknown:
        trace.rank_file(r)  # raises, saying whether its file is damaged, missing or not of the run
    if unknown:
        raise TraceError(
            f"{_ranks_text(unknown)} {'is' if len(unknown) == 1 else 'are'} not in "
            f"{str(trace.path)!r}; it has {_ranks_text(trace.ranks).lower()}."
        )
    return chosen


def _select_steps(
    trace: Trace, ranks: tuple[int, ...], steps: range | None
) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """The chosen full steps and (format 1.4) light steps of each rank."""
    if steps is not None and steps.step != 1:
        raise TraceError(f"The step selection {steps!r} must be a range of consecutive steps.")
    if steps is not None and not steps:
        raise TraceError(f"The step selection {steps!r} is empty; it must name at least one step.")
    chosen = {r: [s for s in trace.steps(r) if steps is None or s in steps] for r in ranks}
    light = {
        r: [s.step for s in trace.light_summaries(r) if steps is None or s.step in steps] for r in ranks
    }
    if not any(chosen.values()) and not any(light.values()):
        verb = "has" if len(ranks) == 1 else "have"
        what = f"{verb} no committed step" + ("" if steps is None else f" in {_range_text(steps)}")
        raise TraceError(
            f"{_ranks_text(ranks)} of {str(trace.path)!r} {what}; "
            "'tracefmt ls' lists the recorded steps."
        )
    return chosen, light


def _skipped(trace: Trace) -> dict[int, str]:
    """The run's ranks without a readable file, with why."""
    out = dict(trace.damaged_ranks)
    out.update((r, "its file is missing") for r in trace.missing_ranks)
    return dict(sorted(out.items()))


def _extracted_from(trace: Trace, step_range: tuple[int, int], ranks: Iterable[int]) -> dict[str, Any]:
    return {
        "path": str(trace.path.resolve()),
        "run_id": trace.run_id,
        "steps": list(step_range),
        "ranks": list(ranks),
        "tool": EXTRACT_TOOL,
    }


def _restricted(manifest: RunManifest, ranks: tuple[int, ...]) -> RunManifest:
    """``manifest`` expecting only the extracted ``ranks`` (process groups kept as recorded)."""
    kept = tuple(r for r in manifest.expected_ranks if r in ranks) or ranks
    return dataclasses.replace(manifest, expected_ranks=kept)


def extract(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    steps: range | None = None,
    ranks: Sequence[int] | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> ExtractSummary:
    """Copy ``steps`` (a range of consecutive step numbers; None: all) of ``ranks`` (None: every
    rank with a readable file; the others are in ``skipped``) of the run ``src`` (a run
    directory or one rank file) into the run directory ``dst``; return what was copied.

    Refuses (:class:`~tracefmt.errors.TraceError`) an empty selection, a range in which no chosen
    rank committed a step, a rank the run does not have, an output inside the source directory,
    and an output that exists and is not empty unless ``overwrite`` (which replaces only a run
    directory's files).  A chosen rank with no step in the range gets a rank file with no steps.
    ``progress(done, total)`` is called after each step copied.
    """
    source, output = Path(src), Path(dst)
    old_files = check_output(source, output, overwrite)
    with open_trace(source) as trace:
        manifest = trace.manifest  # None for a rank file given alone, or an unreadable run.json
        chosen_ranks = _select_ranks(trace, ranks)
        skipped = {} if ranks is not None else _skipped(trace)
        chosen, light = _select_steps(trace, chosen_ranks, steps)
        found = [s for ss in (*chosen.values(), *light.values()) for s in ss]
        step_range = (
            steps.start if steps is not None else min(found),
            steps.stop - 1 if steps is not None and steps.stop <= _LAST_STEP else max(found),
        )
        origin = _extracted_from(trace, step_range, chosen_ranks)
        source_bytes = dir_size(trace.rank_file(r).path for r in trace.ranks)
        if manifest is not None:
            source_bytes += dir_size([run_dir(source) / L.RUN_MANIFEST])
        output.parent.mkdir(parents=True, exist_ok=True)
        # Not mkdtemp: its mode 0700 would become the output's; mkdir honours the umask.
        tmp = output.parent / f".{output.name}.extract-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
        try:
            done, total = 0, sum(map(len, chosen.values()))
            written: list[tuple[int, int]] = []
            for rank in chosen_ranks:
                rf = trace.rank_file(rank)
                graphs = GraphCache()
                with TraceWriter(
                    rank_file_path(tmp, rank),
                    run_id=rf.run_id,
                    rank=rf.rank,
                    world_size=rf.world_size,
                    values_filter=rf.values_filter,
                    hist_bins=rf.hist_bins,
                    provenance=with_provenance(rf.provenance, "extracted_from", origin),
                ) as writer:
                    done = copy_steps(
                        trace,
                        rank,
                        chosen[rank],
                        graphs,
                        writer,
                        progress=progress,
                        done=done,
                        total=total,
                    )
                    copy_light(trace, rank, light[rank], writer)
                written.append((rank, len(chosen[rank])))
            if manifest is not None:
                write_manifest(tmp, _restricted(manifest, chosen_ranks))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    replace_run(tmp, output, old_files, what="extracted run")
    per_rank = tuple(
        RankExtract(
            rank=r,
            steps=n,
            first_step=chosen[r][0] if n else None,
            last_step=chosen[r][-1] if n else None,
            path=rank_file_path(output, r),
            bytes=dir_size([rank_file_path(output, r)]),
            light_steps=len(light[r]),
        )
        for r, n in written
    )
    return ExtractSummary(
        source=source,
        output=output,
        run_id=trace.run_id,
        step_range=step_range,
        ranks=per_rank,
        source_bytes=source_bytes,
        output_bytes=dir_size(output.iterdir()),
        manifest=manifest is not None,
        skipped=skipped,
    )
