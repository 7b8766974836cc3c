"""Write a small trace and read every part of it back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tracefmt
from tests.synth import mlp_graph, synthetic_step
from tracefmt import Phase, Role, TraceWriter, WriterClosedError


def test_steps_ops_tensors_read_back(small_trace: Path) -> None:
    with tracefmt.open(small_trace) as trace:
        assert trace.steps() == [0, 1, 2, 3, 4]
        step = trace.step(3)
        assert [op.phase for op in step.ops][:2] == [Phase.FORWARD, Phase.FORWARD]
        assert step.ops[0].module == "layers.0"
        assert step.tensors[1].role is Role.PARAMETER
        assert step.tensors[1].values().dtype.name == "bfloat16"
        assert step.scalars.keys() == {"loss"}
        assert step.events[0].message == "synthetic step 3"
        assert step.ops[-1].attrs == {"alpha": -0.01}


def test_values_bit_exact(tmp_path: Path) -> None:
    graph = mlp_graph()
    record = synthetic_step(7, graph, np.random.default_rng(1))
    with TraceWriter(tmp_path / "t.tft.h5") as w:
        w.write_step(record)
    with tracefmt.open(tmp_path / "t.tft.h5") as trace:
        step = trace.step(7)
        for i, array in record.values.items():
            got = step.tensors[i].values()
            assert got.dtype == array.dtype
            assert got.tobytes() == np.ascontiguousarray(array).tobytes()


def test_graph_is_stored_once(tmp_path: Path) -> None:
    graph = mlp_graph()
    rng = np.random.default_rng(0)
    with TraceWriter(tmp_path / "t.tft.h5") as w:
        for s in range(4):
            w.write_step(synthetic_step(s, graph, rng, with_values=False))
    with tracefmt.open(tmp_path / "t.tft.h5") as trace:
        assert {summary.graph for summary in trace.summaries()} == {0}
        assert trace.rank_file().length("ops") == graph.num_ops


def test_closed_writer_refuses_writes(tmp_path: Path) -> None:
    w = TraceWriter(tmp_path / "t.tft.h5")
    w.close()
    w.close()  # idempotent
    with pytest.raises(WriterClosedError, match="closed"):
        w.write_step(synthetic_step(0, mlp_graph(), np.random.default_rng(0)))


def test_steps_must_increase(tmp_path: Path) -> None:
    graph = mlp_graph()
    rng = np.random.default_rng(0)
    with TraceWriter(tmp_path / "t.tft.h5") as w:
        w.write_step(synthetic_step(5, graph, rng))
        with pytest.raises(ValueError, match="increasing"):
            w.write_step(synthetic_step(5, graph, rng))


def test_unflushed_steps_are_not_visible(tmp_path: Path) -> None:
    path = tmp_path / "t.tft.h5"
    graph = mlp_graph()
    rng = np.random.default_rng(0)
    with TraceWriter(path) as w:
        w.write_step(synthetic_step(0, graph, rng))
        w.flush()
        w.write_step(synthetic_step(1, graph, rng))
        with tracefmt.open(path) as trace:
            assert trace.steps() == [0]
    with tracefmt.open(path) as trace:
        assert trace.steps() == [0, 1]
