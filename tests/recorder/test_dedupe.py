"""Graph deduplication on a real training run: the GPT example stores a graph or two, not one per step.

AdamW's ``addcdiv_`` and ``div`` take a new scalar every step, and the example's data loader slices
its text at new positions (new ``slice`` bounds, new storage offsets of the views).  Since format
1.1 those are a step's own values, stored apart from its graph (spec section 5.13).
"""

from __future__ import annotations

from pathlib import Path

import tracefmt
from recorder.examples import gpt
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
        offsets = [(x.meta.storage_offset, y.meta.storage_offset)
                   for x, y in zip(a.tensors, b.tensors, strict=True)]
        assert any(x != y for x, y in offsets)
    assert not [f for f in validate(out) if f.severity == "error"]
