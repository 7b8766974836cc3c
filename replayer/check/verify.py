"""``tracefmt verify``: is an archive intact, and does it re-execute to what it recorded?

:func:`verify` runs the validator with the deep checks (every chunk read back through its filters,
every fingerprint checked: ``tracefmt validate --deep``), then re-executes every step that holds
recorded values with ``replayer check`` (:func:`replayer.check.check_step`):

- *local* mode where the step has values: each op runs on its recorded inputs and its outputs are
  compared with the recorded values, statistics and fingerprints;
- *chain* mode, as well, where the step has its **leaves**: every tensor the step starts from (no
  op of the step produced it: parameters, buffers, optimizer state, the batch) and every random
  op's draws have values.  Then the whole step is re-executed from those alone, errors accumulating
  as in a re-run, which proves the record of the step complete.

A step without values cannot be re-executed and is listed as such.  The command lives in the
``tracefmt`` CLI (archives are ``tracefmt pack``'s), which imports this module only when it runs;
the work is here because re-execution is the replayer's (ONNX, ONNX Runtime).
:attr:`VerifyReport.exit_code` is the CLI's: 0 all good, 1 a validation error or a check that
failed, 2 the path could not be read as a trace.

Example::

    report = verify("archive/exp1")
    for c in report.checks:
        print(c.step, c.rank, c.mode, c.verdict)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from replayer.check.checker import check_step
from replayer.check.report import CheckReport
from replayer.errors import ReplayError
from replayer.export.ops import plausibility_for
from tracefmt.errors import TraceError
from tracefmt.progress import ProgressFn
from tracefmt.reader import Step, Trace
from tracefmt.reader import open as open_trace
from tracefmt.validate import UNREADABLE, Finding, validate

__all__ = [
    "ERROR",
    "FAIL",
    "NOTHING_CHECKED",
    "NOT_FAILING",
    "NO_VALUES",
    "PASS",
    "StepCheck",
    "VerifyReport",
    "has_leaves",
    "reexecute",
    "verify",
]

PASS, FAIL, ERROR, NO_VALUES = "pass", "fail", "error", "no values"
#: A check that ran but compared no op (every op skipped, e.g. none maps to ONNX): not a failure.
NOTHING_CHECKED = "nothing checked"
#: Verdicts that do not fail :func:`verify`.
NOT_FAILING = frozenset({PASS, NO_VALUES, NOTHING_CHECKED})
EXIT_OK, EXIT_FAILED, EXIT_UNREADABLE = 0, 1, 2


@dataclass(frozen=True)
class StepCheck:
    """One re-execution of one step of one rank (``mode`` ``local`` or ``chain``), or a step
    that could not be re-executed (``mode`` ``-``, verdict :data:`NO_VALUES` or :data:`ERROR`)."""

    step: int
    rank: int
    mode: str
    verdict: str
    ops: int = 0
    checked: int = 0
    skipped: int = 0
    failed: int = 0
    #: the first failed ops, or why the check could not run
    detail: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify` found: the validator's findings and each step's checks."""

    path: Path
    findings: tuple[Finding, ...]
    checks: tuple[StepCheck, ...]

    @property
    def unreadable(self) -> bool:
        return any(f.rule == UNREADABLE for f in self.findings)

    @property
    def errors(self) -> tuple[Finding, ...]:
        """The findings of severity ``error`` (warnings, e.g. a newer minor version, pass)."""
        return tuple(f for f in self.findings if f.severity == "error")

    @property
    def passed(self) -> bool:
        return not self.errors and all(c.verdict in NOT_FAILING for c in self.checks)

    @property
    def exit_code(self) -> int:
        if self.unreadable:
            return EXIT_UNREADABLE
        return EXIT_OK if self.passed else EXIT_FAILED


def _require_runtime() -> None:
    """ONNX Runtime is imported only when a check runs; say before any work when it is missing."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise ReplayError(
            f"tracefmt verify re-executes steps with ONNX Runtime, which cannot be imported here "
            f"({e}). Install it (pip install onnxruntime), or run 'tracefmt validate --deep' for "
            "the checks that need no re-execution."
        ) from e


def has_leaves(step: Step) -> bool:
    """Whether ``step`` holds the values of everything it starts from: each tensor an op reads
    that no op of the step produced, and each output of a random op (a draw)."""
    read = {t for op in step.ops for t in op.inputs}
    for t in step.tensors:
        if t.index in read and t.meta.producer is None and not t.has_values:
            return False
    for op in step.ops:
        if plausibility_for(op.name) is not None and not all(
            step.tensors[t].has_values for t in op.outputs
        ):
            return False
    return True


def _from_report(report: CheckReport) -> StepCheck:
    c = report.counts().get("all", {"ops": 0, "checked": 0, "skipped": 0, "failed": 0})
    failed = report.failed
    detail = "; ".join(f"op {r.op} {r.name}: {r.reason or 'mismatch'}" for r in failed[:3])
    if len(failed) > 3:
        detail += f"; and {len(failed) - 3} more"
    return StepCheck(
        step=report.step,
        rank=report.rank,
        mode=report.mode,
        verdict=FAIL if not report.passed else (PASS if c["checked"] else NOTHING_CHECKED),
        ops=c["ops"],
        checked=c["checked"],
        skipped=c["skipped"],
        failed=c["failed"],
        detail=detail,
        seconds=report.seconds,
    )


def _check_rank_step(trace: Trace, step_no: int, rank: int) -> list[StepCheck]:
    try:
        step = trace.step(step_no, rank)
        if not any(t.has_values for t in step.tensors):
            n = len(step.ops)
            return [StepCheck(step=step_no, rank=rank, mode="-", verdict=NO_VALUES, ops=n, skipped=n)]
        modes = [False, True] if has_leaves(step) else [False]
    except TraceError as e:
        return [StepCheck(step=step_no, rank=rank, mode="-", verdict=ERROR, detail=str(e))]
    out = []
    for chain in modes:
        try:
            out.append(_from_report(check_step(trace, step_no, rank=rank, chain=chain)))
        except TraceError as e:  # a damaged value, a step the replayer cannot map
            out.append(
                StepCheck(
                    step=step_no,
                    rank=rank,
                    mode="chain" if chain else "local",
                    verdict=ERROR,
                    ops=len(step.ops),
                    detail=str(e),
                )
            )
    return out


def reexecute(
    path: str | os.PathLike[str], *, progress: ProgressFn | None = None
) -> tuple[StepCheck, ...]:
    """Re-execute every step of every rank of ``path`` that has values (module docstring);
    ``progress(done, total)`` after each step.  Raises :class:`~tracefmt.errors.TraceError` when
    ONNX Runtime cannot be imported or ``path`` cannot be opened."""
    _require_runtime()
    checks: list[StepCheck] = []
    with open_trace(path) as trace:
        todo = [(s, r) for r in trace.ranks for s in trace.steps(r)]
        for i, (step_no, rank) in enumerate(todo):
            checks.extend(_check_rank_step(trace, step_no, rank))
            if progress is not None:
                progress(i + 1, len(todo))
    return tuple(checks)


def verify(
    path: str | os.PathLike[str],
    *,
    progress: ProgressFn | None = None,
    validate_progress: ProgressFn | None = None,
) -> VerifyReport:
    """Validate ``path`` (a run directory or a rank file) deeply, then :func:`reexecute` it.
    ``validate_progress`` and ``progress`` (steps) are called as the two parts go.  Raises
    :class:`~tracefmt.errors.TraceError` when ONNX Runtime cannot be imported (before any
    work); an unreadable path is a finding (:attr:`VerifyReport.unreadable`)."""
    _require_runtime()
    findings = tuple(validate(path, deep=True, progress=validate_progress))
    if any(f.rule == UNREADABLE for f in findings):
        return VerifyReport(path=Path(path), findings=findings, checks=())
    return VerifyReport(path=Path(path), findings=findings, checks=reexecute(path, progress=progress))
