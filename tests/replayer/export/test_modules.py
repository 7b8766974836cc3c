"""``--depth``: modules below a depth fold into ``ai.tracefmt.Module`` nodes with GRAPH bodies."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
from onnx import helper

import replayer
import tracefmt
from replayer.export.custom import MODULE_DOMAIN
from replayer.export.mapping import map_step, select
from replayer.export.modules import top_level_count


def _body(node: onnx.NodeProto) -> onnx.GraphProto:
    body: onnx.GraphProto = next(
        helper.get_attribute_value(a) for a in node.attribute if a.name == "body"
    )
    return body


def _leaves(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    out = []
    for node in nodes:
        if node.domain == MODULE_DOMAIN:
            out.extend(_leaves(list(_body(node).node)))
        else:
            out.append(node)
    return out


def test_depth_folds_nested_modules(small_trace: Path) -> None:
    with tracefmt.open(small_trace) as trace:
        flat, _ = replayer.export_step(trace, 0, phase="forward")
        model, stats = replayer.export_step(trace, 0, phase="forward", depth=0)
    onnx.checker.check_model(model, full_check=True)
    top = list(model.graph.node)
    assert [(n.domain, n.name) for n in top] == [(MODULE_DOMAIN, "layers"), ("", "mean_4")]
    layers = _body(top[0])
    assert [n.name for n in layers.node] == ["layers.0", "layers.1"]
    inner = _body(layers.node[0])
    assert [n.name for n in inner.node] == ["layers.0/mm_0", "layers.0.act/relu_1"]
    assert stats.modules == 3
    attrs = {a.name: helper.get_attribute_value(a) for a in top[0].attribute}
    assert attrs["module"] == b"layers"
    assert attrs["ops"] == 4
    # Nothing is lost: the leaves are the flat export's nodes, in order.
    assert [n.name for n in _leaves(top)] == [n.name for n in flat.graph.node]
    # The module's outputs are what outside reads; its inputs what it reads from outside, less
    # the initializers only it reads (they move into its body).
    assert list(top[0].output) == [top[1].input[0]]
    assert list(top[0].input) == []
    with tracefmt.open(small_trace) as trace:
        bare, _ = replayer.export_step(trace, 0, phase="forward", depth=0, with_values=False)
    assert list(bare.graph.node[0].input) == ["input", "layers.0.weight", "layers.1.weight"]


def test_parameters_move_into_the_module_that_reads_them(small_trace: Path) -> None:
    with tracefmt.open(small_trace) as trace:
        model, _ = replayer.export_step(trace, 0, phase="forward", depth=0)
    assert "layers.0.weight" not in {i.name for i in model.graph.initializer}
    inner = _body(_body(model.graph.node[0]).node[0])
    assert "layers.0.weight" in {i.name for i in inner.initializer}


def test_top_level_count_matches_the_built_model(small_trace: Path) -> None:
    with tracefmt.open(small_trace) as trace:
        step = trace.step(0)
        mapped = map_step(step, select(step, "all"))
        for depth in (0, 1, 2):
            model, _ = replayer.export_step(trace, 0, depth=depth)
            assert top_level_count(mapped.units, step.tensors, depth) == len(model.graph.node)


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_gpt_depths_keep_every_node(record_trace: Callable[[str], Path], depth: int) -> None:
    with tracefmt.open(record_trace("gpt")) as trace:
        flat, _ = replayer.export_step(trace, 1, phase="all")
        model, stats = replayer.export_step(trace, 1, phase="all", depth=depth)
    onnx.checker.check_model(model, full_check=True)
    assert Counter(n.name for n in _leaves(list(model.graph.node))) == Counter(
        n.name for n in flat.graph.node
    )
    assert stats.modules > 0
    names = {n.name.split("#")[0] for n in model.graph.node if n.domain == MODULE_DOMAIN}
    modules = {n for n in names if not n.startswith("optimizer")}
    assert modules
    assert all(name.count(".") == depth for name in modules)
    # Optimizer ops (outside any module) fold by the parameter they update.
    if depth == 0:
        assert "optimizer" in names
    elif depth == 1:
        assert "optimizer.h.0.ln_1.weight" in names
