"""Export of synthetic steps: every phase gives a model that passes the full ONNX check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest

import replayer
import tracefmt
from replayer import ReplayError


@pytest.mark.parametrize("phase", ["forward", "backward", "optimizer", "all"])
def test_every_phase_passes_full_check(small_trace: Path, phase: str) -> None:
    with tracefmt.open(small_trace) as trace:
        model, stats = replayer.export_step(trace, 2, phase=phase)
    onnx.checker.check_model(model, full_check=True)
    assert stats.ops == stats.standard + sum(stats.custom.values())
    assert len(model.graph.node) >= stats.ops
    props = {p.key: p.value for p in model.metadata_props}
    assert props["tracefmt.step"] == "2"
    assert "h5py" in props["tracefmt.provenance"]


def test_unmapped_op_becomes_custom_node_with_attrs(small_trace: Path) -> None:
    with tracefmt.open(small_trace) as trace:
        model, stats = replayer.export_step(trace, 0, phase="optimizer")
    node = model.graph.node[0]
    assert node.domain == "ai.tracefmt.aten"
    assert node.op_type == "add_.Tensor"
    assert {a.name for a in node.attribute} >= {"alpha", "input_args"}
    assert stats.custom == {"aten::add_.Tensor": 2}


def test_relu_maps_to_standard_onnx(small_trace: Path) -> None:
    with tracefmt.open(small_trace) as trace:
        model, _ = replayer.export_step(trace, 0, phase="forward", module="layers.0.act")
    assert [n.op_type for n in model.graph.node] == ["Relu"]
    assert [n.name for n in model.graph.node] == ["layers.0.act/relu_1"]


def test_empty_selection_is_a_clear_error(small_trace: Path) -> None:
    with tracefmt.open(small_trace) as trace, pytest.raises(ReplayError, match="no backward ops"):
        replayer.export_step(trace, 0, phase="backward", module="nothing.here")


def test_replayer_imports_without_torch(small_trace: Path) -> None:
    code = ("import sys; sys.modules['torch'] = None\n"
            "import tracefmt, replayer\n"
            f"m, _ = replayer.export_step(tracefmt.open({str(small_trace)!r}), 1)\n"
            "assert 'torch' not in [k for k, v in sys.modules.items() if v is not None]\n")
    subprocess.run([sys.executable, "-c", code], check=True)
