"""Flight mode end to end: the ring written when a trigger fires, and only then.

The models are the GPT example's, small enough that a few hundred steps take seconds.  Both
ways of keeping the ring run: in a writer process (the default) and in this process
(``writer_process=False``).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

import recorder
import tracefmt
from recorder.examples import gpt
from recorder.flight.keeper import Fired, TriggerFired
from tracefmt.events import EXCEPTION, LOSS_SPIKE, NONFINITE_CREATED, PROCESS_DIED, message_fields
from tracefmt.validate import validate

SMALL = ["--layers", "1", "--embd", "32", "--heads", "2", "--block", "16", "--batch", "8"]
REPO = Path(__file__).resolve().parents[2]


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, data: Any, step: int) -> torch.Tensor:
    x, y = data.batch(step)
    loss = model(x, y)
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss


def _poison(model: torch.nn.Module) -> None:
    with torch.no_grad():
        model.h[0].attn.c_attn.weight.view(-1)[0] = float("inf")  # type: ignore[index,union-attr]


def _small() -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
    torch.manual_seed(0)
    return gpt.build(layers=1, embd=32, heads=2, block=16, batch=8)


def _errors(path: Path) -> list[Any]:
    return [f for f in validate(path) if f.severity == "error"]


@pytest.mark.parametrize("process", [True, False], ids=["writer-process", "in-process"])
def test_a_created_inf_writes_the_ring_and_the_step(tmp_path: Path, process: bool) -> None:
    model, opt, data = _small()
    with recorder.record(
        tmp_path, model=model, mode="flight", ring_steps=4, writer_process=process
    ) as rec:
        for step in range(16):
            if step == 12:
                _poison(model)
            rec.step(loss=_train(model, opt, data, step))
    assert [e.kind for e in rec.fired][:1] == [NONFINITE_CREATED]
    with tracefmt.open(tmp_path) as trace:
        assert trace.steps() == [8, 9, 10, 11, 12]
        assert [s.step for s in trace.light_steps()] == list(range(16))
        events = trace.step(12).events
        created = [e for e in events if e.kind == NONFINITE_CREATED]
        assert created
        assert message_fields(created[0])["module"] == "h.0.attn.c_attn"
        assert message_fields(created[0])["rank"] == 0
    assert not _errors(tmp_path)


def test_the_example_flag_writes_k_steps_before_the_inf(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [*SMALL, "--steps", "40", "--out", str(out), "--quiet", "--mode", "flight"]
    assert gpt.main([*args, "--inject-nan", "37", "--ring", "8"]) == 0
    with tracefmt.open(out) as trace:
        assert trace.steps() == list(range(29, 38))
        kinds = {e.kind for e in trace.step(37).events}
        assert NONFINITE_CREATED in kinds
    assert not _errors(out)


def test_no_injection_fires_nothing_in_300_steps_and_a_spike_fires_once(tmp_path: Path) -> None:
    quiet, spiked = tmp_path / "quiet", tmp_path / "spiked"
    common = [*SMALL, "--steps", "300", "--quiet", "--mode", "flight", "--ring", "2"]
    assert gpt.main([*common, "--out", str(quiet)]) == 0
    assert gpt.main([*common, "--out", str(spiked), "--inject-spike", "150"]) == 0
    with tracefmt.open(quiet) as trace:
        assert trace.steps() == []  # nothing fired: events would come with a full step
        assert len(trace.light_steps()) == 300
    with tracefmt.open(spiked) as trace:
        fired = {(e.kind, s.step) for s in (trace.step(n) for n in trace.steps()) for e in s.events}
        assert (LOSS_SPIKE, 150) in fired
        assert {step for _, step in fired} == {150}
        assert trace.steps() == [148, 149, 150]


def _fail_in_step_12(path: Path) -> None:
    model, opt, data = _small()
    with recorder.record(path, model=model, mode="flight", ring_steps=5) as rec:
        for step in range(20):
            x, y = data.batch(step)
            loss = model(x, y)
            if step == 12:
                raise ZeroDivisionError("boom in step 12")
            loss.backward()
            opt.step()
            opt.zero_grad()
            rec.step(loss=loss)


def test_an_exception_leaves_the_ring_and_the_event(tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError):
        _fail_in_step_12(tmp_path)
    with tracefmt.open(tmp_path) as trace:
        assert trace.steps() == [7, 8, 9, 10, 11]
        light = trace.light_steps()
        assert [s.step for s in light] == list(range(13))
        (event,) = light[-1].events
        assert event.kind == EXCEPTION
        assert "boom in step 12" in message_fields(event)["reason"]
    assert not _errors(tmp_path)


def test_on_trigger_callable_sees_the_creating_module_before_the_optimizer(tmp_path: Path) -> None:
    model, opt, data = _small()
    seen: list[Fired] = []
    weight_before: list[torch.Tensor] = []

    def stop(fired: Fired) -> None:
        seen.append(fired)
        weight_before.append(model.h[0].attn.c_proj.weight.detach().clone())  # type: ignore[index,union-attr]

    with recorder.record(
        tmp_path, model=model, mode="flight", on_trigger=stop, writer_process=False
    ) as rec:
        for step in range(6):
            if step == 4:
                _poison(model)
            loss = _train(model, opt, data, step)
            rec.step(loss=loss)
    first = seen[0]
    assert first.step == 4
    assert first.created is not None
    assert first.created.path == "h.0.attn.c_attn"
    (x,) = [a for a in first.created.inputs.args if isinstance(a, torch.Tensor)]
    assert torch.isfinite(x).all()
    assert not torch.isfinite(first.created.output).all()
    assert torch.isfinite(weight_before[0]).all()  # the optimizer had not stepped yet


def _poison_step_5(path: Path) -> None:
    model, opt, data = _small()
    with recorder.record(path, model=model, mode="flight", on_trigger="raise", ring_steps=3) as rec:
        for step in range(8):
            if step == 5:
                _poison(model)
            rec.step(loss=_train(model, opt, data, step))


def test_on_trigger_raise_stops_the_step_with_the_trace_written(tmp_path: Path) -> None:
    with pytest.raises(TriggerFired) as info:
        _poison_step_5(tmp_path)
    assert info.value.fired.step == 5
    with tracefmt.open(tmp_path) as trace:
        assert trace.steps() == [2, 3, 4]
        last = trace.light_steps()[-1]
        assert last.step == 5
        (event,) = last.events
        assert event.kind == NONFINITE_CREATED
        assert message_fields(event)["module"] == "h.0.attn.c_attn"


def test_on_trigger_pdb_is_driven_through_a_pipe(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, torch, recorder
        sys.path.insert(0, {str(REPO)!r})
        from tests.recorder.test_flight import _small, _train, _poison
        model, opt, data = _small()
        with recorder.record({str(tmp_path)!r}, model=model, mode="flight", on_trigger="pdb",
                             writer_process=False) as rec:
            for step in range(4):
                if step == 2:
                    _poison(model)
                rec.step(loss=_train(model, opt, data, step))
        """
    )
    commands = "p fired.created.path\np bool(torch.isfinite(fired.created.inputs.args[0]).all())\nc\n"
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=commands,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "'h.0.attn.c_attn'" in done.stdout
    assert "True" in done.stdout
    assert "tracefmt: trigger at step 2" in done.stderr


def test_light_mode_measures_only_the_scheduled_steps(tmp_path: Path) -> None:
    model, opt, data = _small()
    with recorder.record(
        tmp_path, model=model, mode="light", schedule=recorder.schedule(every=3)
    ) as rec:
        for step in range(7):
            rec.step(loss=_train(model, opt, data, step))
    with tracefmt.open(tmp_path) as trace:
        assert trace.steps() == []
        light = trace.light_steps()
        assert [s.step for s in light] == [0, 3, 6]
        assert "loss" in light[0].scalars
    assert not _errors(tmp_path)


def test_flight_options_are_checked() -> None:
    with pytest.raises(ValueError, match="mode"):
        recorder.record("x", mode="flying")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_trigger"):
        recorder.record("x", on_trigger="print")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ring_steps"):
        recorder.record("x", ring_steps=0)


@pytest.mark.parametrize(("how", "signal_name"), [("kill", "SIGKILL"), ("segv", "SIGSEGV")])
def test_a_trainer_killed_at_step_50_leaves_the_eight_steps_before(
    tmp_path: Path, how: str, signal_name: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.recorder._flight_kill_child", str(tmp_path), how],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode < 0, done.stderr[-2000:]
    with tracefmt.open(tmp_path) as trace:
        assert trace.steps() == list(range(42, 50))
        died = [e for s in trace.light_steps() for e in s.events if e.kind == PROCESS_DIED]
    assert len(died) == 1
    assert message_fields(died[0])["signal"] == signal_name
    assert not _errors(tmp_path)


def test_a_nan_on_rank_1_makes_both_ranks_write_and_why_names_rank_1(tmp_path: Path) -> None:
    from replayer.why import explain
    from tests.torchrun import torchrun_ok

    out = tmp_path / "run"
    args = [*SMALL, "--ddp", "--mode", "flight", "--ring", "4", "--steps", "23", "--quiet"]
    torchrun_ok(["-m", "recorder.examples.gpt", *args, "--inject-nan", "1:20", "--out", str(out)])
    with tracefmt.open(out) as trace:
        for rank in (0, 1):
            assert trace.steps(rank)[:5] == [16, 17, 18, 19, 20], rank
        report = explain(trace)
    assert report.first_seen is not None
    assert (report.first_seen.rank, report.first_seen.step) == (1, 20)
    assert not _errors(out)


def test_flight_options_without_a_flight_mode_are_refused() -> None:
    with pytest.raises(ValueError, match=r"'on_trigger', 'ring_steps'.*mode="):
        recorder.record("x", on_trigger="raise", ring_steps=4)
    assert recorder.record("x", mode="light", light_updates=False).options.light_updates is False


def test_the_native_engine_does_not_record_light_captures_own_ops(tmp_path: Path) -> None:
    model, opt, data = _small()
    with recorder.record(
        tmp_path, model=model, mode="flight", engine="native", schedule=recorder.schedule()
    ) as rec:
        for step in range(3):
            rec.step(loss=_train(model, opt, data, step))
    with tracefmt.open(tmp_path) as trace:
        assert trace.provenance.extra["recorder_engine"] == "native"
        names = {op.name for op in trace.step(2).ops}
    assert not {n for n in names if n.startswith("aten::_foreach_copy_") or "_foreach_sub_" in n}


def test_a_trigger_on_rank_1_alone_makes_rank_0_write_its_ring(tmp_path: Path) -> None:
    from tests.torchrun import torchrun_ok
    from tracefmt.events import REMOTE_TRIGGER, USER_TRIGGER

    torchrun_ok(["-m", "tests.recorder._remote_child", str(tmp_path)])
    with tracefmt.open(tmp_path) as trace:
        assert trace.steps(1) == [2, 3, 4, 5]
        assert [e.kind for e in trace.step(5, rank=1).events] == [USER_TRIGGER]
        fired = {n: trace.step(n, rank=0).events for n in trace.steps(0)}
        (written,) = [n for n, events in fired.items() if events]
        # rank 0 acts on rank 1's step-5 post at its own step 5 when the post is there by then
        # (rank 1 may run ahead: it is not acted on earlier), else at step 6, after the barrier
        assert written in (5, 6), fired
        assert trace.steps(0) == list(range(written - 3, written + 1))
        (event,) = trace.step(written, rank=0).events
        assert event.kind == REMOTE_TRIGGER
        assert message_fields(event)["rank"] == 1
    assert not _errors(tmp_path)


def test_a_full_steps_created_event_names_the_op_inside_the_module(tmp_path: Path) -> None:
    """An overflow (finite inputs, Inf out) in a Linear: the event names the module, and in the
    full step the op that overflowed and its output (spec 5.11)."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with recorder.record(tmp_path, model=model, mode="flight", writer_process=False) as rec:
        for step in range(3):
            if step == 1:
                with torch.no_grad():
                    model[0].weight.fill_(1e38)
            loss = model(torch.ones(2, 4)).sum()
            loss.backward()
            opt.step()
            opt.zero_grad()
            rec.step(loss=loss)
    with tracefmt.open(tmp_path) as trace:
        step = trace.step(1)
        (created,) = [e for e in step.events if e.kind == NONFINITE_CREATED]
    assert message_fields(created)["module"] == "0"
    assert created.op is not None
    assert step.ops[created.op].module == "0"
    assert step.ops[created.op].name.startswith("aten::addmm")
    assert created.tensor in step.ops[created.op].outputs
