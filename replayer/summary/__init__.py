"""``replayer summary``: a torchinfo-style summary of the model from one recorded step.

:func:`summarize` reads a step and its module metadata (format 1.5) and rolls the step's ops up
into the modules that ran them (:mod:`replayer.summary.rollup`): output shape, parameters,
forward multiply-adds (:mod:`replayer.summary.multadds`: one formula per matrix-product,
convolution and attention op), forward and backward host time, activation bytes and memory.
:func:`render_summary` prints it as a table (:mod:`replayer.summary.sumtable`); the click
command is :data:`replayer.summary.cli.summary`.
"""

from replayer.summary.multadds import MULT_ADD_OPS, op_mult_adds
from replayer.summary.rollup import (
    ModelSummary,
    ModuleSummary,
    SummaryTotals,
    summarize,
    summarize_step,
)
from replayer.summary.sumtable import human_count, render_summary

__all__ = [
    "MULT_ADD_OPS",
    "ModelSummary",
    "ModuleSummary",
    "SummaryTotals",
    "human_count",
    "op_mult_adds",
    "render_summary",
    "summarize",
    "summarize_step",
]
