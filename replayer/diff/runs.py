"""Diff whole runs, and the ``TRACE[:STEP][@RANK]`` side specifications of ``replayer diff``.

:func:`diff_runs` walks the steps two runs (or two ranks of one run) have in common, in order, and
keeps the diff of the first step that is not bit-identical, where the origin of a drift is.
:func:`diff_sides` is what the command line calls: it opens both sides and picks a step diff
(when either side names a step) or a run diff.

Example::

    result = diff_sides("runs/a:3", "runs/b")      # step 3 of both runs
    result = diff_sides("runs/a@0", "runs/a@1")    # every common step of ranks 0 and 1
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

import tracefmt
from replayer.diff.core import diff_steps
from replayer.diff.results import RunDiff, StepDiff, StepVerdict
from replayer.errors import ReplayError
from tracefmt.progress import ProgressFn
from tracefmt.reader import Trace

__all__ = ["Progress", "Side", "diff_runs", "diff_sides", "parse_side"]

#: ``progress(done, total)``: called after each step of a run diff.
Progress = ProgressFn

_SIDE = re.compile(r"^(?P<path>.+?)(?::(?P<step>\d+))?(?:@(?P<rank>\d+))?$")


@dataclass(frozen=True)
class Side:
    """One side of a diff: a trace (file or run directory), maybe a step, maybe a rank."""

    path: str
    step: int | None = None
    rank: int | None = None

    def __str__(self) -> str:
        return (
            self.path
            + ("" if self.step is None else f":{self.step}")
            + ("" if self.rank is None else f"@{self.rank}")
        )


def parse_side(text: str) -> Side:
    """Parse ``TRACE[:STEP][@RANK]`` (``runs/a``, ``runs/a:3``, ``runs/a:3@1``, ``runs/a@1``).

    A string naming an existing path is taken as a path whole, so a file whose name contains
    ``:`` or ``@`` still works.  Raises :class:`ReplayError` on an empty or malformed spec.
    """
    if not isinstance(text, str) or not text.strip():
        raise ReplayError(
            "A diff side must be TRACE[:STEP][@RANK], e.g. runs/a:3 or runs/a@1; got an empty string."
        )
    if os.path.exists(text):
        return Side(text)
    m = _SIDE.match(text)
    if m is None:  # pragma: no cover - the pattern matches any non-empty string
        raise ReplayError(f"Cannot parse diff side {text!r}; use TRACE[:STEP][@RANK].")
    step, rank = m.group("step"), m.group("rank")
    return Side(
        m.group("path"), None if step is None else int(step), None if rank is None else int(rank)
    )


def diff_runs(
    trace_a: Trace,
    trace_b: Trace,
    *,
    rank_a: int | None = None,
    rank_b: int | None = None,
    steps: Iterable[int] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    values: bool = True,
    progress: Progress | None = None,
    stop_at_first_different: bool = True,
) -> RunDiff:
    """Diff every step both runs recorded (or those in ``steps``), in step order.

    Stops after the first step that differs beyond tolerance unless ``stop_at_first_different``
    is false.  Raises :class:`ReplayError` when the runs have no step in common.
    """
    file_a, file_b = trace_a.rank_file(rank_a), trace_b.rank_file(rank_b)
    have_a, have_b = trace_a.steps(file_a.rank), trace_b.steps(file_b.rank)
    set_a, set_b = set(have_a), set(have_b)
    common = sorted(set_a & set_b)
    if steps is not None:
        wanted = set(steps)
        common = [s for s in common if s in wanted]
    if not common:
        raise ReplayError(
            f"{trace_a.path} (rank {file_a.rank}) and {trace_b.path} (rank "
            f"{file_b.rank}) have no recorded step in common; name steps with "
            "TRACE:STEP to compare two different steps."
        )
    verdicts: list[StepVerdict] = []
    first_divergent = first_different = None
    diff: StepDiff | None = None
    different_diff: StepDiff | None = None
    stopped = False
    for k, s in enumerate(common):
        d = diff_steps(
            trace_a.step(s, file_a.rank),
            trace_b.step(s, file_b.rank),
            rtol=rtol,
            atol=atol,
            values=values,
        )
        verdicts.append(StepVerdict(s, d.verdict, d.counts.different, len(d.structural)))
        if first_divergent is None and not d.identical:
            first_divergent, diff = s, d
        if progress is not None:
            progress(k + 1, len(common))
        if not d.equal and first_different is None:
            first_different = s
            if d is not diff:
                different_diff = d
            if stop_at_first_different:
                stopped = k + 1 < len(common)
                break
    return RunDiff(
        str(trace_a.path),
        str(trace_b.path),
        file_a.rank,
        file_b.rank,
        len(common),
        tuple(verdicts),
        tuple(sorted(set_a - set_b)),
        tuple(sorted(set_b - set_a)),
        first_divergent,
        first_different,
        diff,
        different_diff,
        stopped,
    )


def diff_sides(
    a: Side | str,
    b: Side | str,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    values: bool = True,
    progress: Progress | None = None,
    stop_at_first_different: bool = True,
) -> StepDiff | RunDiff:
    """Open both sides and diff them: one step pair when either side names a step (the other
    side defaults to the same step number), else every common step."""
    sa = a if isinstance(a, Side) else parse_side(a)
    sb = b if isinstance(b, Side) else parse_side(b)
    with tracefmt.open(sa.path) as ta, tracefmt.open(sb.path) as tb:
        if sa.step is None and sb.step is None:
            return diff_runs(
                ta,
                tb,
                rank_a=sa.rank,
                rank_b=sb.rank,
                rtol=rtol,
                atol=atol,
                values=values,
                progress=progress,
                stop_at_first_different=stop_at_first_different,
            )
        named = [s for s in (sa.step, sb.step) if s is not None]
        step_a = sa.step if sa.step is not None else named[0]
        step_b = sb.step if sb.step is not None else named[0]
        return diff_steps(
            ta.step(step_a, sa.rank), tb.step(step_b, sb.rank), rtol=rtol, atol=atol, values=values
        )
