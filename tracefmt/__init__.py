"""tracefmt: the trace format of the tracefmt flight recorder.

Write with :class:`TraceWriter`, read with :func:`open`, check with :func:`validate`.  This package
needs h5py, numpy and ml_dtypes only; it never imports torch or onnx.
"""

from tracefmt.dtypes import DType
from tracefmt.errors import (
    MissingFilterError,
    TraceCorruptError,
    TraceError,
    TraceFormatError,
    TraceNotFoundError,
    UnsupportedVersionError,
    WriterClosedError,
)
from tracefmt.light import (
    LightKind,
    LightRow,
    LightStep,
    LightStepRecord,
    LightStepSummary,
)
from tracefmt.manifest import (
    ProcessGroupInfo,
    RunManifest,
    group_id,
    read_manifest,
    write_manifest,
)
from tracefmt.model import (
    Event,
    Histogram,
    OpNode,
    Phase,
    Provenance,
    Role,
    StatFlags,
    StepFlags,
    TensorMeta,
    TensorRecord,
    TensorStats,
)
from tracefmt.moduletable import ModuleInfo, ModuleTable
from tracefmt.reader import Step, StepSummary, Trace, open
from tracefmt.records import Graph, GraphBuilder, StepRecord, empty_op_stats, empty_stats
from tracefmt.rngstate import RngState
from tracefmt.version import __version__
from tracefmt.writer import TraceWriter, rank_file_path

__all__ = [
    "DType",
    "Event",
    "Graph",
    "GraphBuilder",
    "Histogram",
    "LightKind",
    "LightRow",
    "LightStep",
    "LightStepRecord",
    "LightStepSummary",
    "MissingFilterError",
    "ModuleInfo",
    "ModuleTable",
    "OpNode",
    "Phase",
    "ProcessGroupInfo",
    "Provenance",
    "RngState",
    "Role",
    "RunManifest",
    "StatFlags",
    "Step",
    "StepFlags",
    "StepRecord",
    "StepSummary",
    "TensorMeta",
    "TensorRecord",
    "TensorStats",
    "Trace",
    "TraceCorruptError",
    "TraceError",
    "TraceFormatError",
    "TraceNotFoundError",
    "TraceWriter",
    "UnsupportedVersionError",
    "WriterClosedError",
    "__version__",
    "empty_op_stats",
    "empty_stats",
    "group_id",
    "open",
    "rank_file_path",
    "read_manifest",
    "write_manifest",
]
