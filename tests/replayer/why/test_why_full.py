"""``replayer why`` on full steps: created NaN, by-design -inf, Inf written into a parameter, a
parameter non-finite from a step before, and a spike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tracefmt
from replayer.why import WhyOptions, WhyReport, departure, explain
from tests.replayer.why.why_synth import Tape, event, light_step, mlp_step, writer
from tests.synth import attention_step
from tracefmt import Phase, Role, TensorStats
from tracefmt.events import LOSS_SPIKE, NONFINITE_CREATED, NONFINITE_STATE, USER_TRIGGER


def _explain(run: Path, **options: object) -> WhyReport:
    with tracefmt.open(run) as trace:
        return explain(trace, WhyOptions(**options))  # type: ignore[arg-type]


def test_a_nan_created_in_the_middle_of_the_graph_is_named_with_its_numbers(tmp_path: Path) -> None:
    with writer(tmp_path) as w:
        w.write_step(mlp_step(4))
        w.write_step(mlp_step(5, log_shift=-3.0, events=[event(NONFINITE_CREATED, module="block.1")]))
    report = _explain(tmp_path)
    (e,) = report.explanations
    assert (e.rank, e.step, e.kind, e.category, e.capture) == (
        0,
        5,
        NONFINITE_CREATED,
        "nonfinite",
        "full",
    )
    cause = e.cause
    assert cause is not None
    assert cause.kind == "created"
    assert (cause.at.name, cause.at.module, cause.at.phase) == (
        "aten::log.default",
        "block.1",
        "forward",
    )
    assert cause.at.outputs[0].nan
    assert not cause.at.inputs[0].nan
    assert cause.before is not None
    assert cause.before.step == 4
    assert cause.before.name == "aten::log.default"
    assert cause.before.outputs[0].nan == 0
    assert [link.name for link in e.path] == [
        "aten::log.default",
        "aten::mul.Scalar",
        "aten::mean.default",
    ]
    assert e.first_seen is not None
    assert (e.first_seen.rank, e.first_seen.how) == (0, "created")
    assert "schedule=recorder.schedule(steps=[4, 5])" in e.rerecord.python
    assert "block.1" in e.rerecord.python
    assert any(c.startswith("replayer diff ") for c in e.rerecord.commands)


def test_a_by_design_minus_inf_mask_is_not_an_origin(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    quiet = attention_step(3, rng)
    quiet.events = [event(USER_TRIGGER)]
    masked = attention_step(4, rng, masked_row=True)
    masked.events = [event(NONFINITE_CREATED, module="attn")]
    with writer(tmp_path) as w:
        w.write_step(quiet)
        w.write_step(masked)
    report = _explain(tmp_path)
    by_step = {e.step: e for e in report.explanations}
    # step 3 holds the mask's -inf, by design: no NaN/Inf to trace, so nothing is blamed
    assert by_step[3].category == "other"
    assert by_step[3].cause is None
    # step 4: the softmax over a fully masked row made NaN; the masked_fill is not the origin
    cause = by_step[4].cause
    assert cause is not None
    assert cause.kind == "created"
    assert cause.at.name == "aten::_softmax.default"


def _poisoned_step(step: int, *, how: str) -> tuple[Tape, int]:
    """fc.weight gets an Inf written through a view (``w.view(-1)[0] = inf``) or by ``fill_``
    with an infinite constant, then the forward reads it."""
    tape = Tape()
    x = tape.tensor(np.ones((2, 3)), name="x")
    w = tape.tensor(np.full((3, 3), 0.5), role=Role.PARAMETER, name="fc.weight")
    v = tape.op("aten::view.default", [w], lambda a: a.reshape(-1), phase=Phase.OTHER, measured=False)
    s = tape.op("aten::select.int", [v], lambda a: a[0], phase=Phase.OTHER, measured=False)
    if how == "copy":
        c = tape.tensor(np.float32(np.inf))  # the lifted Python scalar: an input of the step
        lc = tape.op("aten::lift_fresh.default", [c], lambda a: a, phase=Phase.OTHER, measured=False)
        tape.op("aten::copy_.default", [s, lc], lambda a, b: b, phase=Phase.OTHER)
    else:
        tape.op(
            "aten::fill_.Scalar",
            [s],
            lambda a: np.float32(np.inf),
            phase=Phase.OTHER,
            attrs={"value": float("inf")},
        )
    poisoned = np.full((3, 3), 0.5)
    poisoned[0, 0] = np.inf
    w2 = tape.tensor(poisoned, role=Role.PARAMETER, name="fc.weight", version=1)
    y = tape.op("aten::mm.default", [x, w2], np.matmul, module="fc")
    loss = tape.op("aten::mean.default", [y], np.mean)
    return tape, loss


@pytest.mark.parametrize("how", ["copy", "fill"])
def test_inf_written_into_a_parameter_is_the_origin(tmp_path: Path, how: str) -> None:
    tape, loss = _poisoned_step(3, how=how)
    with writer(tmp_path) as w:
        w.write_step(mlp_step(2))
        w.write_step(tape.record(3, [event(NONFINITE_STATE, module="fc.weight")], loss))
    (e,) = _explain(tmp_path).explanations
    cause = e.cause
    assert cause is not None
    assert cause.kind == "state_write"
    assert cause.at.name == ("aten::copy_.default" if how == "copy" else "aten::fill_.Scalar")
    assert cause.state == "fc.weight"
    assert "fc.weight" in cause.description
    names = [link.name for link in e.path]
    assert names[0] == cause.at.name
    assert names[-1] == "aten::mean.default"
    assert "aten::mm.default" in names
    assert "'fc'" in e.rerecord.python  # values kept for the parameter's module


def _inf_update_step(step: int) -> tuple[Tape, int]:
    """A step whose optimizer divides by a zero gradient norm (created Inf) and writes it into
    fc.weight."""
    tape = Tape()
    x = tape.tensor(np.ones((2, 3)), name="x")
    w = tape.tensor(np.full((3, 3), 0.5), role=Role.PARAMETER, name="fc.weight")
    y = tape.op("aten::mm.default", [x, w], np.matmul, module="fc")
    loss = tape.op("aten::mean.default", [y], np.mean)
    g = tape.op("aten::zeros_like.default", [w], np.zeros_like, phase=Phase.BACKWARD, role=Role.GRADIENT)
    step_ = tape.op("aten::reciprocal.default", [g], np.reciprocal, phase=Phase.OPTIMIZER)
    tape.op(
        "aten::add_.Tensor",
        [w, step_],
        np.add,
        phase=Phase.OPTIMIZER,
        role=Role.PARAMETER,
        out_name="fc.weight",
    )
    return tape, loss


def test_a_parameter_non_finite_at_the_start_is_followed_to_the_step_that_made_it(
    tmp_path: Path,
) -> None:
    made, loss5 = _inf_update_step(5)
    later = Tape()
    x = later.tensor(np.ones((2, 3)), name="x")
    w = later.tensor(np.full((3, 3), np.inf), role=Role.PARAMETER, name="fc.weight")
    y = later.op("aten::mm.default", [x, w], np.matmul, module="fc")
    loss6 = later.op("aten::mean.default", [y], np.mean)
    with writer(tmp_path) as w_:
        w_.write_step(made.record(5, [], loss5))
        w_.write_step(later.record(6, [event(NONFINITE_STATE, module="fc.weight")], loss6))
    (e,) = _explain(tmp_path).explanations
    assert e.cause is not None
    assert e.cause.kind == "state_at_start"
    assert e.cause.state == "fc.weight"
    assert e.cause.at.name == "aten::mm.default"
    assert e.cause.before is not None
    assert e.cause.before.step == 5
    assert e.earlier is not None
    assert e.earlier.kind == "created"
    assert (e.earlier.at.step, e.earlier.at.name) == (5, "aten::reciprocal.default")
    assert any("step 5" in n for n in e.notes)


def test_a_state_at_start_without_the_step_before_says_so(tmp_path: Path) -> None:
    later = Tape()
    x = later.tensor(np.ones((2, 3)), name="x")
    w = later.tensor(np.full((3, 3), np.inf), role=Role.PARAMETER, name="fc.weight")
    loss = later.op("aten::mean.default", [later.op("aten::mm.default", [x, w], np.matmul)], np.mean)
    with writer(tmp_path) as w_:
        w_.write_step(later.record(6, [event(NONFINITE_STATE)], loss))
    (e,) = _explain(tmp_path).explanations
    assert e.cause is not None
    assert e.cause.kind == "state_at_start"
    assert e.earlier is None
    assert any("no step before 6" in n for n in e.notes)


def test_a_spike_names_the_first_op_whose_statistics_jumped(tmp_path: Path) -> None:
    with writer(tmp_path) as w:
        w.write_step(mlp_step(7))
        w.write_step(mlp_step(8, head_scale=50.0, events=[event(LOSS_SPIKE, value=50.0)]))
    (e,) = _explain(tmp_path).explanations
    assert e.category == "spike"
    cause = e.cause
    assert cause is not None
    assert cause.kind == "departure"
    assert (cause.at.name, cause.at.module) == ("aten::mul.Scalar", "head")
    assert cause.ratio is not None
    assert 40 < cause.ratio < 60
    assert cause.before is not None
    assert cause.before.step == 7
    assert [link.name for link in e.path] == ["aten::mul.Scalar", "aten::mean.default"]


def test_a_spike_in_a_parameter_is_named_before_its_reader(tmp_path: Path) -> None:
    with writer(tmp_path) as w:
        w.write_step(mlp_step(7))
        w.write_step(mlp_step(8, w_scale=20.0, events=[event(LOSS_SPIKE)]))
    cause = _explain(tmp_path).explanations[0].cause
    assert cause is not None
    assert cause.kind == "state_departure"
    assert cause.state == "block.0.weight"
    assert cause.at.name == "aten::mm.default"


def test_a_spike_without_the_step_before_has_no_cause_but_a_note(tmp_path: Path) -> None:
    with writer(tmp_path) as w:
        w.write_step(mlp_step(8, events=[event(LOSS_SPIKE)]))
        w.write_light_step(light_step(8))
    (e,) = _explain(tmp_path).explanations
    assert e.cause is None
    assert any("no step 7" in n for n in e.notes)


def test_departure_is_a_factor_of_norm_or_magnitude() -> None:
    a = TensorStats(min=-1.0, max=1.0, norm=2.0, nan=0, inf=0)
    assert departure(a, a) == 1.0
    assert departure(a, TensorStats(min=-1.0, max=8.0, norm=4.0, nan=0, inf=0)) == 8.0
    assert departure(a, TensorStats(min=-1.0, max=1.0, norm=2.0, nan=1, inf=0)) == float("inf")
    assert departure(a, TensorStats()) is None
    assert departure(None, a) is None
