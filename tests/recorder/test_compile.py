"""torch.compile under the recorder: the real (eager) ops are recorded and the user is told, never
an empty or wrong graph in silence.

Under a ``TorchDispatchMode`` the compiled code is not used (FACTS): the step runs eagerly and
every aten op is seen.  The recorder says so in a warning and a ``compile_bypassed`` event of the
step.  Compiling takes seconds (Dynamo), so the backend is ``eager``: what is tested is Dynamo's
frame handling, which is what a dispatch mode interacts with.
"""

from __future__ import annotations

import collections
import warnings

import pytest
import torch

import recorder
from tests.recorder._util import ListSink, OpLog, mlp
from tracefmt.model import Phase

pytest.importorskip("torch._dynamo")


def _eager_ops(model: torch.nn.Module, x: torch.Tensor) -> list[str]:
    with OpLog() as log:
        model(x).sum().backward()
    model.zero_grad(set_to_none=True)
    return [name for name, _, _ in log.ops]


def test_compiled_module_records_the_eager_ops_and_says_so() -> None:
    torch._dynamo.reset()
    model = mlp()
    x = torch.randn(4, 8)
    expected = _eager_ops(model, x)
    compiled = torch.compile(model, backend="eager")
    compiled(x).sum().backward()  # compiled outside the recorder
    model.zero_grad(set_to_none=True)
    sink = ListSink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with recorder.record(sink=sink, model=model) as rec:
            with OpLog() as inside:
                compiled(x).sum().backward()
            rec.step()
    (record,) = sink.records
    names = [op.name for op in record.graph.ops]
    assert names == [name for name, _, _ in inside.ops]
    forward = [op.name for op in record.graph.ops if op.phase is Phase.FORWARD]
    assert forward == expected[: len(forward)]  # the eager forward, op for op
    assert collections.Counter(op.phase for op in record.graph.ops)[Phase.BACKWARD] > 0
    assert [e.kind for e in record.events] == ["compile_bypassed"]
    assert any("torch.compile" in str(w.message) for w in caught)
    # Off the recorder, the compiled module runs compiled again.
    compiled(x).sum().backward()


def test_compiled_function_is_recorded_not_empty() -> None:
    torch._dynamo.reset()
    model = mlp()
    x = torch.randn(4, 8)

    def loss_fn(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return m(x).square().mean()

    # .sum() in the helper vs .square().mean() here; OpLog is a dispatch mode, under which
    # AccumulateGrad detaches each gradient (tests/recorder/test_engines.py): the native engine
    # records the program without those detaches
    eager = _eager_ops(model, x)
    expected = len(eager) - 1 - eager.count("aten::detach.default")
    compiled = torch.compile(loss_fn, backend="eager")
    sink = ListSink()
    with recorder.record(sink=sink, model=model) as rec:
        compiled(model, x).backward()
        rec.step()
    (record,) = sink.records
    forward = [op for op in record.graph.ops if op.phase is Phase.FORWARD]
    assert len(forward) >= 4
    assert {op.module for op in forward} >= {"0", "1", "2"}
    assert len(record.graph.ops) >= expected
    # Dynamo's tracing (fake tensors, on the meta device) is not part of the step
    assert not [t for t in record.graph.tensors if t.device == "meta"]
