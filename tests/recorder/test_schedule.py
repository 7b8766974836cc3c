"""recorder.schedule: a pure function of the step number, tested without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from recorder.schedule import Action, schedule

N, W, R = Action.NONE, Action.WARMUP, Action.RECORD


def test_default_records_every_step() -> None:
    s = schedule()
    assert [s(i) for i in range(4)] == [R, R, R, R]
    assert schedule(every=1) == s or all(schedule(every=1)(i) is R for i in range(10))


def test_every_n_with_skip_first_and_repeat() -> None:
    assert [i for i in range(25) if schedule(every=10).records(i)] == [0, 10, 20]
    assert [i for i in range(30) if schedule(every=10, skip_first=3).records(i)] == [3, 13, 23]
    assert [i for i in range(100) if schedule(every=10, repeat=2).records(i)] == [0, 10]


def test_profiler_style_cycles() -> None:
    s = schedule(skip_first=2, wait=1, warmup=1, active=2, repeat=2)
    assert [s(i) for i in range(12)] == [N, N, N, W, R, R, N, W, R, R, N, N]
    assert s.captures(3)
    assert not s.records(3)


def test_repeat_zero_cycles_forever() -> None:
    s = schedule(wait=2, active=1)
    assert [i for i in range(10) if s.records(i)] == [2, 5, 8]


def test_explicit_steps() -> None:
    s = schedule(steps=[41206, 41207])
    assert [i for i in range(41200, 41210) if s.records(i)] == [41206, 41207]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"every": 0},
        {"wait": -1},
        {"active": 0},
        {"every": 2, "wait": 1},
        {"every": 2, "active": 1},
        {"steps": [1], "every": 2},
        {"steps": [-1]},
        {"steps": [1], "skip_first": 1},
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="schedule"):
        schedule(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [{"every": 1.5}, {"wait": True}, {"steps": "12"}])
def test_bad_types_raise_type_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        schedule(**kwargs)  # type: ignore[arg-type]


def test_negative_step_is_refused() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        schedule()(-1)


def test_schedule_and_select_import_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import recorder\n"
        "from recorder import schedule, select\n"
        "assert schedule(every=3).records(6)\n"
        "assert select(roles='gradients').matches('gradient', 'fc', 'aten::mm.default')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
