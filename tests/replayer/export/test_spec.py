"""One test per requirement of ``spec/custom-ops.md`` (``test_rx_<area>_<nnn>``), and a test that
the ids in the spec and the tested ids are the same set."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import onnx
import pytest
from onnx import helper

import replayer
import tracefmt
from replayer.export.custom import ATEN_DOMAIN, MODULE_DOMAIN, decode_custom
from tracefmt import DType, GraphBuilder, Phase, Role, StepRecord, TraceWriter
from tracefmt.records import empty_stats

SPEC = Path(__file__).resolve().parents[3] / "spec" / "custom-ops.md"


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


@pytest.fixture
def odd_trace(tmp_path: Path) -> Path:
    """One unknown op with a tensor-list input, reserved and awkward argument names, and a second
    op returning two tensors."""
    g = GraphBuilder()
    a = g.add_tensor(DType.FLOAT32, (2, 3), role=Role.INPUT, name="a")
    b = g.add_tensor(DType.FLOAT32, (2, 3), role=Role.INPUT, name="b")
    out = g.add_tensor(DType.FLOAT32, (2, 3), producer=0)
    g.add_op(
        "aten::weird-op.over load",
        phase=Phase.BACKWARD,
        module="m",
        inputs=[(a, 0, 0), (b, 0, 1)],
        outputs=[out],
        attrs={
            "flag": True,
            "nothing": None,
            "floats": [1.5, 2.0],
            "ints": [1, 2],
            "mixed": [1, 2.5],
            "aten": "mine",
            "big": math.inf,
            "name": "x",
            "marker": {"$float": "inf"},
        },
    )
    x = g.add_tensor(DType.FLOAT32, (2, 3), producer=1, producer_slot=0)
    y = g.add_tensor(DType.FLOAT32, (3,), producer=1, producer_slot=1)
    g.add_op("aten::two_outputs.default", phase=Phase.BACKWARD, module="", inputs=[out], outputs=[x, y])
    graph = g.finish()
    path = tmp_path / "odd.tft.h5"
    with TraceWriter(path) as w:
        w.write_step(StepRecord(step=0, graph=graph, stats=empty_stats(graph.num_tensors)))
        w.flush()
    return path


def test_rx_model_001(small_trace: Path) -> None:
    with tracefmt.open(small_trace) as trace:
        flat, _ = replayer.export_step(trace, 1)
        folded, _ = replayer.export_step(trace, 1, depth=0)
    for model in (flat, folded):
        assert model.ir_version == 10
        onnx.checker.check_model(model, full_check=True)
    assert {(o.domain, o.version) for o in flat.opset_import} == {("", 21), (ATEN_DOMAIN, 1)}
    assert {(o.domain, o.version) for o in folded.opset_import} == {
        ("", 21),
        (ATEN_DOMAIN, 1),
        (MODULE_DOMAIN, 1),
    }


def test_rx_model_002(small_trace: Path) -> None:
    with tracefmt.open(small_trace) as trace:
        model, _ = replayer.export_step(trace, 3, phase="forward")
    props = {p.key: p.value for p in model.metadata_props}
    assert set(props) >= {
        "tracefmt.step",
        "tracefmt.rank",
        "tracefmt.run_id",
        "tracefmt.phase",
        "tracefmt.provenance",
    }
    assert props["tracefmt.phase"] == "forward"


def test_rx_value_001(small_trace: Path) -> None:
    with tracefmt.open(small_trace) as trace:
        model, _ = replayer.export_step(trace, 0, phase="optimizer", with_values=False)
    inputs = {i.name for i in model.graph.input}
    outputs = {o.name for o in model.graph.output}
    assert {"layers.0.weight", "layers.0.weight.grad"} <= inputs
    assert {"layers.0.weight@v1", "layers.1.weight@v1"} == outputs
    with tracefmt.open(small_trace) as trace:
        forward, _ = replayer.export_step(trace, 0, phase="forward")
    assert re.fullmatch(r"t\d+", forward.graph.node[0].output[0])


def test_rx_value_002(small_trace: Path) -> None:
    with tracefmt.open(small_trace) as trace:
        model, _ = replayer.export_step(trace, 0)
    typed = {v.name: v for v in [*model.graph.value_info, *model.graph.output]}
    made = {o for n in model.graph.node for o in n.output if "/" not in o}  # not mappers' own
    assert made
    for name in made:
        assert name in typed
        assert typed[name].type.tensor_type.HasField("shape")


def test_rx_node_001(small_trace: Path) -> None:
    with tracefmt.open(small_trace) as trace:
        model, _ = replayer.export_step(trace, 0)
    for node in model.graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        assert set(props) == {"tracefmt.op", "tracefmt.module", "tracefmt.phase"}
        short = node.name.split("#")[0]
        prefix = f"{props['tracefmt.module']}/" if props["tracefmt.module"] else ""
        assert re.fullmatch(re.escape(prefix) + r"[A-Za-z0-9_]+_" + props["tracefmt.op"], short)


def test_rx_aten_001(odd_trace: Path) -> None:
    with tracefmt.open(odd_trace) as trace:
        model, _ = replayer.export_step(trace, 0)
    node = model.graph.node[0]
    assert (node.domain, node.op_type) == (ATEN_DOMAIN, "weird_op:over_load")
    assert model.graph.node[1].op_type == "two_outputs"
    assert _attrs(node)["aten"] == b"aten::weird-op.over load"


def test_rx_aten_002(odd_trace: Path) -> None:
    with tracefmt.open(odd_trace) as trace:
        model, _ = replayer.export_step(trace, 0)
    node = model.graph.node[0]
    assert list(node.input) == ["a", "b"]
    assert list(_attrs(node)["input_args"]) == [0, 0, 0, 1]  # type: ignore[call-overload]


def test_rx_aten_003(odd_trace: Path) -> None:
    with tracefmt.open(odd_trace) as trace:
        model, _ = replayer.export_step(trace, 0)
    first, second = model.graph.node
    assert list(_attrs(first)["output_slots"]) == [0]  # type: ignore[call-overload]
    assert list(second.output) == ["t3", "t4"]
    assert list(_attrs(second)["output_slots"]) == [0, 1]  # type: ignore[call-overload]


def test_rx_aten_004(odd_trace: Path) -> None:
    with tracefmt.open(odd_trace) as trace:
        model, _ = replayer.export_step(trace, 0)
    node = model.graph.node[0]
    attrs = _attrs(node)
    assert attrs["floats"] == [1.5, 2.0]
    assert attrs["ints"] == [1, 2]
    assert attrs["name"] == b"x"
    assert attrs["arg_aten"] == b"mine"
    assert sorted(attrs["json_attrs"]) == [b"flag", b"marker", b"mixed", b"nothing"]  # type: ignore
    assert attrs["big"] == math.inf
    assert attrs["mixed"] == b"[1,2.5]"
    name, recorded, pairs, slots = decode_custom(node)
    assert name == "aten::weird-op.over load"
    assert recorded == {
        "flag": True,
        "nothing": None,
        "floats": [1.5, 2.0],
        "ints": [1, 2],
        "mixed": [1, 2.5],
        "aten": "mine",
        "big": math.inf,
        "name": "x",
        "marker": {"$float": "inf"},
    }  # data shaped like a marker stays data
    assert pairs == [(0, 0), (0, 1)]
    assert slots == [0]


def test_rx_mod_001(small_trace: Path) -> None:
    with tracefmt.open(small_trace) as trace:
        model, _ = replayer.export_step(trace, 0, depth=0)
    modules = [n for n in model.graph.node if n.domain == MODULE_DOMAIN]
    assert [n.name for n in modules] == ["layers"]
    for node in modules:
        attrs = _attrs(node)
        assert node.op_type == "Module"
        assert isinstance(attrs["body"], onnx.GraphProto)
        assert attrs["module"] == b"layers"
        assert isinstance(attrs["ops"], int)
        assert attrs["ops"] > 0
    assert _attrs(modules[0])["phase"] == b"forward"
    with tracefmt.open(small_trace) as trace:
        model, _ = replayer.export_step(trace, 0, phase="backward", depth=0)
    (node,) = model.graph.node
    assert (node.name, _attrs(node)["phase"]) == ("layers", b"backward")


def test_rx_mod_002(small_trace: Path) -> None:
    with tracefmt.open(small_trace) as trace:
        model, _ = replayer.export_step(trace, 0, depth=0, with_values=False)
    node = model.graph.node[0]
    body = _attrs(node)["body"]
    assert isinstance(body, onnx.GraphProto)
    assert [i.name for i in body.input] == list(node.input)
    assert [o.name for o in body.output] == list(node.output)
    read_outside = {i for n in model.graph.node[1:] for i in n.input}
    assert set(node.output) <= read_outside | {o.name for o in model.graph.output}


def test_rx_mod_003(small_trace: Path) -> None:
    def leaves(nodes: list[onnx.NodeProto]) -> list[str]:
        out: list[str] = []
        for n in nodes:
            if n.domain == MODULE_DOMAIN:
                body = _attrs(n)["body"]
                assert isinstance(body, onnx.GraphProto)
                out += leaves(list(body.node))
            else:
                out.append(n.name)
        return out

    with tracefmt.open(small_trace) as trace:
        flat, _ = replayer.export_step(trace, 0)
        for depth in (0, 1, 2):
            folded, _ = replayer.export_step(trace, 0, depth=depth)
            assert leaves(list(folded.graph.node)) == [n.name for n in flat.graph.node]


def test_spec_ids_are_the_tested_ids() -> None:
    spec = set(re.findall(r"\*\*(RX-[A-Z]+-\d{3})\.\*\*", SPEC.read_text()))
    tested = {
        name.removeprefix("test_").upper().replace("_", "-")
        for name in dir(sys.modules[__name__])
        if re.fullmatch(r"test_rx_[a-z]+_\d{3}", name)
    }
    assert spec
    assert spec == tested
