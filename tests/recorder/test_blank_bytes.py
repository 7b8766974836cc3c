"""Bytes written outside the dispatcher into memory an ``empty`` op allocated (recorder.identity).

DDP's first bucket rebuild (``Reducer::sync_bucket_indices``, in the forward of step 1) writes the
bucket indices into an ``at::empty`` tensor through a ``TensorAccessor``, never through an op,
and ``copy_``-s it to the tensor it broadcasts.  The recorder linked that ``copy_`` to the
``empty``, whose bytes it never measured, so a replay copied uninitialized memory and
``replayer check`` failed step 1.  Such a read is now a value from outside the step, measured and
copied like any other; reads that only write, view or size up the blank memory keep the link.

In-process (both engines, a ``ctypes`` write standing in for the accessor) and under torchrun
(the GPT example with ``--ddp``, both engines, steps 0 to 2 with every value).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

import recorder
import tracefmt
from recorder.engine import extension
from replayer.check import check_step
from tests.torchrun import torchrun_ok
from tracefmt.reader import Step

ENGINES = [
    "python",
    pytest.param(
        "native",
        marks=pytest.mark.skipif(
            extension.load().module is None,
            reason=f"the native engine cannot be built here: {extension.load().reason}",
        ),
    ),
]
SMALL = ["--layers", "1", "--embd", "16", "--heads", "2", "--block", "16", "--batch", "4"]


def _fill_outside(t: torch.Tensor, values: list[int]) -> None:
    """Write ``values`` into ``t``'s memory without an op (as a C++ ``TensorAccessor`` does)."""
    src = np.asarray(values, dtype=np.int32)
    assert t.dtype == torch.int32
    assert t.is_contiguous()
    assert t.numel() == src.size
    ctypes.memmove(t.data_ptr(), src.ctypes.data, src.nbytes)


def _program() -> None:
    indices = torch.empty(5, dtype=torch.int32)
    _fill_outside(indices, [3, 1, 4, 1, 5])
    sent = torch.empty(5, dtype=torch.int32)
    sent.copy_(indices)  # reads bytes no op wrote: the accessor's
    (sent * 2).sum()
    grid = torch.empty(6, dtype=torch.int32)
    _fill_outside(grid, [2, 7, 1, 8, 2, 8])
    grid.view(2, 3).t().clone()  # read through views of the blank memory
    torch.zeros_like(torch.empty(3))  # reads its shape only: linked to the empty
    filled = torch.empty(4)
    filled.fill_(2.0)  # the ordinary pattern: an op writes what empty allocated
    (filled * 3).sum()
    scaled = torch.empty(3, dtype=torch.int32)
    _fill_outside(scaled, [3, -2, 4])
    scaled.mul_(2)  # in place: reads the bytes it writes


def _ops(step: Step, name: str) -> list[int]:
    return [op.index for op in step.ops if op.name == name]


@pytest.mark.parametrize("engine", ENGINES)
def test_bytes_written_outside_the_dispatcher_are_read_as_values_from_outside(
    engine: str, tmp_path: Path
) -> None:
    with recorder.record(tmp_path / "run", engine=engine, values="all") as rec:  # type: ignore[arg-type]
        _program()
        rec.step()
    trace = tracefmt.open(tmp_path / "run")
    assert trace.provenance.extra["recorder_engine"] == engine
    step = trace.step(0)
    empties = set(_ops(step, "aten::empty.memory_format"))
    copy = step.ops[_ops(step, "aten::copy_.default")[0]]
    source = step.tensors[copy.inputs[1]]
    assert source.meta.producer is None  # from outside the step, not from the empty
    assert source.meta.version == 1  # the second value the indices tensor held
    np.testing.assert_array_equal(source.values(), [3, 1, 4, 1, 5])
    assert step.tensors[copy.inputs[0]].meta.producer in empties  # written only: still linked
    clone = step.ops[_ops(step, "aten::clone.default")[0]]
    seen = step.tensors[clone.inputs[0]]
    assert seen.meta.producer is None
    np.testing.assert_array_equal(seen.values(), [[2, 8], [7, 2], [1, 8]])
    zeros = step.ops[_ops(step, "aten::zeros_like.default")[0]]
    assert step.tensors[zeros.inputs[0]].meta.producer in empties
    fill = step.ops[_ops(step, "aten::fill_.Scalar")[0]]
    assert step.tensors[fill.inputs[0]].meta.producer in empties
    mul = next(op for op in step.ops if op.name.startswith("aten::mul_."))
    scaled = step.tensors[mul.inputs[0]]
    assert scaled.meta.producer is None  # an in-place op reads its self: from outside
    np.testing.assert_array_equal(scaled.values(), [3, -2, 4])
    # nothing else entered from outside: the blank values were never measured
    assert sum(t.meta.producer is None for t in step.tensors) == 3
    for chain in (False, True):
        report = check_step(trace, 0, chain=chain)
        assert report.passed, [(r.op, r.name, r.reason) for r in report.failed]
        statuses = {r.op: r.status for r in report.results}
        assert statuses[copy.index] == statuses[clone.index] == "checked"


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="torch.distributed with gloo is not available in this torch build",
)
@pytest.mark.parametrize("engine", ENGINES)
def test_ddp_step_one_replays_after_the_bucket_rebuild(
    engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if engine == "python":
        monkeypatch.setenv("TRACEFMT_NATIVE_ENGINE", "0")  # the ranks' record() takes "auto"
    run = tmp_path / "run"
    args = ["-m", "recorder.examples.gpt", "--ddp", "--steps", "3", "--out", str(run)]
    torchrun_ok([*args, *SMALL, "--values", "all", "--quiet"], timeout=150, out=run)
    trace = tracefmt.open(run)
    assert trace.provenance.extra["recorder_engine"] == engine
    for rank in (0, 1):
        step = trace.step(1, rank)
        # the rebuild's first copy_: the CPU indices tensor (every parameter's index, then the
        # number of buckets) into the tensor the broadcast sends
        copy = step.ops[_ops(step, "aten::copy_.default")[0]]
        indices = step.tensors[copy.inputs[1]]
        assert indices.meta.producer is None
        values = indices.values()
        assert sorted(values[:-1].tolist()) == list(range(values.size - 1))
        assert values[-1] >= 1
        for s in (0, 1, 2):
            for chain in (False, True):
                report = check_step(trace, s, rank=rank, chain=chain)
                failed = [(r.op, r.name, r.reason) for r in report.failed]
                assert report.passed, f"step {s} rank {rank} chain={chain}: {failed}"
