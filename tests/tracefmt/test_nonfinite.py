"""Where NaN and Inf come from (format 1.4, spec section 6.5): created, by design, propagated,
state; the same classification from the writer's record, the reader's step and the file's rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import tracefmt
from tests.synth import attention_step
from tracefmt import DType, GraphBuilder, Phase, Role, StepRecord, TraceWriter
from tracefmt import _layout as L
from tracefmt.cli import main
from tracefmt.light import LightFlags, LightKind, empty_light_rows
from tracefmt.nonfinite import (
    Counts,
    GraphFlow,
    NonfiniteReport,
    Origin,
    classify,
    classify_record,
    classify_step,
    constant_kinds,
    light_report,
)
from tracefmt.records import empty_stats
from tracefmt.validate import validate


def _origins(report: NonfiniteReport) -> list[tuple[int, str]]:
    return [(o.op, o.origin.value) for o in report.ops]


def _write_read(tmp_path: Path, records: list[StepRecord]) -> list[tracefmt.Step]:
    path = tmp_path / "t.tft.h5"
    with TraceWriter(path, fsync=False) as w:
        for r in records:
            w.write_step(r)
    assert validate(path) == []
    with tracefmt.open(path) as trace:
        return list(trace.iter_steps())


def test_an_attention_mask_is_by_design_and_flags_nothing(tmp_path: Path) -> None:
    record = attention_step(0, np.random.default_rng(0))
    report = classify_record(record)
    # masked_fill(-inf) by design, the add that puts it in the scores propagates it
    assert _origins(report) == [(1, "by_design"), (3, "propagated")]
    assert report.first_created is None
    assert not report.state
    assert report.flags == 0
    (step,) = _write_read(tmp_path, [record])
    assert step.has_inf  # the raw flag still says there is Inf ...
    assert not step.nonfinite_created  # ... but nothing counts
    assert not step.nonfinite_state


def test_a_fully_masked_row_makes_the_softmax_create_nan(tmp_path: Path) -> None:
    record = attention_step(0, np.random.default_rng(0), masked_row=True)
    report = classify_record(record)
    assert _origins(report) == [(1, "by_design"), (3, "propagated"), (4, "created"), (5, "propagated")]
    first = report.first_created
    assert first is not None
    assert (first.op, first.nan, first.inf, first.outputs) == (4, True, False, (7,))
    assert report.loss_nonfinite  # the mean of a NaN row is NaN
    assert report.flags == L.STEP_NONFINITE_CREATED | L.STEP_NONFINITE_STATE
    assert report.propagated[-1].sources == (7,)
    (step,) = _write_read(tmp_path, [record])
    assert step.nonfinite_created
    assert step.nonfinite_state


def test_a_nan_parameter_is_state_and_everything_downstream_propagated() -> None:
    record = attention_step(0, np.random.default_rng(0), nan_weight=True)
    report = classify_record(record)
    assert report.first_created is None
    assert report.state_tensors == (1,)  # attn.weight
    assert report.entered == (1,)  # it entered the step non-finite
    assert {o.origin for o in report.ops if o.op != 1} == {Origin.PROPAGATED}
    assert report.flags == L.STEP_NONFINITE_STATE


def test_an_unmeasured_view_is_looked_through() -> None:
    """A pure view's output has no counts (5.7): it holds what its input holds."""
    plain = classify_record(attention_step(0, np.random.default_rng(0), view=True))
    assert _origins(plain) == [(1, "by_design"), (4, "propagated")]
    masked = classify_record(attention_step(0, np.random.default_rng(0), view=True, masked_row=True))
    first = masked.first_created
    assert first is not None
    assert first.op == 5  # the softmax, not the add behind the view


@pytest.mark.parametrize(
    "kw", [{}, {"masked_row": True}, {"nan_weight": True}, {"view": True, "masked_row": True}]
)
def test_reader_and_writer_classify_alike(tmp_path: Path, kw: dict[str, bool]) -> None:
    record = attention_step(3, np.random.default_rng(1), **kw)
    (step,) = _write_read(tmp_path, [record])
    assert classify_step(step) == classify_record(record)


def _demo_graph() -> GraphBuilder:
    """The shape of the recorded GPT demo's mask: scalar_tensor(-inf), where, add, softmax."""
    g = GraphBuilder()
    scores = g.add_tensor(DType.FLOAT32, (2, 2), role=Role.INPUT, name="scores")
    cond = g.add_tensor(DType.BOOL, (2, 2), role=Role.INPUT, name="causal")
    zero = g.add_tensor(DType.FLOAT32, (), role=Role.CONSTANT)
    neg = g.add_tensor(DType.FLOAT32, (), producer=0)
    g.add_op("aten::scalar_tensor.default", phase=Phase.FORWARD, outputs=[neg], attrs={"s": -np.inf})
    mask = g.add_tensor(DType.FLOAT32, (2, 2), producer=1)
    g.add_op("aten::where.self", phase=Phase.FORWARD, inputs=[cond, zero, neg], outputs=[mask])
    added = g.add_tensor(DType.FLOAT32, (2, 2), producer=2)
    g.add_op("aten::add.Tensor", phase=Phase.FORWARD, inputs=[scores, mask], outputs=[added])
    p = g.add_tensor(DType.FLOAT32, (2, 2), producer=3)
    g.add_op("aten::_softmax.default", phase=Phase.FORWARD, inputs=[added], outputs=[p])
    return g


def _counted(rows: dict[int, tuple[int, int]], n: int) -> np.ndarray:
    stats = empty_stats(n)
    stats["flags"] = L.STAT_COUNTS
    for t, (nan, inf) in rows.items():
        stats[t]["nan"], stats[t]["inf"] = nan, inf
    return stats


def test_the_recorded_demo_mask_is_by_design() -> None:
    graph = _demo_graph().finish()
    stats = _counted({3: (0, 1), 4: (0, 2), 5: (0, 2)}, graph.num_tensors)
    report = classify_record(StepRecord(0, graph, stats=stats, scalars={"loss": 2.0}))
    assert _origins(report) == [(0, "by_design"), (1, "propagated"), (2, "propagated")]
    assert report.flags == 0


def test_nan_and_inf_are_judged_apart() -> None:
    """A constant -inf explains Inf, not NaN: NaN next to it is created (0 * inf, inf - inf)."""
    g = GraphBuilder()
    x = g.add_tensor(DType.FLOAT32, (4,), role=Role.INPUT, name="x")
    y = g.add_tensor(DType.FLOAT32, (4,), producer=0)
    g.add_op("aten::mul.Scalar", phase=Phase.FORWARD, inputs=[x], outputs=[y], attrs={"other": np.inf})
    graph = g.finish()
    inf_only = classify_record(StepRecord(0, graph, stats=_counted({1: (0, 2)}, 2)))
    assert _origins(inf_only) == [(0, "by_design")]
    with_nan = classify_record(StepRecord(0, graph, stats=_counted({1: (1, 2)}, 2)))
    assert _origins(with_nan) == [(0, "created")]
    nan_const = GraphBuilder()
    t = nan_const.add_tensor(DType.FLOAT32, (4,), producer=0)
    nan_const.add_op(
        "aten::full.default", phase=Phase.FORWARD, outputs=[t], attrs={"fill_value": np.nan}
    )
    report = classify_record(StepRecord(0, nan_const.finish(), stats=_counted({0: (4, 0)}, 1)))
    assert _origins(report) == [(0, "by_design")]


def test_state_roles_and_the_loss_always_count() -> None:
    g = GraphBuilder()
    for role in (Role.PARAMETER, Role.GRADIENT, Role.OPTIMIZER_STATE, Role.BUFFER, Role.INPUT):
        g.add_tensor(DType.FLOAT32, (2,), role=role, name=role.label)
    graph = g.finish()
    for t, state in enumerate((True, True, True, False, False)):
        report = classify_record(StepRecord(0, graph, stats=_counted({t: (1, 0)}, 5)))
        assert report.state is state, graph.tensors[t].role
        assert report.entered == (t,)
    finite = StepRecord(0, graph, stats=_counted({}, 5), scalars={"loss": float("inf")})
    assert classify_record(finite).flags == L.STEP_NONFINITE_STATE
    assert classify_record(StepRecord(0, graph, scalars={"loss": float("nan")})).state


def test_constants_are_found_anywhere_in_the_attributes() -> None:
    assert constant_kinds({"value": float("-inf")}) == (False, True)
    assert constant_kinds({"a": [1.0, {"b": {"imag": float("nan"), "real": 0.0}}]}) == (True, False)
    assert constant_kinds({"value": 1.0, "name": "inf"}) == (False, False)


def test_hostile_producers_terminate() -> None:
    """A producer cycle or an index out of range (a hostile file) gives an answer, not a hang."""
    n = 4
    counted = np.array([False, False, True, True])
    counts = Counts(counted, np.array([False, False, True, False]), np.zeros(n, bool))
    # tensor 0 made by op 0 from tensor 1, tensor 1 by op 1 from tensor 0 (a cycle); op 2 reads
    # tensor 0 and outputs tensor 2 (NaN); tensor 3 names an op that does not exist
    flow = GraphFlow([[1], [0], [0, 99]], [0, 1, 2, 7], np.zeros(n, np.uint8))
    report = classify(counts, lambda: flow, lambda op: (False, False), {})
    assert _origins(report) == [(2, "created")]


def _light_rows(kinds: list[LightKind], nan: list[int], inputs_bad: list[bool]) -> np.ndarray:
    rows = empty_light_rows(len(kinds))
    rows["kind"], rows["nan"], rows["numel"] = kinds, nan, 8
    rows["flags"] = [
        LightFlags.COUNTS | (LightFlags.INPUTS_NONFINITE if bad else 0) for bad in inputs_bad
    ]
    return rows


def test_light_rows_are_classified_by_kind() -> None:
    out, grad, upd = LightKind.OUTPUT, LightKind.GRADIENT, LightKind.UPDATE
    created = light_report(_light_rows([out, out], [0, 2], [False, False]), {"loss": 1.0})
    assert created.created == (1,)
    assert created.flags == L.STEP_HAS_NAN | L.STEP_NONFINITE_CREATED
    propagated = light_report(_light_rows([out, grad], [2, 0], [True, False]), {})
    assert propagated.flags == L.STEP_HAS_NAN
    state = light_report(_light_rows([out, upd], [0, 1], [False, False]), {})
    assert state.state_rows == (1,)
    assert state.flags == L.STEP_HAS_NAN | L.STEP_NONFINITE_STATE
    loss = light_report(_light_rows([], [], []), {"loss": float("nan")})
    assert loss.flags == L.STEP_NONFINITE_STATE


def test_ls_shows_what_counts(tmp_path: Path) -> None:
    """``tracefmt ls``: the mask's Inf flags nothing, a created NaN and a NaN loss do; ``--json``
    keeps the raw flags."""
    rng = np.random.default_rng(0)
    path = tmp_path / "t.tft.h5"
    with TraceWriter(path, fsync=False) as w:
        w.write_step(attention_step(0, rng))
        w.write_step(attention_step(1, rng, masked_row=True))
    result = CliRunner().invoke(main, ["ls", str(path)])
    assert result.exit_code == 0, result.output
    lines = {line.split()[1]: line for line in result.output.splitlines() if line[:3] == "│  "}
    assert "created" not in lines["0"]
    assert "state" not in lines["0"]
    assert "created state" in lines["1"]
    assert "Inf" not in result.output
    rows = json.loads(CliRunner().invoke(main, ["ls", str(path), "--json"]).output)
    assert [(r["has_inf"], r["nonfinite_created"], r["nonfinite_state"]) for r in rows] == [
        (True, False, False),
        (True, True, True),
    ]


def test_the_gpt_example_flags_no_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The demo's causal mask holds -inf every step (issue 13: 20 of 20 steps were flagged Inf);
    recorded now, no step has a created non-finite value or a non-finite state."""
    pytest.importorskip("torch")
    from recorder.examples import gpt

    out = tmp_path / "run"
    assert gpt.main(["--steps", "2", "--out", str(out), "--quiet", "--json"]) == 0
    capsys.readouterr()
    with tracefmt.open(out) as trace:
        summaries = trace.summaries()
        assert [s.has_inf for s in summaries] == [True, True]  # the mask
        assert not any(s.nonfinite_created or s.nonfinite_state for s in summaries)
        report = classify_step(trace.step(1))
        assert report.by_design  # the mask's -inf, a constant argument
        assert report.first_created is None
    assert validate(out) == []
    result = CliRunner().invoke(main, ["ls", str(out)])
    assert result.exit_code == 0
    assert "created" not in result.output
    assert "state" not in result.output
