"""Collective and point-to-point ops recorded as graph ops (``c10d::*``, ``_c10d_functional::*``).

The torchrun tests run ``tests/recorder/_collectives_child.py`` on 2 ranks (gloo, CPU, loopback),
each with a timeout, and read both rank files back: op names, the ``"c10d"`` attribute (group id
and ranks, kind, per-group sequence number, reduce op, root and peer as global ranks), shapes and
dtypes, and the fingerprints of the values (all-reduce outputs equal on both ranks and equal to
the expected sum; point-to-point writes left unmeasured).  One in-process test uses a 1-rank gloo
group to check what the capture hands over (``RawStep.process_groups``, no script objects in
attributes) without launching anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist

import tracefmt
from recorder.capture import StepCapture
from recorder.engine.extension import load as load_engine
from recorder.options import Options
from recorder.tracking import Names
from tests.torchrun import torchrun_ok
from tracefmt import group_id
from tracefmt.dtypes import fingerprint
from tracefmt.model import OpNode, Phase

CHILD = Path(__file__).with_name("_collectives_child.py")
WORLD = group_id("0", [0, 1])

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is not available in this torch build",
)


def _torchrun(scenario: str, out: Path, engine: str = "auto") -> Path:
    run = out / scenario
    torchrun_ok([str(CHILD), scenario, str(run), engine], out=run)
    return run


class _Rank:
    """One rank's recorded steps and what the child saw."""

    def __init__(self, run: Path, rank: int) -> None:
        self.seen: dict[str, Any] = json.loads((run / f"rank{rank}.json").read_text())
        with tracefmt.open(run / f"rank-{rank:05d}.tft.h5") as trace:
            self.steps = {n: trace.step(n) for n in trace.steps()}

    def comms(self, step: int = 0) -> list[OpNode]:
        return [op for op in self.steps[step].ops if "c10d" in op.name]

    def fp(self, step: int, tensor: int) -> int | None:
        stats = self.steps[step].tensors[tensor].stats
        return None if stats is None else stats.fingerprint

    def shape(self, step: int, tensor: int) -> tuple[str, tuple[int, ...]]:
        t = self.steps[step].tensors[tensor]
        return t.dtype.label, t.shape


@pytest.fixture(scope="module")
def explicit(tmp_path_factory: pytest.TempPathFactory) -> list[_Rank]:
    run = _torchrun("explicit", tmp_path_factory.mktemp("collectives"))
    return [_Rank(run, 0), _Rank(run, 1)]


def _f32(*values: float) -> int:
    return fingerprint(np.asarray(values, dtype=np.float32))


def test_each_collective_is_an_op_with_its_group_kind_and_sequence(explicit: list[_Rank]) -> None:
    expected_world = [
        ("c10d::allreduce_.default", "collective", 0, "SUM", None, None),
        ("c10d::allreduce_.default", "collective", 1, "AVG", None, None),
        ("c10d::broadcast_.default", "collective", 2, None, 1, None),
        ("c10d::allgather_.default", "collective", 3, None, None, None),
        ("c10d::_allgather_base_.default", "collective", 4, None, None, None),
        ("c10d::_reduce_scatter_base_.default", "collective", 5, "SUM", None, None),
        ("c10d::barrier.default", "collective", 6, None, None, None),
        ("p2p", "p2p", 0, None, None, None),
        ("_c10d_functional::all_reduce.default", "collective", 7, "SUM", None, None),
        ("_c10d_functional::wait_tensor.default", "collective", 7, "SUM", None, None),
    ]
    for rank, r in enumerate(explicit):
        ops = [op for op in r.comms() if "c10d" in op.attrs]
        world = [op for op in ops if op.attrs["c10d"]["group"] == WORLD]
        got = [
            (
                op.name,
                op.attrs["c10d"]["kind"],
                op.attrs["c10d"]["seq"],
                op.attrs["c10d"]["reduce_op"],
                op.attrs["c10d"]["root"],
                op.attrs["c10d"]["peer"],
            )
            for op in world
        ]
        p2p = ("c10d::send.default", "p2p", 0, None, None, 1) if rank == 0 else None
        p2p = p2p or ("c10d::recv_.default", "p2p", 0, None, None, 0)
        want = [p2p if row[0] == "p2p" else row for row in expected_world]
        assert got == want, rank
        for op in world:
            c = op.attrs["c10d"]
            assert (c["group_name"], c["group_ranks"], c["rank"]) == ("0", [0, 1], rank)
            assert c["coalesced"] is None
            assert op.phase is Phase.OTHER
            assert not any("ScriptObject" in repr(v) for v in op.attrs.values())
        backend = [op.attrs["c10d"]["backend_seq"] for op in world if "wait" not in op.name]
        assert backend == sorted(backend)
        assert all(isinstance(b, int) for b in backend)
    # the broadcast on rank 1's own group [1]: the group-local root 0 is global rank 1
    (sub,) = [op for op in explicit[1].comms() if op.attrs.get("c10d", {}).get("group_ranks") == [1]]
    assert sub.attrs["c10d"]["group"] == group_id("1", [1])
    assert (sub.attrs["root_rank"], sub.attrs["c10d"]["root"], sub.attrs["c10d"]["seq"]) == (0, 1, 0)
    assert not [op for op in explicit[0].comms() if op.attrs.get("c10d", {}).get("group_ranks") == [1]]


def test_inputs_and_outputs_have_the_shapes_the_ops_moved(explicit: list[_Rank]) -> None:
    f32 = "float32"
    expected = {
        "c10d::allreduce_.default": ([(f32, (4,))], [(f32, (4,))]),
        "c10d::broadcast_.default": ([(f32, (3,))], [(f32, (3,))]),
        "c10d::allgather_.default": ([(f32, (2,))], [(f32, (2,)), (f32, (2,))]),
        "c10d::_allgather_base_.default": ([(f32, (2,))], [(f32, (4,))]),
        "c10d::_reduce_scatter_base_.default": ([(f32, (4,))], [(f32, (2,))]),
        "c10d::barrier.default": ([("uint8", (1,))], []),
        "c10d::send.default": ([(f32, (5,))], []),
        "c10d::recv_.default": ([], [(f32, (5,))]),
        "_c10d_functional::all_reduce.default": ([(f32, (3,))], [(f32, (3,))]),
    }
    for r in explicit:
        for op in r.comms():
            if op.name in expected and op.attrs["c10d"]["group"] == WORLD:
                ins = [r.shape(0, i) for i in op.inputs]
                outs = [r.shape(0, i) for i in op.outputs]
                assert (ins, outs) == expected[op.name], op.name


def test_all_reduce_outputs_are_final_and_equal_on_both_ranks(explicit: list[_Rank]) -> None:
    def outputs(r: _Rank, name: str) -> list[int | None]:
        return [r.fp(0, op.outputs[0]) for op in r.comms() if op.name == name]

    for r in explicit:
        assert outputs(r, "c10d::allreduce_.default") == [_f32(3, 3, 3, 3), _f32(1.5, 1.5, 1.5, 1.5)]
        assert r.seen["summed"] == [3.0] * 4
        assert r.seen["averaged"] == [1.5] * 4
        # broadcast from rank 1: everyone holds rank 1's values (10.0) afterwards
        assert outputs(r, "c10d::broadcast_.default")[0] == _f32(10, 10, 10)
        assert outputs(r, "c10d::_allgather_base_.default") == [_f32(0, 0, 1, 1)]
        # functional: the collective's own output is not final yet; wait_tensor's is
        assert outputs(r, "_c10d_functional::all_reduce.default") == [None]
        assert outputs(r, "_c10d_functional::wait_tensor.default") == [_f32(5, 5, 5)]
    scattered = [
        r.fp(0, op.outputs[0]) for r in explicit for op in r.comms() if "reduce_scatter" in op.name
    ]
    assert scattered == [_f32(1, 3), _f32(5, 7)]  # arange(4) + rank, summed, halves


def test_point_to_point_writes_are_left_unmeasured(explicit: list[_Rank]) -> None:
    (send,) = [op for op in explicit[0].comms() if op.name == "c10d::send.default"]
    (recv,) = [op for op in explicit[1].comms() if op.name == "c10d::recv_.default"]
    assert explicit[0].fp(0, send.inputs[0]) == _f32(*[7.0] * 5)
    assert explicit[1].fp(0, recv.outputs[0]) is None  # never waited on: not final when recorded
    assert explicit[1].seen["box"] == [7.0] * 5


@pytest.fixture(scope="module", params=["python", "native"])
def ddp(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list[_Rank]:
    """A DDP job recorded by each engine (engine="native" records its c10d collectives too)."""
    if request.param == "native" and load_engine().module is None:
        pytest.skip(f"the native engine cannot be built here: {load_engine().reason}")
    run = _torchrun("ddp", tmp_path_factory.mktemp("collectives"), request.param)
    ranks = [_Rank(run, 0), _Rank(run, 1)]
    engines = {tracefmt.open(run).provenance.extra["recorder_engine"]}
    assert engines == {request.param}
    return ranks


def test_ddp_bucket_all_reduce_is_recorded_in_backward(ddp: list[_Rank]) -> None:
    for r in ddp:
        buckets = {n: [op for op in r.comms(n) if op.name == "c10d::allreduce_.default"] for n in (0, 1)}
        assert [len(b) for b in buckets.values()] == [1, 2]  # step 1 rebuilds the buckets
        for step, ops in buckets.items():
            # every collective of the step counts, the bucket-index broadcasts of step 1 too
            issued = [op for op in r.comms(step) if op.name.startswith("c10d::")]
            assert [op.attrs["c10d"]["seq"] for op in issued] == list(range(len(issued)))
            assert [op.name for op in issued][-len(ops) :] == [op.name for op in ops]
            for op in ops:
                assert op.phase is Phase.BACKWARD
                assert op.attrs["c10d"]["reduce_op"] == "SUM"
                assert op.attrs["c10d"]["group"] == WORLD
        assert sum(r.shape(0, op.outputs[0])[1][0] for op in buckets[0]) == 4 * 8 + 8 + 8 * 2 + 2
    reduced = [
        [ddp[k].fp(0, op.outputs[0]) for op in ddp[k].comms(0) if "allreduce" in op.name] for k in (0, 1)
    ]
    assert reduced[0] == reduced[1]
    assert None not in reduced[0]


def test_ddp_gradients_are_named_and_hold_the_reduced_values(ddp: list[_Rank]) -> None:
    for r in ddp:
        for step in (0, 1):
            last: dict[str, int] = {}
            for t in r.steps[step].tensors:
                if t.name is not None and t.name.endswith(".grad"):
                    last[t.name] = t.index  # the value the gradient holds last in the step
            assert sorted(last) == ["0.bias.grad", "0.weight.grad", "2.bias.grad", "2.weight.grad"]
            for name, index in last.items():
                expected = r.seen["grads"][step][name.removesuffix(".grad")]
                assert r.fp(step, index) == _f32(*expected), (step, name)
    for step in (0, 1):
        assert ddp[0].seen["grads"][step] == ddp[1].seen["grads"][step]


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory: pytest.TempPathFactory) -> list[_Rank]:
    run = _torchrun("fsdp", tmp_path_factory.mktemp("collectives"))
    return [_Rank(run, 0), _Rank(run, 1)]


def test_fsdp2_all_gathers_and_reduce_scatters_are_recorded_and_match(fsdp: list[_Rank]) -> None:
    for step in (0, 1):
        keyed = []
        for r in fsdp:
            ops = [op for op in r.comms(step) if op.name.startswith("c10d::")]
            names = [op.name for op in ops]
            assert names.count("c10d::_allgather_base_.default") == 4, names
            assert names.count("c10d::_reduce_scatter_base_.default") == 2, names
            assert all(op.attrs["c10d"]["group"] == WORLD for op in ops)
            assert {op.attrs["c10d"]["reduce_op"] for op in ops if "reduce" in op.name} == {"AVG"}
            keyed.append(
                {(op.attrs["c10d"]["seq"], op.name, r.shape(step, op.outputs[0])) for op in ops}
            )
            copy_ops = {op.name for op in r.steps[step].ops if op.name.startswith("fsdp::")}
            assert copy_ops == {
                "fsdp::all_gather_copy_in.default",
                "fsdp::split_with_sizes_copy.default",
                "fsdp::chunk_cat.default",
            }
        assert keyed[0] == keyed[1]
        gathered = [
            [
                r.fp(step, op.outputs[0])
                for op in r.comms(step)
                if op.name == "c10d::_allgather_base_.default"
            ]
            for r in fsdp
        ]
        assert gathered[0] == gathered[1]
        assert None not in gathered[0]


def test_capture_hands_over_process_groups_and_no_script_objects(tmp_path: Path) -> None:
    """One process, a 1-rank gloo group: the capture's own view of a collective."""
    if dist.is_initialized():
        pytest.skip("a default process group is already initialised in this process")
    store = dist.HashStore()  # type: ignore[attr-defined]
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        capture = StepCapture(0, Options.build(capture=("graph", "stats")), Names())
        with capture.install():
            t = torch.ones(3)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            dist.barrier()
        raw = capture.finish()
    finally:
        dist.destroy_process_group()
    assert raw.process_groups == (tracefmt.ProcessGroupInfo(group_id("0", [0]), "0", (0,), "gloo"),)
    comms = [op for op in raw.ops if op.name.startswith("c10d::")]
    assert [op.name for op in comms] == ["c10d::allreduce_.default", "c10d::barrier.default"]
    for op in comms:
        assert op.attrs is not None
        assert "process_group" not in op.attrs
        assert "reduce_op" not in op.attrs
        assert "ScriptObject" not in json.dumps(op.attrs)
    assert comms[0].attrs is not None
    assert comms[0].attrs["c10d"]["reduce_op"] == "MAX"


def test_no_communication_ops_without_a_process_group() -> None:
    capture = StepCapture(0, Options.build(), Names())
    with capture.install():
        torch.nn.Linear(3, 2)(torch.ones(1, 3)).sum().backward()
    raw = capture.finish()
    assert raw.process_groups == ()
    assert raw.ops
    assert all(op.name.startswith("aten::") for op in raw.ops)
