"""``replayer export``: a recorded step as an ONNX model.

:mod:`replayer.export.mapping` selects a step's ops and maps each through the op table
(:mod:`replayer.export.ops`) or, when it has no mapping, to an ``ai.tracefmt.aten`` custom node
(:mod:`replayer.export.custom`); :mod:`replayer.export.build` assembles the model, folding modules
below a depth into ``ai.tracefmt.Module`` nodes (:mod:`replayer.export.modules`), as one
:class:`ExportOptions` says.  ``spec/custom-ops.md`` is the normative description of what is
written.
"""

from replayer.export.build import (
    ExportOptions,
    ExportStats,
    ModelLabels,
    build_model,
    export_ops,
    export_step,
    save_model,
)
from replayer.export.mapping import PHASES, MappedStep, OpUnit, load_selection, map_step, select

__all__ = [
    "PHASES",
    "ExportOptions",
    "ExportStats",
    "MappedStep",
    "ModelLabels",
    "OpUnit",
    "build_model",
    "export_ops",
    "export_step",
    "load_selection",
    "map_step",
    "save_model",
    "select",
]
