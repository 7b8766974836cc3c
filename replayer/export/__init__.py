"""``replayer export``: a recorded step as an ONNX model.

Standard ops map to ONNX nodes through the op table (:mod:`replayer.export.ops`); the rest become
``ai.tracefmt.aten`` custom nodes (:mod:`replayer.export.custom`), and modules below a depth fold
into ``ai.tracefmt.Module`` nodes (:mod:`replayer.export.modules`).  ``spec/custom-ops.md`` is the
normative description of what is written.
"""

from replayer.export.build import (
    PHASES,
    ExportStats,
    MappedStep,
    OpUnit,
    build_model,
    export_ops,
    export_step,
    map_step,
    save_model,
    select,
)

__all__ = [
    "PHASES",
    "ExportStats",
    "MappedStep",
    "OpUnit",
    "build_model",
    "export_ops",
    "export_step",
    "map_step",
    "save_model",
    "select",
]
