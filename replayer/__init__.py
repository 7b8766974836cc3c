"""replayer: recorded training steps as ONNX (for Netron and ONNX Runtime), checks and diffs.

Works without torch: it reads traces through :mod:`tracefmt` and writes ONNX.

* :func:`export_step` - one step as an ONNX model (standard ops, ``ai.tracefmt.aten`` custom
  nodes for the rest, ``ai.tracefmt.Module`` nodes for folded modules);
* :func:`check_step` - replay it in ONNX Runtime (custom ops in numpy) and compare every op with
  the record;
* :func:`serve_step` - serve it with Netron.
"""

from replayer.check import CheckReport, OpResult, check_step
from replayer.errors import ReplayError
from replayer.export import ExportStats, export_ops, export_step, save_model, select
from replayer.view import serve_step

__all__ = [
    "CheckReport",
    "ExportStats",
    "OpResult",
    "ReplayError",
    "check_step",
    "export_ops",
    "export_step",
    "save_model",
    "select",
    "serve_step",
]
