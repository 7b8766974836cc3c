"""Coverage: real small training loops of the kinds users run, each recorded and checked.

Autocast, gradient accumulation, GradScaler, several optimizers, LR schedulers, shared parameters,
eval steps under ``no_grad``, models moved between dtypes and devices.  ``torch.compile`` is in
``test_compile.py``.  Each test checks the recorded step against what the loop did: op counts
against an independent dispatch-mode log, names and roles, and stats against values.
"""

from __future__ import annotations

import collections
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import recorder
from tests.recorder._util import ListSink, OpLog, mlp
from tracefmt.dtypes import DType, fingerprint
from tracefmt.model import Phase, Role
from tracefmt.records import StepRecord


def _names(record: StepRecord, role: Role) -> set[str]:
    return {t.name for t in record.graph.tensors if t.role is role and t.name is not None}


def _phases(record: StepRecord) -> collections.Counter[Phase]:
    return collections.Counter(op.phase for op in record.graph.ops)


def _check_clean(record: StepRecord) -> None:
    """No recorder error; stats agree with values (ops outside modules, such as a loss computed
    in the loop, have the module path "")."""
    assert not [e for e in record.events if e.kind == "recorder_error"], record.events
    if record.stats is not None:
        for i, v in record.values.items():
            if record.stats["flags"][i]:
                assert int(record.stats["fingerprint"][i]) == fingerprint(v), i


def _data(n: int = 4, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randn(n, 8, generator=g), torch.randn(n, 4, generator=g)


def test_autocast_bf16_records_bf16_ops_and_their_stats() -> None:
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sink = ListSink()
    log = OpLog()
    data = _data()
    with recorder.record(sink=sink, model=model, values="all") as rec:
        for step in range(2):
            with log if step == 1 else _null():
                x, y = next(data)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = (model(x).float() - y).square().mean()
                loss.backward()
                opt.step()
                opt.zero_grad()
            rec.step(loss=loss)
    record = sink.records[1]
    _check_clean(record)
    assert len(record.graph.ops) == len(log.ops)
    bf16 = [i for i, t in enumerate(record.graph.tensors) if t.dtype == DType.parse("bfloat16")]
    assert bf16
    assert any(op.name == "aten::_to_copy.default" for op in record.graph.ops)
    assert record.stats is not None
    assert all(record.stats["flags"][i] for i in bf16 if i in record.values)
    assert _names(record, Role.PARAMETER) == {"0.weight", "0.bias", "2.weight", "2.bias"}


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_gradient_accumulation_records_every_micro_batch() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = ListSink()
    data = _data()
    micro = 3
    with recorder.record(sink=sink, model=model) as rec:
        for _ in range(2):
            for _ in range(micro):
                x, y = next(data)
                ((model(x) - y).square().mean() / micro).backward()
            opt.step()
            opt.zero_grad()
            rec.step()
    record = sink.records[1]
    _check_clean(record)
    graph = record.graph
    # Phases run forward, backward three times, then the optimizer.
    phases = [op.phase for op in graph.ops if op.phase is not Phase.OTHER]  # OTHER: the data
    runs = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] is not p]
    assert runs == [Phase.FORWARD, Phase.BACKWARD] * micro + [Phase.OPTIMIZER]
    grads = [t for t in graph.tensors if t.name == "0.weight.grad"]
    assert len(grads) >= micro  # created once, then accumulated into (new versions)
    assert max(t.version for t in grads) >= micro - 1
    consumed = [
        op
        for op in graph.ops
        if op.phase is Phase.OPTIMIZER
        and any(graph.tensors[i].name == "0.weight.grad" for i, _, _ in op.inputs)
    ]
    assert consumed


def test_grad_scaler_ops_are_recorded() -> None:
    try:
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    except (RuntimeError, TypeError, AttributeError) as e:  # pragma: no cover - old torch
        pytest.skip(f"torch.amp.GradScaler('cpu') is not supported by this torch: {e}")
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = ListSink()
    log = OpLog()
    data = _data()
    with recorder.record(sink=sink, model=model) as rec:
        for step in range(2):
            with log if step == 1 else _null():
                x, y = next(data)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = (model(x).float() - y).square().mean()
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scaler.step(opt)
                scaler.update()
                opt.zero_grad()
                scale = scaler.get_scale()
            rec.step(loss=loss, scale=scale)
    record = sink.records[1]
    _check_clean(record)
    names = [op.name for op in record.graph.ops]
    assert len(names) == len(log.ops)
    assert any("non_finite_check_and_unscale" in n for n in names)
    assert any("_amp_update_scale" in n for n in names)
    assert any(n.startswith("aten::linalg_vector_norm") or "norm" in n for n in names)
    assert record.scalars["scale"] == scale
    assert _phases(record)[Phase.OPTIMIZER] > 0


OPTIMIZERS: dict[str, tuple[Callable[[Any], torch.optim.Optimizer], set[str]]] = {
    "sgd_momentum": (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), {"momentum_buffer"}),
    "adam": (lambda p: torch.optim.Adam(p, lr=1e-2), {"exp_avg", "exp_avg_sq", "step"}),
    "adamw_foreach": (
        lambda p: torch.optim.AdamW(p, lr=1e-2, foreach=True),
        {"exp_avg", "exp_avg_sq", "step"},
    ),
    "adamw_default": (lambda p: torch.optim.AdamW(p, lr=1e-2), {"exp_avg", "exp_avg_sq", "step"}),
}


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_optimizers_update_named_parameters_and_state(kind: str) -> None:
    make, keys = OPTIMIZERS[kind]
    model = mlp()
    opt = make(model.parameters())
    sink = ListSink()
    data = _data()
    params = {n for n, _ in model.named_parameters()}
    # Values of optimizer state only: the state made in the first step must be in it.
    with recorder.record(sink=sink, model=model, values=recorder.select(roles="optimizer_state")) as rec:
        for _ in range(3):
            x, y = next(data)
            (model(x) - y).square().mean().backward()
            opt.step()
            opt.zero_grad()
            rec.step()
    for step, record in enumerate(sink.records):
        _check_clean(record)
        graph = record.graph
        state = _names(record, Role.OPTIMIZER_STATE)
        assert state == {f"{p}.{k}" for p in params for k in keys}, (step, state)
        for p in params:
            updates = [t for t in graph.tensors if t.name == p and t.version > 0]
            assert updates, (step, p)
            assert all(graph.ops[t.producer].phase is Phase.OPTIMIZER for t in updates)
        selected = {graph.tensors[i].name for i in record.values}
        assert selected == state, (step, selected ^ state)
        assert all(graph.tensors[i].role is Role.OPTIMIZER_STATE for i in record.values)
    # The first step's state is made in it: its first values are the initial ones.
    first = sink.records[0]
    made = [
        i
        for i in first.values
        if first.graph.tensors[i].producer >= 0 and first.graph.tensors[i].version == 0
    ]
    assert made


@pytest.mark.parametrize("sched", ["step", "onecycle", "plateau"])
def test_lr_schedulers(sched: str) -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler: Any
    if sched == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    elif sched == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=10)
    else:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0)
    sink = ListSink()
    data = _data()
    lrs = []
    with recorder.record(sink=sink, model=model) as rec:
        for _ in range(3):
            x, y = next(data)
            loss = (model(x) - y).square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            if sched == "plateau":
                scheduler.step(loss.item() + 10.0)  # never improves: the lr drops
            else:
                scheduler.step()
            lrs.append(opt.param_groups[0]["lr"])
            rec.step(loss=loss, lr=lrs[-1])
    assert [r.scalars["lr"] for r in sink.records] == lrs
    assert len(set(lrs)) > 1
    for record in sink.records:
        _check_clean(record)
        assert _phases(record)[Phase.OPTIMIZER] > 0


class _Shared(nn.Module):
    """One Linear applied twice, and an output head tied to the input projection."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 8, bias=False)
        self.block = nn.Linear(8, 8)
        self.head = nn.Linear(8, 8, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = torch.relu(self.block(h))
        h = torch.relu(self.block(h))  # the same module again
        out: torch.Tensor = self.head(h)
        return out


def test_shared_parameters_are_one_named_tensor_with_one_gradient() -> None:
    model = _Shared()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = ListSink()
    with recorder.record(sink=sink, model=model) as rec:
        for _ in range(2):
            model(torch.randn(4, 8)).square().mean().backward()
            opt.step()
            opt.zero_grad()
            rec.step()
    record = sink.records[1]
    _check_clean(record)
    params = _names(record, Role.PARAMETER)
    assert params == {"embed.weight", "block.weight", "block.bias"}
    assert _names(record, Role.GRADIENT) == {f"{p}.grad" for p in params}
    modules = collections.Counter(
        op.module
        for op in record.graph.ops
        if op.phase is Phase.FORWARD and op.name.startswith("aten::addmm")
    )
    assert modules["block"] == 2
    readers = {
        op.module
        for op in record.graph.ops
        if op.phase is Phase.FORWARD
        and any(record.graph.tensors[i].name == "embed.weight" for i, _, _ in op.inputs)
    }
    assert readers == {"embed", "head"}


def test_eval_steps_under_no_grad_between_training_steps() -> None:
    model = nn.Sequential(
        nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 4)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sink = ListSink()
    data = _data(8)
    with recorder.record(sink=sink, model=model) as rec:
        for step in range(4):
            x, y = next(data)
            if step % 2:
                model.eval()
                with torch.no_grad():
                    loss = (model(x) - y).square().mean()
                model.train()
            else:
                loss = (model(x) - y).square().mean()
                loss.backward()
                opt.step()
                opt.zero_grad()
            rec.step(loss=loss)
    train, evaluate = sink.records[2], sink.records[3]
    for record in (train, evaluate):
        _check_clean(record)
    phases = _phases(evaluate)
    assert phases[Phase.BACKWARD] == 0
    assert phases[Phase.OPTIMIZER] == 0
    assert phases[Phase.FORWARD] > 0
    assert not any("dropout" in op.name or "bernoulli" in op.name for op in evaluate.graph.ops)
    assert any("bernoulli" in op.name or "dropout" in op.name for op in train.graph.ops)
    # BatchNorm's running statistics are buffers, updated in training steps only.
    assert "1.running_mean" in _names(train, Role.BUFFER)
    buffer_writes = [t for t in train.graph.tensors if t.name == "1.running_mean" and t.version > 0]
    assert buffer_writes
    assert not [t for t in evaluate.graph.tensors if t.name == "1.running_mean" and t.version > 0]


def test_model_moved_to_another_dtype_keeps_its_names() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = ListSink()
    with recorder.record(sink=sink, model=model) as rec:
        for step in range(3):
            if step == 1:
                model.to(torch.float64)  # inside a recorded step: the copies are recorded
            dtype = torch.float64 if step else torch.float32
            model(torch.randn(4, 8, dtype=dtype)).square().mean().backward()
            opt.step()
            opt.zero_grad()
            rec.step()
    before, moved, after = sink.records
    for record in sink.records:
        _check_clean(record)
    f32, f64 = DType.parse("float32"), DType.parse("float64")
    assert {t.dtype for t in before.graph.tensors if t.role is Role.PARAMETER} == {f32}
    assert {t.dtype for t in after.graph.tensors if t.role is Role.PARAMETER} == {f64}
    assert _names(after, Role.PARAMETER) == _names(before, Role.PARAMETER)
    copies = [op for op in moved.graph.ops if op.name == "aten::_to_copy.default"]
    assert len(copies) >= 4
    assert all(op.phase is Phase.OTHER for op in copies)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")
def test_model_moved_to_cuda_and_back() -> None:  # pragma: no cover - no GPU in CI
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = ListSink()
    with recorder.record(sink=sink, model=model, values="all") as rec:
        for step in range(3):
            device = "cuda" if step == 1 else "cpu"
            model.to(device)
            model(torch.randn(4, 8, device=device)).square().mean().backward()
            opt.step()
            opt.zero_grad()
            rec.step()
    cuda = sink.records[1]
    _check_clean(cuda)
    assert {t.device for t in cuda.graph.tensors if t.role is Role.PARAMETER} == {"cuda:0"}
    assert cuda.op_stats is not None
    assert (cuda.op_stats["device_ns"] >= 0).any()
    assert _names(cuda, Role.PARAMETER) == _names(sink.records[0], Role.PARAMETER)


def test_values_and_stats_agree_for_every_dtype_in_a_mixed_step() -> None:
    """bf16, fp16, fp32, fp64, int64 and bool tensors of one step: stats equal their values."""
    sink = ListSink()
    with recorder.record(sink=sink, values="all") as rec:
        x = torch.randn(20000)
        for dtype in (torch.bfloat16, torch.float16, torch.float64):
            y = x.to(dtype) * 2
            _ = (y > 0).sum()
        _ = -torch.relu(x) * 0.0  # negative zeros among positive ones
        rec.step()
    (record,) = sink.records
    assert record.stats is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for i, v in record.values.items():
            row = record.stats[i]
            spec = record.graph.tensors[i]
            assert int(row["fingerprint"]) == fingerprint(v)
            if spec.dtype == DType.parse("bfloat16"):
                continue  # raw bits: compared by fingerprint
            x64 = v.astype(np.float64)
            assert row["zero"] == int((x64 == 0).sum()), spec
            if x64.size:
                assert row["min"] == x64.min()
                assert row["max"] == x64.max()
