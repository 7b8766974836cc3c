"""``replayer check``: re-run a recorded step outside torch and compare every op with the record.

:func:`check_step` maps the step to ONNX (:mod:`replayer.export`), runs it in stages
(:mod:`replayer.check.stages`: ONNX Runtime for standard nodes, the reference evaluator for
custom ones, :mod:`replayer.check.runtime`), judges each op (:mod:`replayer.check.compare`, with
the tolerance of sums and products scaled by the size of their terms,
:mod:`replayer.check.magnitude`; views by their storage addresses, :mod:`replayer.check.addresses`)
and returns a :class:`CheckReport` (:mod:`replayer.check.report`).
:func:`replayer.check.verify.verify` (the ``tracefmt verify`` command) validates a run deeply and
checks every step that has values.
"""

from replayer.check.checker import check_step
from replayer.check.report import CheckReport, OpResult

__all__ = ["CheckReport", "OpResult", "check_step"]
