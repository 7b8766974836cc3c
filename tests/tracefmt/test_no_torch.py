"""tracefmt needs neither torch nor onnx: import every module, write and read a trace without them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import importlib, pkgutil, sys
sys.modules["torch"] = None   # any "import torch" now raises ImportError
sys.modules["onnx"] = None

import numpy as np
import ml_dtypes
import tracefmt
from tracefmt import DType, GraphBuilder, Phase, Role, StepRecord, TraceWriter

for info in pkgutil.walk_packages(tracefmt.__path__, "tracefmt."):
    importlib.import_module(info.name)

g = GraphBuilder()
x = g.add_tensor(DType.BFLOAT16, (2, 3), role=Role.PARAMETER, name="w")
y = g.add_tensor(DType.FLOAT32, (2, 3), producer=0)
g.add_op("aten::_to_copy.default", phase=Phase.FORWARD, module="m", inputs=[x], outputs=[y])
w_values = np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16)
path = sys.argv[1]
with TraceWriter(path) as w:
    w.write_step(StepRecord(step=0, graph=g.finish(), values={0: w_values}))
with tracefmt.open(path) as trace:
    step = trace.step(0)
    assert step.ops[0].name == "aten::_to_copy.default"
    assert step.tensors[0].values().tobytes() == w_values.tobytes()
    assert trace.provenance.torch is None
assert sys.modules["torch"] is None and sys.modules["onnx"] is None
print("ok")
"""


def test_tracefmt_works_without_torch_or_onnx(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "t.tft.h5")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")
