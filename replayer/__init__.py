"""replayer: recorded training steps as ONNX (for Netron and ONNX Runtime), checks and diffs.

Works without torch: it reads traces through :mod:`tracefmt` and writes ONNX.
"""

from replayer.errors import ReplayError
from replayer.export import ExportStats, export_ops, export_step, select

__all__ = ["ExportStats", "ReplayError", "export_ops", "export_step", "select"]
