"""``replayer diff``: two steps, runs or ranks compared down to the first op that diverged.

:func:`diff_steps` compares two steps (:mod:`replayer.diff.walk` aligns their ops,
:mod:`replayer.diff.numeric` measures tensor pairs), :func:`diff_sides` two ``RUN[:STEP][@RANK]``
sides (:mod:`replayer.diff.runs`); the typed results are in :mod:`replayer.diff.results`, their
text, JSON and HTML renderings in :mod:`replayer.diff.render`.
"""

from replayer.diff.core import diff_steps, divergent_ops
from replayer.diff.render import render, to_json, write_html
from replayer.diff.results import RunDiff, Status, StepDiff
from replayer.diff.runs import Side, diff_runs, diff_sides, parse_side

__all__ = [
    "RunDiff",
    "Side",
    "Status",
    "StepDiff",
    "diff_runs",
    "diff_sides",
    "diff_steps",
    "divergent_ops",
    "parse_side",
    "render",
    "to_json",
    "write_html",
]
