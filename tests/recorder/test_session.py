"""The recording session: hygiene, schedules, the background writer, and the trace on disk."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.optim.optimizer as optim_module
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

import recorder
import tracefmt
from recorder.engine.extension import load as load_engine
from recorder.examples.gpt import build
from tests.recorder._util import ListSink, mlp
from tracefmt.dtypes import fingerprint
from tracefmt.errors import TraceError
from tracefmt.model import Role
from tracefmt.records import StepRecord


def _global_state() -> tuple[Any, ...]:
    engine = load_engine().module
    m = torch.nn.modules.module
    o = optim_module
    return (
        len(m._global_forward_pre_hooks),
        len(m._global_forward_hooks),
        len(o._global_optimizer_pre_hooks),
        len(o._global_optimizer_post_hooks),
        len(_get_current_dispatch_mode_stack()),
        torch.autograd.backward,
        torch.autograd.grad,
        # the native engine: its dispatch key in this thread's TLS, and a step under way
        engine is not None and engine.included(),
        engine is not None and engine.active(),
    )


def _train_step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> torch.Tensor:
    loss = model(torch.randn(4, 8)).square().mean()
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "recorder-writer"]


@pytest.mark.parametrize("fail", [False, True])
def test_nothing_of_ours_remains_after_the_with_block(fail: bool) -> None:
    before = _global_state()
    model = mlp()
    opt = torch.optim.AdamW(model.parameters())
    rec = recorder.record(sink=ListSink(), model=model, values="all")
    with pytest.raises(RuntimeError, match="boom") if fail else _nullcontext(), rec:
        _train_step(model, opt)
        rec.step()
        assert _global_state() != before  # installed while capturing
        loss = model(torch.randn(4, 8)).sum()
        if fail:
            raise RuntimeError("boom")
        rec.step(loss=loss)
    assert _global_state() == before
    assert not _writer_threads()
    probes = [weakref.ref(p) for p in model.parameters()]
    probes += [weakref.ref(s) for st in opt.state.values() for s in st.values()]
    del model, opt, loss
    gc.collect()
    assert all(p() is None for p in probes), "the recorder still holds a tensor"
    assert rec is not None


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_steps_off_the_schedule_install_nothing() -> None:
    before = _global_state()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = ListSink()
    seen = []
    with recorder.record(sink=sink, schedule=recorder.schedule(every=3, skip_first=1)) as rec:
        for _ in range(7):
            seen.append(_global_state() != before)
            _train_step(model, opt)
            rec.step()
    assert seen == [False, True, False, False, True, False, False]
    assert [r.step for r in sink.records] == [1, 4]


def test_two_recorders_capturing_the_same_step_are_refused() -> None:
    """Nested captures would record each other's bookkeeping ops (it broke the graph): the
    second recorder says so; recorders whose schedules do not overlap work side by side."""
    before = _global_state()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with recorder.record(sink=ListSink()) as rec:
        _train_step(model, opt)
        with pytest.raises(TraceError, match="Another recorder is capturing step 0"):  # noqa: SIM117
            with recorder.record(sink=ListSink()):
                pass
        rec.step()
    assert _global_state() == before
    first, second = ListSink(), ListSink()
    with (
        recorder.record(sink=first, schedule=recorder.schedule(steps=[0, 4])) as a,
        recorder.record(sink=second, schedule=recorder.schedule(steps=[2])) as b,
    ):
        for _ in range(5):
            _train_step(model, opt)
            a.step()
            b.step()
    assert [r.step for r in first.records] == [0, 4]
    assert [r.step for r in second.records] == [2]
    assert _global_state() == before


def test_warmup_steps_are_captured_but_not_written() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = ListSink()
    with recorder.record(sink=sink, schedule=recorder.schedule(wait=1, warmup=1, active=1)) as rec:
        for _ in range(6):
            _train_step(model, opt)
            rec.step()
    assert [r.step for r in sink.records] == [2, 5]


class _FailingSink(ListSink):
    def write_step(self, record: StepRecord) -> None:
        if record.step == 2:
            raise OSError(28, "No space left on device")
        super().write_step(record)


def test_writer_error_is_raised_at_the_next_step_as_trace_error() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = _FailingSink()
    rec = recorder.record(sink=sink)
    with pytest.raises(TraceError, match="No space left") as info, rec:  # noqa: PT012
        for _ in range(10):
            _train_step(model, opt)
            rec.step()
            time.sleep(0.05)
    assert isinstance(info.value.__cause__, OSError)
    assert [r.step for r in sink.records] == [0, 1]
    assert sink.closed


class _SlowSink(ListSink):
    def write_step(self, record: StepRecord) -> None:
        time.sleep(0.2)
        super().write_step(record)


def test_drop_backpressure_counts_dropped_steps() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = _SlowSink()
    with recorder.record(sink=sink, backpressure="drop", max_queue_steps=1) as rec:
        for _ in range(8):
            _train_step(model, opt)
            rec.step()
    assert rec.dropped > 0
    assert len(sink.records) + rec.dropped == 8
    assert sum(r.dropped for r in sink.records) <= rec.dropped


def test_block_backpressure_keeps_every_step() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = _SlowSink()
    with recorder.record(sink=sink, max_queue_steps=1) as rec:
        for _ in range(4):
            _train_step(model, opt)
            rec.step()
    assert [r.step for r in sink.records] == [0, 1, 2, 3]
    assert rec.dropped == 0


@pytest.mark.parametrize("hist_bins", [0, 8])
def test_trace_round_trip_stats_equal_values(tmp_path: Path, hist_bins: int) -> None:
    model, opt, data = build(layers=1, embd=32, heads=2, block=16, batch=4)
    with recorder.record(tmp_path / "run", model=model, values="all", hist_bins=hist_bins) as rec:
        for step in range(2):
            loss = model(*data.batch(step))
            loss.backward()
            opt.step()
            opt.zero_grad()
            rec.step(loss=loss)
    trace = tracefmt.open(tmp_path / "run")
    step = trace.step(1)
    assert len(step.ops) > 100
    checked = 0
    for t in step.tensors:
        if not (t.has_values and t.stats is not None and t.stats.fingerprint is not None):
            continue
        v = t.values()
        assert fingerprint(v) == t.stats.fingerprint
        if t.stats.min is not None and v.size and v.dtype.kind == "f":
            x = v.astype(np.float64)
            good = x[np.isfinite(x)]  # moments are over the finite values (spec 5.7)
            np.testing.assert_equal([t.stats.min, t.stats.max], [good.min(), good.max()])
            # spec 5.7: float32 moments may be blocked sums; the sum within 1e-6 of the sum of
            # magnitudes, std within a relative 1e-5, the norm within a relative 1e-6
            scale = float(np.abs(good).mean()) if good.size else 0.0
            np.testing.assert_allclose(t.stats.mean, good.mean(), rtol=0, atol=1e-6 * scale + 1e-300)
            np.testing.assert_allclose(t.stats.std, good.std(), rtol=1e-5, atol=1e-300)
            np.testing.assert_allclose(t.stats.norm, np.linalg.norm(good), rtol=1e-6)
        checked += 1
    assert checked > 100
    assert {t.role for t in step.tensors} >= {
        Role.PARAMETER,
        Role.GRADIENT,
        Role.OPTIMIZER_STATE,
        Role.ACTIVATION,
    }


def test_one_flipped_bit_changes_the_fingerprints_downstream() -> None:
    model = mlp()
    x = torch.randn(4, 8)
    sink = ListSink()
    with recorder.record(sink=sink, model=model) as rec:
        for flip in (False, True):
            if flip:
                with torch.no_grad():
                    model[0].weight.view(torch.int32)[3, 5] ^= 1 << 7
                rec.step()  # the flip is an op of its own step
            model.zero_grad(set_to_none=True)
            model(x).sum().backward()
            rec.step()
    a, b = sink.records[0], sink.records[2]
    assert a.graph.digest == b.graph.digest
    assert a.stats is not None
    assert b.stats is not None
    fa, fb = a.stats["fingerprint"], b.stats["fingerprint"]
    index = {t.name: i for i, t in enumerate(a.graph.tensors)}
    assert fa[index["0.weight"]] != fb[index["0.weight"]]
    assert fa[index["0.bias"]] == fb[index["0.bias"]]
    consumer = next(op for op in a.graph.ops if index["0.weight"] in [t for t, _, _ in op.inputs])
    reach = {index["0.weight"]}
    for op in a.graph.ops:  # everything that depends on the weight, forward and backward
        if reach & {t for t, _, _ in op.inputs}:
            reach |= set(op.outputs)
    changed = [i for i in reach if fa[i] != fb[i] and a.stats["flags"][i]]
    assert consumer is not None
    assert len(changed) >= 3


def test_flush_policy_by_steps_on_the_writer_thread() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    threads: list[str] = []

    class Sink(ListSink):
        def flush(self) -> None:
            threads.append(threading.current_thread().name)
            super().flush()

    sink = Sink()
    with recorder.record(sink=sink, flush_every_steps=3, flush_every_seconds=3600) as rec:
        for _ in range(7):
            _train_step(model, opt)
            rec.step()
        rec.flush()
        flushed = sink.flushes
        assert len(sink.records) == 7
    assert flushed == 3  # after steps 3 and 6, and the explicit flush of step 7
    assert set(threads) == {"recorder-writer"}


def test_flush_policy_by_seconds() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = ListSink()
    with recorder.record(sink=sink, flush_every_steps=1000, flush_every_seconds=0.05) as rec:
        _train_step(model, opt)
        rec.step()
        deadline = time.monotonic() + 30
        while not sink.flushes and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sink.flushes >= 1  # flushed without another step, nor the end of the block
        assert len(sink.records) == 1


def test_default_flush_policy_is_documented() -> None:
    rec = recorder.record(sink=ListSink())
    assert (rec.options.flush_every_steps, rec.options.flush_every_seconds) == (10, 1.0)
    doc = recorder.record.__doc__ or ""
    assert "flush_every_steps" in doc
    assert "SIGKILL" in doc
