"""Check that a trace meets ``spec/format.md``: one rule per requirement id, each returning findings.

:func:`validate` takes a rank file or a run directory and returns a list of :class:`Finding`; an
empty list means the trace is valid.  It never raises for a bad file (a file that does not open is a
``TF-FILE-001`` finding); it raises :class:`~tracefmt.errors.TraceNotFoundError` only when the path
names no file or run directory.  ``deep=True`` also reads every stored chunk (checksums) and checks
every recorded value against its fingerprint.

Example::

    from tracefmt.validate import validate
    for finding in validate("runs/exp1", deep=True):
        print(finding)    # runs/exp1/rank-00000.tft.h5:/steps[3] (step 3): TF-STEP-005 error: ...
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection
from pathlib import Path

from tracefmt._primitives import rank_files, rank_of_name
from tracefmt.errors import TraceNotFoundError
from tracefmt.manifest import load_manifest
from tracefmt.progress import ProgressFn
from tracefmt.rules import RULES, Finding, Rule
from tracefmt.rules._base import GATE_LAYOUT, GATE_TRACE
from tracefmt.rules._context import FileContext, RunContext

__all__ = ["RULES", "UNREADABLE", "Finding", "Rule", "validate"]

#: The rule whose findings mean "this is not a readable trace" (the CLI's exit code 2).
UNREADABLE = "TF-FILE-001"


def _runs(rule: Rule, ctx: FileContext) -> bool:
    if rule.gate >= GATE_TRACE and not ctx.is_trace:
        return False
    return not (rule.gate >= GATE_LAYOUT and not ctx.supported)


def validate(
    path: str | os.PathLike[str],
    *,
    deep: bool = False,
    progress: ProgressFn | None = None,
    ranks: Collection[int] | None = None,
) -> list[Finding]:
    """Validate a rank file or a run directory; return every finding (empty: valid).

    ``progress(done, total)`` is called after each rule has run on each file; ``total`` is the
    number of (file, rule) checks.  Rules marked deep run only with ``deep=True``.  ``ranks``
    restricts a run directory to the rank files named for those ranks (``rank-NNNNN.tft.h5``);
    the run-level rules then check those files against the manifest.
    """
    files, is_dir = rank_files(Path(path))
    if ranks is not None and is_dir:
        files = [f for f in files if rank_of_name(f) in set(ranks)]
        if not files:
            raise TraceNotFoundError(
                f"{str(path)!r} has no rank file of rank(s) {', '.join(map(str, sorted(ranks)))}."
            )
    selected = [r for r in RULES.values() if deep or not r.deep]
    file_rules = [r for r in selected if r.scope == "file"]
    run_rules = [r for r in selected if r.scope == "run"]
    total, done = len(files) * len(file_rules) + len(run_rules), 0
    findings: list[Finding] = []
    identities = []
    for file in files:
        with contextlib.closing(FileContext(file, deep=deep)) as ctx:
            for rule in file_rules:
                if _runs(rule, ctx):
                    findings.extend(rule(ctx))
                done += 1
                if progress is not None:
                    progress(done, total)
            findings.extend(ctx.failure_findings())
            identities.append((file, ctx.identity()))
    manifest = load_manifest(path) if is_dir else None
    run = RunContext(Path(path), is_dir, tuple(identities), manifest)
    for rule in run_rules:
        findings.extend(rule(run))
        done += 1
        if progress is not None:
            progress(done, total)
    return findings
