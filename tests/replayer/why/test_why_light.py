"""``replayer why`` on light steps (no graph): the module that created the value, a parameter
non-finite from the step before, and a spike."""

from __future__ import annotations

from pathlib import Path

import tracefmt
from replayer.why import WhyOptions, WhyReport, explain
from tests.replayer.why.why_synth import event, light_step, writer
from tracefmt.events import LOSS_SPIKE, NONFINITE_CREATED, NONFINITE_STATE


def _explain(run: Path, **options: object) -> WhyReport:
    with tracefmt.open(run) as trace:
        return explain(trace, WhyOptions(**options))  # type: ignore[arg-type]


def _write_nonfinite(run: Path) -> None:
    with writer(run) as w:
        for s in range(3):
            w.write_light_step(light_step(s))
        w.write_light_step(
            light_step(3, dec_inf=5, dec_param_inf=True, events=[event(NONFINITE_CREATED, module="dec")])
        )
        w.write_light_step(light_step(4, dec_inf=5, dec_param_inf=True, events=[event(NONFINITE_STATE)]))


def test_a_light_step_names_the_module_that_created_the_value(tmp_path: Path) -> None:
    _write_nonfinite(tmp_path)
    (e,) = _explain(tmp_path, step=3).explanations
    assert (e.capture, e.category) == ("light", "nonfinite")
    cause = e.cause
    assert cause is not None
    assert cause.kind == "created"
    assert (cause.at.module, cause.at.op, cause.at.capture) == ("dec", None, "light")
    assert cause.at.outputs[0].inf == 5
    assert [n.name for n in cause.at.inputs] == ["dec.weight"]  # as it entered step 3: finite
    assert cause.before is not None
    assert cause.before.step == 2
    assert cause.before.outputs[0].inf == 0
    assert [link.module for link in e.path] == ["dec", ""]
    assert any("dec.weight" in n and "left the step" in n for n in e.notes)
    assert "'dec'" in e.rerecord.python


def test_a_light_parameter_non_finite_at_the_start_points_to_the_step_that_made_it(
    tmp_path: Path,
) -> None:
    _write_nonfinite(tmp_path)
    (e,) = _explain(tmp_path, step=4).explanations
    assert e.cause is not None
    assert e.cause.kind == "state_at_start"
    assert e.cause.state == "dec.weight"
    assert e.cause.at.step == 3
    assert e.earlier is not None
    assert e.earlier.kind == "created"
    assert (e.earlier.at.step, e.earlier.at.module) == (3, "dec")


def test_a_light_spike_names_the_first_row_that_departed(tmp_path: Path) -> None:
    with writer(tmp_path) as w:
        for s in range(5):
            w.write_light_step(light_step(s))
        w.write_light_step(light_step(5, enc_scale=12.0, events=[event(LOSS_SPIKE, value=12.0)]))
    (e,) = _explain(tmp_path).explanations
    assert (e.capture, e.category) == ("light", "spike")
    cause = e.cause
    assert cause is not None
    assert cause.kind == "departure"
    assert cause.at.module == "enc"
    assert cause.ratio is not None
    assert abs(cause.ratio - 12.0) < 1e-6
    assert cause.before is not None
    assert cause.before.step == 4


def test_a_quiet_light_run_has_nothing_to_explain(tmp_path: Path) -> None:
    with writer(tmp_path) as w:
        for s in range(3):
            w.write_light_step(light_step(s))
    report = _explain(tmp_path)
    assert not report.has_events
    assert report.first_seen is None
