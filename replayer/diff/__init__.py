"""``replayer diff``: two steps, runs or ranks compared down to the first op that diverged.

:func:`diff_steps` compares two steps (:mod:`replayer.diff.walk` walks their aligned ops,
:mod:`replayer.diff.pairs` compares their tensor pairs, :mod:`replayer.diff.numeric` measures
distances), :func:`diff_sides` two ``RUN[:STEP][@RANK]`` sides (:mod:`replayer.diff.runs`); the
typed results are in :mod:`replayer.diff.results`, their terminal report in
:mod:`replayer.diff.render`, JSON data in :mod:`replayer.diff.jsondata` and the HTML page with a
plot in :mod:`replayer.diff.page`.
"""

from replayer.diff.core import diff_steps, divergent_ops
from replayer.diff.jsondata import to_json
from replayer.diff.page import write_html
from replayer.diff.render import render
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
