"""Export of synthetic steps: every phase gives a model that passes the full ONNX check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import replayer
import tracefmt
from replayer import ReplayError
from replayer.export.custom import ATEN_DOMAIN, decode_custom


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


def test_unmapped_op_becomes_custom_node_with_its_recorded_arguments(small_trace: Path) -> None:
    # The synthetic backward mm multiplies float32 by bfloat16: no standard ONNX MatMul does.
    with tracefmt.open(small_trace) as trace:
        model, stats = replayer.export_step(trace, 0, phase="backward")
    node = model.graph.node[0]
    assert node.domain == ATEN_DOMAIN
    assert node.op_type == "mm"
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["aten"] == b"aten::mm.default"
    assert attrs["note"] == b"synthetic"
    assert list(attrs["input_args"]) == [0, -1, 1, -1]
    name, recorded, pairs, slots = decode_custom(node)
    assert (name, recorded, pairs, slots) == (
        "aten::mm.default",
        {"note": "synthetic"},
        [(0, -1), (1, -1)],
        [0],
    )
    assert stats.custom == {"aten::mm.default": 2}
    assert "custom node" in node.doc_string


def test_nodes_carry_module_paths_shapes_stats_and_timing(small_trace: Path) -> None:
    with tracefmt.open(small_trace) as trace:
        model, _ = replayer.export_step(trace, 0, phase="forward", module="layers.0.act")
    assert [n.op_type for n in model.graph.node] == ["Relu"]
    node = model.graph.node[0]
    assert node.name == "layers.0.act/relu_1"
    assert "host time" in node.doc_string
    assert "out t" in node.doc_string
    props = {p.key: p.value for p in node.metadata_props}
    assert props == {"tracefmt.op": "1", "tracefmt.module": "layers.0.act", "tracefmt.phase": "forward"}
    (out,) = model.graph.output
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [8, 16]


def test_empty_selection_is_a_clear_error(small_trace: Path) -> None:
    with tracefmt.open(small_trace) as trace, pytest.raises(ReplayError, match="no backward ops"):
        replayer.export_step(trace, 0, phase="backward", module="nothing.here")


def test_recorded_values_become_initializers_or_inputs(small_trace: Path) -> None:
    with tracefmt.open(small_trace) as trace:
        with_values, _ = replayer.export_step(trace, 0, phase="forward")
        without, _ = replayer.export_step(trace, 0, phase="forward", with_values=False)
        weight = next(t for t in trace.step(0).tensors if t.name == "layers.0.weight")
        expected = weight.values()
    inits = {i.name: i for i in with_values.graph.initializer}
    assert np.array_equal(numpy_helper.to_array(inits["layers.0.weight"]), expected)
    assert "layers.0.weight" in {i.name for i in without.graph.input}
    assert not any(i.name == "layers.0.weight" for i in without.graph.initializer)


def test_large_values_go_to_external_data(small_trace: Path, tmp_path: Path) -> None:
    data = tmp_path / "step.onnx.data"
    with tracefmt.open(small_trace) as trace:
        model, stats = replayer.export_step(trace, 0, external_data=data, external_threshold=64)
        weight = next(t for t in trace.step(0).tensors if t.name == "layers.0.weight").values()
    assert stats.external == str(data)
    assert data.stat().st_size > 0
    path = tmp_path / "step.onnx"
    replayer.save_model(model, path)
    onnx.checker.check_model(str(path), full_check=True)
    loaded = onnx.load(str(path))
    init = next(i for i in loaded.graph.initializer if i.name == "layers.0.weight")
    assert np.array_equal(numpy_helper.to_array(init), weight)


def test_replayer_imports_and_runs_without_torch(small_trace: Path) -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import tracefmt, replayer, replayer.cli, replayer.view.netron\n"
        f"t = tracefmt.open({str(small_trace)!r})\n"
        "m, _ = replayer.export_step(t, 1, depth=0)\n"
        "r = replayer.check_step(t, 1, phase='forward')\n"
        "assert 'torch' not in [k for k, v in sys.modules.items() if v is not None]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
