"""recorder.flight.alarms and recorder.flight.spike: the flight recorder's triggers, without torch.

The spike tests run realistic 300-step curves (a warm-up plateau, an exponential fall, a
learning-rate drop and a warm restart, a slow upward drift, noise at several levels, several
seeds): quiet curves fire nothing, the same curves with one spike fire at that step and no other.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from recorder.flight.alarms import TriggerOptions, Triggers, gradient_norm
from recorder.flight.spike import SpikeDetector, SpikeOptions
from tracefmt.errors import TraceError
from tracefmt.events import (
    GRAD_NORM_SPIKE,
    LOSS_SPIKE,
    NONFINITE_CREATED,
    NONFINITE_STATE,
    USER_TRIGGER,
    message_fields,
)
from tracefmt.light import LightFlags, LightKind, LightStepRecord, empty_light_rows

REPO = Path(__file__).resolve().parents[2]
MEASURED = LightFlags.MOMENTS | LightFlags.COUNTS
NOISES = (0.003, 0.01, 0.03)
SEEDS = range(5)
STEPS = 300


# -- realistic series --------------------------------------------------------------------------
def loss_curve(seed: int, noise: float) -> np.ndarray:
    """A character-level LM's loss: flat while the learning rate warms up (25 steps), an
    exponential fall from ln(65) to 1.45, a learning-rate drop at 170 (4% lower within 5 steps),
    a warm restart at 230 (2% higher over 10 steps, then falling back), a slow drift upward from
    200 (overfitting, 3% over 100 steps), and relative Gaussian noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(STEPS, dtype=float)
    level = 1.45 + 2.72 * np.exp(-np.clip(t - 25, 0, None) / 45) - 0.001 * np.clip(25 - t, 0, None)
    level *= 1 - 0.04 * np.clip((t - 170) / 5, 0, 1)
    level *= 1 + 0.02 * np.clip((t - 230) / 10, 0, 1) * np.exp(-np.clip(t - 240, 0, None) / 30)
    level *= 1 + 0.0003 * np.clip(t - 200, 0, None)
    series: np.ndarray = level * (1 + noise * rng.standard_normal(STEPS))
    return series


def grad_norm_curve(seed: int, noise: float) -> np.ndarray:
    """A gradient norm: large at first (2.0), falling to 0.3 within 50 steps, then rising slowly
    to 0.45 by the end, with log-normal (multiplicative, upward-skewed) noise."""
    rng = np.random.default_rng(1000 + seed)
    t = np.arange(STEPS, dtype=float)
    level = 0.3 + 1.7 * np.exp(-t / 15) + 0.0005 * t
    series: np.ndarray = level * np.exp(noise * 5 * rng.standard_normal(STEPS))  # 0.03: sigma 0.15
    return series


class Row(NamedTuple):
    name: str
    kind: LightKind
    norm: float = 1.0
    nan: int = 0
    inf: int = 0
    numel: int = 10
    flags: int = MEASURED


def light(step: int, rows: list[Row], **scalars: float) -> LightStepRecord:
    names: list[str] = []
    arr = empty_light_rows(len(rows))
    for i, r in enumerate(rows):
        if r.name not in names:
            names.append(r.name)
        arr[i]["name"] = names.index(r.name)
        arr[i]["kind"] = r.kind
        arr[i]["flags"] = r.flags
        arr[i]["norm"] = r.norm
        arr[i]["nan"], arr[i]["inf"], arr[i]["numel"] = r.nan, r.inf, r.numel
    record = LightStepRecord(step=step, names=names, rows=arr, scalars=scalars)
    record.check()
    return record


def gradient_rows(total: float) -> list[Row]:
    """Module outputs and three parameters whose gradient norms make ``total``."""
    weights = np.sqrt([0.5, 0.3, 0.2])
    outputs = [Row("encoder", LightKind.OUTPUT), Row("", LightKind.OUTPUT)]
    params = ("encoder.weight", "encoder.bias", "head.weight")
    return outputs + [
        Row(p, LightKind.GRADIENT, norm=total * w) for p, w in zip(params, weights, strict=True)
    ]


def fired_steps(series: np.ndarray) -> list[tuple[int, str]]:
    triggers = Triggers()
    out = []
    for step, value in enumerate(series.tolist()):
        for event in triggers.evaluate(step, scalars={"loss": value}):
            out.append((step, event.kind))
    return out


# -- spikes --------------------------------------------------------------------------------------
@pytest.mark.parametrize("noise", NOISES)
def test_quiet_loss_curves_fire_nothing(noise: float) -> None:
    for seed in SEEDS:
        assert fired_steps(loss_curve(seed, noise)) == [], f"seed {seed}"


@pytest.mark.parametrize("spike_at", [100, 160, 236, 290])
def test_an_injected_loss_spike_fires_at_its_step_and_no_other(spike_at: int) -> None:
    for noise in NOISES:
        for seed in SEEDS:
            series = loss_curve(seed, noise)
            series[spike_at] *= 1.6
            assert fired_steps(series) == [(spike_at, LOSS_SPIKE)], f"noise {noise} seed {seed}"


def test_a_spike_event_says_value_expected_mad_and_score() -> None:
    series = loss_curve(0, 0.01)
    series[200] *= 2.0
    triggers = Triggers(rank=3)
    events = [e for s, v in enumerate(series.tolist()) for e in triggers.evaluate(s, loss=v)]
    (event,) = events
    fields = message_fields(event)
    assert fields["rank"] == 3
    assert fields["step"] == 200
    assert fields["value"] == pytest.approx(series[200])
    assert fields["expected"] == pytest.approx(series[192:200].mean(), rel=0.03)
    assert fields["score"] > 8
    assert fields["mad"] > 0
    assert fields["by"] == "score"
    assert "step 200" in fields["reason"]
    assert "loss" in fields["reason"]


@pytest.mark.parametrize("spike_at", [None, 120, 250])
def test_gradient_norm_spikes_from_the_gradient_rows(spike_at: int | None) -> None:
    for noise in NOISES:
        for seed in SEEDS:
            series = grad_norm_curve(seed, noise)
            if spike_at is not None:
                series[spike_at] *= 5
            triggers = Triggers()
            fired = [
                (step, e.kind)
                for step, g in enumerate(series.tolist())
                for e in triggers.evaluate(step, light=light(step, gradient_rows(g), loss=2.0))
            ]
            expected = [] if spike_at is None else [(spike_at, GRAD_NORM_SPIKE)]
            assert fired == expected, f"noise {noise} seed {seed}"


def test_gradient_norm_is_the_two_norm_over_the_gradient_rows() -> None:
    assert gradient_norm(light(0, gradient_rows(3.0))) == pytest.approx(3.0)
    assert gradient_norm(light(0, [Row("m", LightKind.OUTPUT)])) is None
    unmeasured = [Row("w", LightKind.GRADIENT, flags=0)]
    assert gradient_norm(light(0, unmeasured)) is None
    assert math.isnan(gradient_norm(light(0, [Row("w", LightKind.GRADIENT, nan=1)])) or 0.0)
    assert gradient_norm(light(0, [Row("w", LightKind.GRADIENT, inf=2)])) == math.inf


def test_the_users_gradient_norm_scalar_wins_over_the_rows() -> None:
    """After clipping the rows see the clipped norm; the user's pre-clip norm is the one judged."""
    triggers = Triggers()
    for step in range(80):
        g = 1.0 + 0.01 * (step % 5)
        assert triggers.evaluate(step, light=light(step, gradient_rows(1.0), grad_norm=g)) == []
    (event,) = triggers.evaluate(80, light=light(80, gradient_rows(1.0), grad_norm=50.0))
    assert event.kind == GRAD_NORM_SPIKE
    assert message_fields(event)["value"] == 50.0


def test_a_level_shift_fires_adapt_after_times_then_becomes_normal() -> None:
    options = SpikeOptions(adapt_after=5)
    detector = SpikeDetector(options)
    rng = np.random.default_rng(0)
    series = np.r_[2.0 + 0.01 * rng.standard_normal(100), 3.0 + 0.01 * rng.standard_normal(100)]
    fired = [i for i, v in enumerate(series.tolist()) if detector.update(v).fired]
    assert fired == [100, 101, 102, 103, 104]


def test_one_spike_does_not_raise_the_bar_for_the_next() -> None:
    detector = SpikeDetector()
    series = 2.0 + 0.01 * np.random.default_rng(1).standard_normal(200)
    series[[100, 102, 150]] = [2.5, 2.5, 2.5]
    assert [i for i, v in enumerate(series.tolist()) if detector.update(v).fired] == [100, 102, 150]


def test_the_ratio_backstop_covers_the_warm_up() -> None:
    detector = SpikeDetector()
    assert not detector.update(1.0).fired
    assert not detector.update(1000.0).fired  # the first values only fill the window
    detector = SpikeDetector()
    for _ in range(20):
        detector.update(1.0)
    assert not detector.armed
    score = detector.update(12.0)
    assert score.fired
    assert score.by == "ratio"
    assert score.peak == 1.0
    assert not detector.update(9.0).fired  # below 10x, and the score is not armed yet


def test_flat_and_quantised_series_have_a_scale() -> None:
    flat = SpikeDetector()
    for _ in range(100):
        assert not flat.update(2.0).fired
    score = flat.update(2.5)
    assert score.fired
    assert score.mad == 0.0
    assert score.scale == pytest.approx(0.002)
    for _ in range(3):
        assert not flat.update(2.01).fired  # 5 x 0.1% of 2.0: under the threshold of 8
    zeros = SpikeDetector()
    for _ in range(100):
        zeros.update(0.0)
    assert not zeros.update(1e6).fired  # documented: a series of zeros has no scale
    quantised = SpikeDetector(SpikeOptions(level_window=0))
    for i in range(100):
        quantised.update(1.1 if i % 5 == 0 else 1.0)  # the MAD is 0, the mean deviation is not
    assert not quantised.update(1.1).fired
    score = quantised.update(1.5)
    assert score.mad == 0.0
    assert score.scale == pytest.approx(1.2533 * 0.1 * 21 / 101)
    assert score.fired


def test_non_finite_values_are_not_spikes_and_leave_the_window_alone() -> None:
    triggers, control = Triggers(), Triggers()
    series = loss_curve(2, 0.01).tolist()
    for step in range(150):
        assert triggers.evaluate(step, loss=series[step]) == []
        control.evaluate(step, loss=series[step])
    for bad in (math.nan, math.inf):
        (event,) = triggers.evaluate(150, loss=bad)
        assert event.kind == NONFINITE_STATE
        fields = message_fields(event)
        assert fields["module"] == "loss"
        assert fields["count"] == 1
        assert fields["nan" if math.isnan(bad) else "inf"] == 1
    assert triggers.evaluate(151, loss=series[151]) == []
    control.evaluate(151, loss=series[151])
    assert triggers.loss is not None
    assert control.loss is not None
    assert triggers.loss.update(series[152]) == control.loss.update(series[152])


# -- non-finite ----------------------------------------------------------------------------------
def test_the_first_module_that_created_a_non_finite_value_is_named() -> None:
    rows = [
        Row("embed", LightKind.OUTPUT),
        Row("blocks.0.attn", LightKind.OUTPUT, nan=4, numel=64),  # created: its inputs were finite
        Row(  # propagated: its inputs were not finite
            "blocks.0.mlp",
            LightKind.OUTPUT,
            nan=64,
            numel=64,
            flags=MEASURED | LightFlags.INPUTS_NONFINITE,
        ),
        Row("blocks.1.attn", LightKind.OUTPUT, inf=1, numel=64),  # a second creator
        Row("", LightKind.OUTPUT, nan=1, numel=1, flags=MEASURED | LightFlags.INPUTS_NONFINITE),
    ]
    events = Triggers(rank=1).evaluate(37, light=light(37, rows, loss=math.nan))
    assert [e.kind for e in events] == [NONFINITE_CREATED, NONFINITE_STATE]
    fields = message_fields(events[0])
    assert fields["module"] == "blocks.0.attn"
    assert fields["nan"] == 4
    assert fields["count"] == 2
    assert fields["rank"] == 1
    assert fields["step"] == 37
    assert "'blocks.0.attn'" in fields["reason"]
    assert "finite inputs" in fields["reason"]
    assert all(e.op is None and e.tensor is None for e in events)


def test_propagated_and_by_design_non_finite_outputs_are_not_created() -> None:
    propagated = [
        Row("blocks.0", LightKind.OUTPUT, nan=3, flags=MEASURED | LightFlags.INPUTS_NONFINITE),
        Row("head", LightKind.OUTPUT, nan=3, flags=MEASURED | LightFlags.INPUTS_NONFINITE),
        Row("uncounted", LightKind.OUTPUT, nan=3, flags=LightFlags.MOMENTS),
    ]
    assert Triggers().evaluate(0, light=light(0, propagated)) == []
    mask = [Row("causal_mask", LightKind.OUTPUT, inf=32), Row("head", LightKind.OUTPUT)]
    assert [e.kind for e in Triggers().evaluate(0, light=light(0, mask))] == [NONFINITE_CREATED]
    quiet = Triggers(TriggerOptions(by_design="*mask"))  # type: ignore[arg-type]
    assert quiet.options.by_design == ("*mask",)
    assert quiet.evaluate(0, light=light(0, mask)) == []


def test_non_finite_state_names_the_first_and_counts_them() -> None:
    rows = [
        Row("encoder", LightKind.OUTPUT),
        Row("encoder.weight", LightKind.GRADIENT, nan=2, inf=1),
        Row("encoder.bias", LightKind.GRADIENT),
        Row("encoder.weight", LightKind.UPDATE, nan=3),
        Row("encoder.weight", LightKind.PARAMETER, nan=3),
    ]
    (event,) = Triggers().evaluate(5, light=light(5, rows, loss=2.0))
    fields = message_fields(event)
    assert event.kind == NONFINITE_STATE
    assert fields["module"] == "encoder.weight"
    assert fields["what"] == "gradient"
    assert (fields["nan"], fields["inf"], fields["count"]) == (2, 1, 3)
    assert "gradient of 'encoder.weight' (2 NaN, 1 Inf)" in fields["reason"]
    assert "2 more" in fields["reason"]
    (loss_first,) = Triggers().evaluate(5, light=light(5, rows, loss=math.inf))
    assert message_fields(loss_first)["module"] == "loss"
    assert message_fields(loss_first)["count"] == 4
    scalar_only = Triggers().evaluate(5, scalars={"loss": 1.0, "grad_norm": math.nan})
    assert [message_fields(e)["what"] for e in scalar_only] == ["gradient norm"]
    off = Triggers(TriggerOptions(nonfinite=False))
    assert off.evaluate(5, light=light(5, rows, loss=math.inf)) == []


# -- the user's predicate ----------------------------------------------------------------------
def test_the_user_predicate_fires_with_its_reason() -> None:
    seen = []

    def predicate(step: int, scalars: Mapping[str, float]) -> bool | str | None:
        seen.append((step, dict(scalars)))
        answers: dict[int, bool | str | None] = {1: True, 2: "lr above 1", 3: "", 4: None}
        return answers.get(step, False)

    triggers = Triggers(TriggerOptions(predicate=predicate))
    fired = {s: triggers.evaluate(s, scalars={"loss": 2.0, "lr": 0.1}) for s in range(6)}
    assert seen[0] == (0, {"loss": 2.0, "lr": 0.1})
    assert [s for s, events in fired.items() if events] == [1, 2]
    assert all(e.kind == USER_TRIGGER for s in (1, 2) for e in fired[s])
    assert message_fields(fired[1][0])["reason"] == "The trigger predicate returned True at step 1."
    assert message_fields(fired[2][0])["reason"] == "lr above 1"


def test_an_exception_in_the_predicate_is_a_trace_error_that_says_so() -> None:
    def needs_lr(step: int, scalars: Mapping[str, float]) -> bool:
        return scalars["lr"] > 1

    triggers = Triggers(TriggerOptions(predicate=needs_lr))
    with pytest.raises(TraceError, match=r"trigger predicate 'needs_lr' raised KeyError at step 4") as e:
        triggers.evaluate(4, scalars={"loss": 1.0})
    assert isinstance(e.value.__cause__, KeyError)

    def writes(step: int, scalars: dict[str, float]) -> bool:
        scalars["x"] = 1.0
        return False

    with pytest.raises(TraceError, match="TypeError"):
        Triggers(TriggerOptions(predicate=writes)).evaluate(0, scalars={})  # type: ignore[arg-type]


# -- options -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [("window", 1), ("warmup", 0), ("threshold", -1.0), ("ratio", 1.0), ("threshold", math.inf),
     ("adapt_after", 0), ("level_window", -1), ("level_window", 64), ("window", True)],
)  # fmt: skip
def test_spike_options_refuse_bad_values_with_a_sentence(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"SpikeOptions\({field}=.*\.$"):
        SpikeOptions(**{field: value})  # type: ignore[arg-type]


def test_trigger_options_are_checked_and_can_turn_spikes_off() -> None:
    with pytest.raises(TypeError, match="callable"):
        TriggerOptions(predicate=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="SpikeOptions or None"):
        TriggerOptions(loss_spike={"window": 3})  # type: ignore[arg-type]
    triggers = Triggers(TriggerOptions(loss_spike=None, grad_norm_spike=None))
    assert triggers.loss is None
    assert triggers.grad_norm is None
    assert all(triggers.evaluate(s, loss=1e9 if s == 99 else 1.0) == [] for s in range(100))


def test_triggers_work_without_torch() -> None:
    script = """
import sys
sys.modules["torch"] = None
import math
from recorder.flight.alarms import Triggers
t = Triggers()
quiet = [t.evaluate(s, loss=2.0 + 0.01 * (s % 7)) for s in range(100)]
assert not any(quiet)
assert [e.kind for e in t.evaluate(100, loss=5.0)] == ["loss_spike"]
assert [e.kind for e in t.evaluate(101, loss=math.nan)] == ["nonfinite_state"]
assert sys.modules["torch"] is None
print("ok")
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
