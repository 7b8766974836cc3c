"""``replayer ranks``: a run's ranks checked against each other.

:func:`check_ranks` matches each step's collectives across the ranks of their process groups
(:mod:`replayer.ranks.matching`), compares the numbers every replica should share
(:mod:`replayer.ranks.replicas`), sums where the time went and says which rank the others waited
for at each collective (:mod:`replayer.ranks.arrival`), reading one rank's step at a time
(:mod:`replayer.ranks.digest`).  The typed result is in :mod:`replayer.ranks.findings`, its
terminal report in :mod:`replayer.ranks.textreport`.
"""

from replayer.ranks.crossrank import check_ranks
from replayer.ranks.digest import CollectiveRow, RankDigest, digest_step
from replayer.ranks.findings import (
    Arrival,
    GroupReport,
    Mismatch,
    NoData,
    Parting,
    RanksReport,
    RankTime,
    StepTime,
    ValueFinding,
)
from replayer.ranks.textreport import render

__all__ = [
    "Arrival",
    "CollectiveRow",
    "GroupReport",
    "Mismatch",
    "NoData",
    "Parting",
    "RankDigest",
    "RankTime",
    "RanksReport",
    "StepTime",
    "ValueFinding",
    "check_ranks",
    "digest_step",
    "render",
]
