"""The validator's rules, one small function per requirement id of ``spec/format.md``.

Importing this package registers every rule in :data:`RULES`.  Use :func:`tracefmt.validate.validate`
to run them.
"""

from tracefmt.rules import (  # noqa: F401  (importing registers the rules)
    collops,
    file,
    graph,
    lightsteps,
    modulerows,
    opstarts,
    overrides,
    packed,
    rngrows,
    run,
    stepflags,
    steps,
    triggers,
)
from tracefmt.rules._base import RULES, Finding, Issue, Rule, Skip

__all__ = ["RULES", "Finding", "Issue", "Rule", "Skip"]
