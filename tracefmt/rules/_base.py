"""The validator's registry: findings, rules, and the decorator that registers a rule under its id.

A rule is a small function, one per requirement id of ``spec/format.md``.  It takes a read-only
context and yields :class:`Issue` objects (where, what); the registry turns them into
:class:`Finding` objects carrying the rule's id.  A rule never raises for a bad file: when
something it needs is broken it raises :class:`Skip` (the rule that checks that thing reports it),
and any other exception becomes a finding saying the rule could not run.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

Severity = Literal["error", "warning"]

#: Findings one rule reports for one file before it stops and says how it stopped.
MAX_FINDINGS_PER_RULE = 50

_ID = re.compile(r"TF-[A-Z]+-\d{3}")


@dataclass(frozen=True)
class Finding:
    """One problem the validator found.

    ``rule`` is the requirement id (``TF-STEP-001``), ``severity`` ``"error"`` or ``"warning"``,
    ``location`` the file and HDF5 path (and step) concerned, ``message`` a whole sentence.
    """

    rule: str
    severity: Severity
    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.rule} {self.severity}: {self.message}"


@dataclass(frozen=True)
class Issue:
    """What a rule function yields; the registry adds the rule's id."""

    location: str
    message: str
    severity: Severity = "error"


class Skip(Exception):
    """Something a rule needs is broken; the rule that checks it reports the problem."""


# Gates: what must hold before a rule runs.
GATE_NONE = 0  # runs on any path (reports files that do not open)
GATE_TRACE = 1  # the file opened and is marked as a trace
GATE_LAYOUT = 2  # ... and has a format version this validator knows


@dataclass(frozen=True)
class Rule:
    """A registered rule.  Call it with a context to get its findings as a list."""

    id: str
    title: str
    check: Callable[[Any], Iterable[Issue]]
    deep: bool = False
    scope: Literal["file", "run"] = "file"
    gate: int = GATE_LAYOUT

    def __call__(self, ctx: Any) -> list[Finding]:
        findings: list[Finding] = []
        try:
            for issue in self.check(ctx):
                if len(findings) == MAX_FINDINGS_PER_RULE:
                    findings.append(
                        Finding(
                            self.id,
                            "warning",
                            issue.location,
                            f"More than {MAX_FINDINGS_PER_RULE} findings of this "
                            "rule; the rest are not reported.",
                        )
                    )
                    break
                findings.append(Finding(self.id, issue.severity, issue.location, issue.message))
        except Skip:
            pass
        except RecursionError:
            findings.append(
                Finding(
                    self.id, "error", str(ctx.path), "The rule could not run: data nested too deeply."
                )
            )
        except Exception as e:  # a rule must never crash the validator
            findings.append(
                Finding(
                    self.id,
                    "error",
                    str(ctx.path),
                    f"The rule could not run on this file: {type(e).__name__}: {e}",
                )
            )
        return findings


#: Every rule, by requirement id, in registration order.
RULES: dict[str, Rule] = {}


def rule(
    rule_id: str,
    title: str,
    *,
    deep: bool = False,
    scope: Literal["file", "run"] = "file",
    gate: int = GATE_LAYOUT,
) -> Callable[[Callable[[Any], Iterable[Issue]]], Callable[[Any], Iterable[Issue]]]:
    """Register the decorated function as the rule for requirement ``rule_id``."""
    if not _ID.fullmatch(rule_id):
        raise ValueError(f"Rule id {rule_id!r} does not have the form TF-AREA-NNN.")
    if rule_id in RULES:
        raise ValueError(f"Rule {rule_id!r} is registered twice.")

    def register(func: Callable[[Any], Iterable[Issue]]) -> Callable[[Any], Iterable[Issue]]:
        RULES[rule_id] = Rule(rule_id, title, func, deep, scope, gate)
        return func

    return register
