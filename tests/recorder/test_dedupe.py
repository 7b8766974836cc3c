"""Graph deduplication on a real training run: the GPT example stores a graph or two, not one per step.

AdamW's ``addcdiv_`` and ``div`` take a new scalar every step, and the example's data loader slices
its text at new positions (new ``slice`` bounds, new storage offsets of the views).  Since format
1.1 those are a step's own values, stored apart from its graph (spec section 5.13).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import recorder
import tracefmt
from recorder import assemble
from recorder.captured import OpRow, RawStep, TensorRow
from recorder.examples import gpt
from tests.recorder._util import ListSink
from tracefmt.dtypes import DType
from tracefmt.model import Phase, Role
from tracefmt.records import Graph, StepRecord
from tracefmt.validate import validate

STEPS = 6


def test_gpt_steps_share_their_graph(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert gpt.main(["--steps", str(STEPS), "--out", str(out), "--quiet"]) == 0
    with tracefmt.open(out) as trace:
        summaries = trace.summaries()
        assert len(summaries) == STEPS
        graphs = trace.rank_file().length("graphs")
        # step 0 creates the optimizer state, so its graph differs; the later steps share one
        assert graphs <= 2, [s.graph for s in summaries]
        assert len({s.graph for s in summaries[2:]}) == 1
        # ... and still have their own attributes and storage offsets
        a, b = trace.step(STEPS - 2), trace.step(STEPS - 1)
        assert a.graph == b.graph
        changed = {x.name for x, y in zip(a.ops, b.ops, strict=True) if x.attrs != y.attrs}
        assert "aten::addcdiv_.default" in changed
        assert "aten::slice.Tensor" in changed
        offsets = [
            (x.meta.storage_offset, y.meta.storage_offset)
            for x, y in zip(a.tensors, b.tensors, strict=True)
        ]
        assert any(x != y for x, y in offsets)
    assert not [f for f in validate(out) if f.severity == "error"]


def test_graph_cache_builds_the_graph_a_fresh_build_would(monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer thread builds a repeating step's graph from the last one (``GraphCache``): it
    must equal the graph built from scratch, digest included, on every step of a real run."""
    built: list[tuple[Graph, Graph]] = []
    original = assemble.build_record

    def checked(raw: RawStep, graphs: assemble.GraphCache | None = None) -> StepRecord:
        record = original(raw, graphs)
        built.append((record.graph, assemble.build_graph(raw)))
        return record

    monkeypatch.setattr(assemble, "build_record", checked)
    variants = []
    variant = Graph.variant

    def counted(self: Graph, *args: Any, **kwargs: Any) -> Graph:
        variants.append(1)
        return variant(self, *args, **kwargs)

    monkeypatch.setattr(Graph, "variant", counted)
    model, opt, data = gpt.build()
    with recorder.record(sink=ListSink(), model=model) as rec:
        for step in range(STEPS):
            x, y = data.batch(step)
            model(x, y).backward()
            opt.step()
            opt.zero_grad()
            rec.step()
    assert len(built) == STEPS
    for cached, fresh in built:
        assert cached.ops == fresh.ops
        assert cached.tensors == fresh.tensors
        assert cached.digest == fresh.digest
    assert len(variants) >= STEPS - 2  # the later steps came from the cache
    assert built[-1][0].ops != built[-2][0].ops  # ... and their arguments did change


def _raw(step: int, attrs: dict[str, object], offset: int) -> RawStep:
    tensors = [
        TensorRow(DType.FLOAT32, (4,), (1,), "cpu", -1, 0, 0, offset),
        TensorRow(DType.FLOAT32, (4,), (1,), "cpu", 0, 0, 0, 0),
    ]
    ops = [OpRow("aten::add.Tensor", Phase.FORWARD, "m", ((0, 0, -1),), (1,), attrs, None)]
    return RawStep(
        step, ops, tensors, [Role.INPUT, Role.ACTIVATION], ["x", None], [10], None, {}, [], []
    )


def test_graph_cache_keeps_int_float_and_bool_arguments_apart() -> None:
    """``1 == 1.0 == True`` in Python; the recorded argument must still say which it was."""
    cache = assemble.GraphCache()
    steps = [
        _raw(0, {"alpha": 1}, 0),
        _raw(1, {"alpha": 1.0}, 4),
        _raw(2, {"alpha": True}, 4),
        _raw(3, {"alpha": True}, 8),
        _raw(4, {}, 8),
    ]
    for raw in steps:
        graph = cache.graph(raw)
        fresh = assemble.build_graph(raw)
        assert graph.ops == fresh.ops
        assert graph.tensors == fresh.tensors
        assert graph.digest == fresh.digest
    assert [cache.graph(r).ops[0].attrs for r in steps] == [
        '{"alpha":1}',
        '{"alpha":1.0}',
        '{"alpha":true}',
        '{"alpha":true}',
        None,
    ]
