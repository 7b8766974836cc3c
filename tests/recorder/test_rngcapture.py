"""RNG states (format 1.6) from the recorder: both capture engines and flight mode's writer
process store each recorded step's generator states as they were at the step's start, and
restoring the states of step k draws the very dropout masks the trace holds for step k."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import recorder
import tracefmt
from recorder.engine import extension
from recorder.examples import gpt
from recorder.flight.wire import Encoder, StepMessage
from recorder.flight.wiredecode import Decoder
from recorder.rngsnap import restore, rng_snapshot
from tests.synth import mlp_graph, synthetic_step
from tracefmt import RngState
from tracefmt.validate import validate

_NATIVE = pytest.param(
    "native",
    marks=pytest.mark.skipif(
        extension.load().module is None,
        reason=f"the native engine cannot be built here: {extension.load().reason}",
    ),
)
STEPS = 3


def _small() -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
    """The GPT example, small: every block has its dropouts (p=0.1) and attention dropout."""
    torch.manual_seed(0)
    return gpt.build(layers=1, embd=32, heads=2, block=16, batch=4)


def _train(path: Path, steps: int, **kw: Any) -> list[bytes]:
    """Record ``steps`` steps of the small GPT; returns the CPU generator's state at the start of
    each step, taken by the training loop itself."""
    model, opt, data = _small()
    seen = []
    with recorder.record(path, model=model, overwrite=True, **kw) as rec:
        for step in range(steps):
            seen.append(torch.get_rng_state().numpy().tobytes())
            x, y = data.batch(step)
            loss = model(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            rec.step(loss=loss)
    return seen


@pytest.mark.parametrize("engine", ["python", _NATIVE])
def test_restored_state_draws_the_recorded_dropout_masks(engine: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    masks = recorder.select(ops="aten::bernoulli*")  # dropout's mask on CPU: bernoulli_(1 - p)
    seen = _train(run, STEPS, engine=engine, capture=["graph", "stats", "values"], values=masks)
    assert len(set(seen)) == STEPS  # every step's dropout moved the generator
    with tracefmt.open(run) as trace:
        assert trace.provenance.extra["recorder_engine"] == engine
        assert trace.steps() == list(range(STEPS))
        for k in trace.steps():
            step = trace.step(k)
            assert [s.device for s in step.rng_states] == ["cpu"]  # CUDA is not initialised
            state = step.rng_state("cpu")
            assert state is not None
            assert state.state == seen[k]
            torch.set_rng_state(torch.tensor(list(state.state), dtype=torch.uint8))
            ops = [op for op in step.ops if op.name.startswith("aten::bernoulli")]
            assert len(ops) == 4  # embedding, attention, residual and MLP dropout, in order
            for op in ops:
                out = step.tensors[op.outputs[0]]
                recorded = out.values()
                drawn = torch.empty(out.meta.shape, dtype=torch.float32).bernoulli_(op.attrs["p"])
                assert 0 < recorded.mean() < 1, op.module  # a mask of zeros and ones
                assert np.array_equal(recorded.view(np.uint32), drawn.numpy().view(np.uint32)), (
                    k,
                    op.index,
                    op.module,
                )
    assert validate(run, deep=True) == []


def test_flight_mode_writer_process_carries_the_states(tmp_path: Path) -> None:
    model, opt, data = _small()
    seen = []
    with recorder.record(tmp_path, model=model, mode="flight", ring_steps=3) as rec:
        for step in range(8):
            seen.append(torch.get_rng_state().numpy().tobytes())
            if step == 6:
                with torch.no_grad():
                    model.h[0].attn.c_attn.weight.view(-1)[0] = float("inf")  # type: ignore[index,union-attr]
            x, y = data.batch(step)
            loss = model(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            rec.step(loss=loss)
    with tracefmt.open(tmp_path) as trace:
        written = trace.steps()
        assert written  # the created Inf wrote the ring
        for k in written:
            state = trace.step(k).rng_state("cpu")
            assert state is not None
            assert state.state == seen[k], k
    assert [f for f in validate(tmp_path) if f.severity == "error"] == []


def test_wire_round_trip_of_rng_states() -> None:
    enc, dec = Encoder(), Decoder()
    record = synthetic_step(0, mlp_graph(), np.random.default_rng(0))
    record.rng_states = (RngState("cpu", bytes(range(256)) * 3), RngState("cuda:1", b"\x07" * 16))
    msg = enc.step(record, hold=True)
    buf = bytearray(msg.total)
    for offset, data in msg.pieces:
        buf[offset : offset + data.size] = data.tobytes()
    out = dec.decode(buf)
    assert isinstance(out, StepMessage)
    assert out.record.rng_states == record.rng_states


def test_snapshot_never_initialises_cuda_and_restore_round_trips() -> None:
    initialised = torch.cuda.is_available() and torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
    states = rng_snapshot()
    assert states[0].device == "cpu"
    assert (len(states) > 1) == initialised
    if torch.cuda.is_available():
        assert torch.cuda.is_initialized() == initialised  # type: ignore[no-untyped-call]
    first = torch.rand(5)
    restore(states)
    assert torch.equal(torch.rand(5), first)
    with pytest.raises(ValueError, match="no counterpart here"):
        restore([RngState(f"cuda:{torch.cuda.device_count()}", b"\x00" * 16)])
