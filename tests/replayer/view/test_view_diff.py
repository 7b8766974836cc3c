"""``replayer view --diff A B``: side B's step with divergent ops marked, checked without a browser."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

import tracefmt
from replayer.cli import main
from replayer.diff.core import divergent_ops
from replayer.diff.results import StepDiff
from replayer.diff.runs import diff_sides
from replayer.view.netron import (
    DIVERGED_KEY,
    DIVERGED_PREFIX,
    divergence_notes,
    mark_divergent,
    prepare,
    prepare_diff,
)
from tests.replayer.diff.diff_synth import write_chain

N_OPS = 8
NOISE_AT = 4


def _props(node: onnx.NodeProto) -> dict[str, str]:
    return {p.key: p.value for p in node.metadata_props}


def _all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    out: list[onnx.NodeProto] = []
    for node in graph.node:
        out.append(node)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                out.extend(_all_nodes(attr.g))
    return out


def _op_nodes(model: onnx.ModelProto) -> dict[int, list[onnx.NodeProto]]:
    by_op: dict[int, list[onnx.NodeProto]] = {}
    for node in _all_nodes(model.graph):
        op = _props(node).get("tracefmt.op")
        if op is not None:
            by_op.setdefault(int(op), []).append(node)
    return by_op


def _is_marked(node: onnx.NodeProto) -> bool:
    marked = node.name.startswith(DIVERGED_PREFIX)
    assert marked == (_props(node).get(DIVERGED_KEY) == "true"), node.name
    assert marked == node.doc_string.startswith("DIVERGED: "), node.name
    return marked


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    a = write_chain(tmp_path / "a", N_OPS, values=True)
    b = write_chain(tmp_path / "b", N_OPS, values=True, noise_at=NOISE_AT)
    return a, b


def _model(data: bytes) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.ParseFromString(data)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_flat_marks_exactly_divergent_ops(runs: tuple[Path, Path]) -> None:
    a, b = runs
    result = diff_sides(f"{a}:0", f"{b}:0")
    assert isinstance(result, StepDiff)
    ops = divergent_ops(result, "b")
    # op NOISE_AT and every op after it (the chain, then the mean) diverge
    assert ops == set(range(NOISE_AT, N_OPS + 1))
    notes = divergence_notes(result, "b")
    assert set(notes) == ops
    assert "max_abs" in notes[NOISE_AT]
    with tracefmt.open(b) as trace:
        data, _, depth, _, message = prepare(trace, 0, auto_depth=False, diverged=notes)
    assert depth is None
    model = _model(data)
    by_op = _op_nodes(model)
    assert set(by_op) == set(range(N_OPS + 1))
    for op, nodes in by_op.items():
        for node in nodes:
            assert _is_marked(node) == (op in ops)
            if op in ops:
                assert _props(node)["tracefmt.divergence"] == notes[op]
    assert f"Marked {len(ops)} divergent ops" in message


def test_folded_marks_modules_holding_divergent_ops(runs: tuple[Path, Path]) -> None:
    a, b = runs
    view = prepare_diff(str(a), str(b))  # whole runs: step 0 is the first that differs
    assert view.step == 0
    assert view.path == str(b)
    assert set(view.notes) == set(range(NOISE_AT, N_OPS + 1))
    assert view.origin is not None
    with tracefmt.open(b) as trace:
        data, _, depth, _, _ = prepare(trace, 0, depth=1, auto_depth=False, diverged=view.notes)
    assert depth == 1
    model = _model(data)
    for op, nodes in _op_nodes(model).items():
        for node in nodes:
            assert _is_marked(node) == (op in view.notes)
    modules = {
        n.name.removeprefix(DIVERGED_PREFIX): _is_marked(n)
        for n in model.graph.node
        if n.op_type == "Module"
    }
    # layers.k holds ops 2k and 2k+1: the ones from op NOISE_AT on diverge
    assert modules == {f"layers.{k}": 2 * k + 1 >= NOISE_AT for k in range(N_OPS // 2)}
    marked_modules = [n for n in model.graph.node if n.op_type == "Module" and _is_marked(n)]
    assert marked_modules
    for node in model.graph.node:
        if node.op_type != "Module":
            continue
        inside = {
            int(_props(n)["tracefmt.op"])
            for attr in node.attribute
            if attr.type == onnx.AttributeProto.GRAPH
            for n in _all_nodes(attr.g)
            if "tracefmt.op" in _props(n)
        }
        assert _is_marked(node) == bool(inside & set(view.notes))


def test_mark_divergent_returns_ops_found(runs: tuple[Path, Path]) -> None:
    _, b = runs
    with tracefmt.open(b) as trace:
        data, _, _, _, _ = prepare(trace, 0, auto_depth=False)
    model = _model(data)
    assert not any(_is_marked(n) for n in _all_nodes(model.graph))
    assert mark_divergent(model, {1, 999}) == {1}
    onnx.checker.check_model(model, full_check=True)
    assert [int(_props(n)["tracefmt.op"]) for n in model.graph.node if _is_marked(n)] == [1]


def test_identical_runs_mark_nothing(tmp_path: Path) -> None:
    a = write_chain(tmp_path / "a", N_OPS)
    b = write_chain(tmp_path / "b", N_OPS)
    view = prepare_diff(str(a), str(b))
    assert view.notes == {}
    assert view.origin is None
    assert view.step == 0


@pytest.mark.parametrize("side", ["", "   ", "no/such/trace:3"])
def test_cli_diff_bad_side_exits_2(runs: tuple[Path, Path], side: str) -> None:
    a, _ = runs
    result = CliRunner().invoke(main, ["view", "--diff", str(a), side])
    assert result.exit_code == 2, result.output
    result = CliRunner().invoke(main, ["view", "--diff", side, str(a)])
    assert result.exit_code == 2, result.output


def test_cli_diff_rejects_trace_with_diff(runs: tuple[Path, Path]) -> None:
    a, b = runs
    result = CliRunner().invoke(main, ["view", str(a), "--diff", str(a), str(b)])
    assert result.exit_code == 2
    assert "--diff" in result.output


def test_cli_view_without_trace_exits_2() -> None:
    result = CliRunner().invoke(main, ["view"])
    assert result.exit_code == 2
