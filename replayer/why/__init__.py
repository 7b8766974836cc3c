"""``replayer why``: where each trigger event of a flight-recorded run started.

:func:`explain` reads every trigger event of a run (:mod:`replayer.why.explain`) and finds its
origin: the first op or module where NaN/Inf entered (:mod:`replayer.why.fullorigin`,
:mod:`replayer.why.lightorigin`), or whose statistics departed from the step before
(:mod:`replayer.why.departure`), with the numbers there (:mod:`replayer.why.causes`), the path
to the loss, the rank that saw it first (:mod:`replayer.why.firstrank`) and how to record the
step again in full (:mod:`replayer.why.rerecord`).  The typed result is in
:mod:`replayer.why.explained`, its terminal report in :mod:`replayer.why.printout`.
"""

from replayer.why.departure import departure, find_departure
from replayer.why.explain import explain
from replayer.why.explained import (
    CAUSE_KINDS,
    Cause,
    Explanation,
    FirstSeen,
    Link,
    Rerecord,
    Site,
    TensorNumbers,
    WhyOptions,
    WhyReport,
)
from replayer.why.fullorigin import FullOrigin, find_nonfinite_origin
from replayer.why.printout import render

__all__ = [
    "CAUSE_KINDS",
    "Cause",
    "Explanation",
    "FirstSeen",
    "FullOrigin",
    "Link",
    "Rerecord",
    "Site",
    "TensorNumbers",
    "WhyOptions",
    "WhyReport",
    "departure",
    "explain",
    "find_departure",
    "find_nonfinite_origin",
    "render",
]
