"""Per-op memory on CPU (issue 14): ``mem_bytes`` is the bytes of storage an op's outputs newly
hold, counted once per storage; a view, an in-place op or an ``out=`` op allocates nothing.
Both capture engines record it, and ``tracefmt show --sort memory`` lists it.

The expected sizes come from the recorded output tensors' shapes and dtypes (every fresh output
of the model below is contiguous, so its storage holds exactly its elements), and from what each
op is by name: a view (an alias of its input), in-place (``add_``) or ``out=``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

import recorder
import tracefmt
from recorder.engine import extension
from tracefmt.cli import main
from tracefmt.dtypes import DTYPE_INFO
from tracefmt.reader import Step
from tracefmt.summary import sort_ops

#: Ops whose output aliases an input's storage (a view, or a reshape of a contiguous tensor).
VIEWS = frozenset(
    {
        "_reshape_alias",
        "_unsafe_view",
        "alias",
        "as_strided",
        "detach",
        "expand",
        "permute",
        "select",
        "slice",
        "split",
        "split_with_sizes",
        "squeeze",
        "t",
        "transpose",
        "unbind",
        "unsqueeze",
        "view",
    }
)


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 16)
        self.out = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc(x))  # 3-D input: views and _unsafe_view around the mm
        a, b = h.chunk(2, dim=-1)  # views (aten::split)
        s = a + b  # fresh
        s.mul_(0.5)  # in-place
        values, _ = s.max(dim=-1)  # two fresh outputs: float32 and int64
        half = s.to(torch.float16)  # fresh, 2 bytes an element
        with torch.no_grad():
            doubled = torch.empty_like(s)
            torch.mul(s, 2.0, out=doubled)  # out=: writes an existing storage
        out: torch.Tensor = self.out(s)
        return out.sum() + values.sum() + half.float().sum() + doubled.sum()


def _record(path: Path, engine: str) -> Path:
    torch.manual_seed(0)
    model = _Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(2, 3, 8)
    with recorder.record(path, model=model, engine=engine) as rec:  # type: ignore[arg-type]
        for _ in range(2):
            model(x).backward()
            opt.step()
            opt.zero_grad()
            rec.step()
    return path


@pytest.fixture(scope="module", params=["python", "native"])
def trace_path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    engine = request.param
    if engine == "native" and extension.load().module is None:
        pytest.skip(f"the native engine cannot be built here: {extension.load().reason}")
    path = _record(tmp_path_factory.mktemp(engine) / "run", engine)
    with tracefmt.open(path) as trace:
        assert trace.provenance.extra["recorder_engine"] == engine
    return path


def _kind(name: str) -> str:
    """``view``, ``inplace``, ``out`` or ``fresh``: what op ``aten::name.overload`` does to
    its outputs' storage, from its name alone."""
    base, _, overload = name.removeprefix("aten::").partition(".")
    if base in VIEWS:
        return "view"
    if base.endswith("_"):
        return "inplace"
    if overload == "out" or overload.startswith("out_"):
        return "out"
    return "fresh"


def _expected(step: Step, outputs: tuple[int, ...]) -> int:
    return sum(
        math.prod(step.tensors[i].shape) * DTYPE_INFO[step.tensors[i].dtype].itemsize for i in outputs
    )


def test_each_ops_memory_is_its_fresh_outputs_storage(trace_path: Path) -> None:
    with tracefmt.open(trace_path) as trace:
        steps = [trace.step(s) for s in trace.steps()]
    kinds_seen: dict[str, int] = {}
    for step in steps:
        for op in step.ops:
            kind = _kind(op.name)
            kinds_seen[kind] = kinds_seen.get(kind, 0) + 1
            want = _expected(step, op.outputs) if kind == "fresh" else 0
            assert op.mem_bytes == want, (kind, op.index, op.name)
    assert set(kinds_seen) == {"view", "inplace", "out", "fresh"}
    names = {op.name for op in steps[0].ops}
    # the cases the model is built to have: two fresh outputs of two dtypes, a float16 copy
    assert {"aten::max.dim", "aten::_to_copy.default", "aten::mul.out", "aten::mul_.Tensor"} <= names
    max_op = next(op for op in steps[0].ops if op.name == "aten::max.dim")
    assert max_op.mem_bytes == 2 * 3 * (4 + 8)
    to_half = next(op for op in steps[0].ops if op.name == "aten::_to_copy.default")
    assert to_half.mem_bytes == 2 * 3 * 8 * 2


def test_sorting_by_memory_puts_the_largest_allocations_first(trace_path: Path) -> None:
    with tracefmt.open(trace_path) as trace:
        step = trace.step(1)
    ordered = sort_ops(step.ops, "memory")
    sizes = [op.mem_bytes for op in ordered]
    assert all(s is not None and s >= 0 for s in sizes)
    assert sizes == sorted(sizes, reverse=True)  # type: ignore[type-var]
    assert sorted(op.index for op in ordered) == list(range(len(step.ops)))
    ties = [op.index for op in ordered if op.mem_bytes == 0]
    assert ties == sorted(ties)  # equal sizes keep execution order
    with pytest.raises(tracefmt.TraceError, match="Unknown op order 'bytes'"):
        sort_ops(step.ops, "bytes")


def _show_sorts_by_memory() -> bool:
    sort = next(p for p in main.commands["show"].params if p.name == "sort")
    return "memory" in getattr(sort.type, "choices", ())


@pytest.mark.skipif(
    not _show_sorts_by_memory(),
    reason="tracefmt/cli.py's show has no --sort memory yet (the lead registers it: issue 14)",
)
def test_show_sort_memory_lists_each_ops_bytes(trace_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["show", str(trace_path), "--step", "1", "--sort", "memory", "--json"]
    )
    assert result.exit_code == 0, result.output
    ops: list[dict[str, Any]] = json.loads(result.output)["ops"]
    with tracefmt.open(trace_path) as trace:
        step = trace.step(1)
    sizes = [op["mem_bytes"] for op in ops]
    assert sizes == sorted(sizes, reverse=True)
    assert min(sizes) == 0
    for op in ops:
        kind = _kind(op["name"])
        assert op["mem_bytes"] == (_expected(step, tuple(op["outputs"])) if kind == "fresh" else 0)
    table = CliRunner().invoke(main, ["show", str(trace_path), "--step", "1", "--sort", "memory"])
    assert table.exit_code == 0, table.output
    assert "bytes" in table.output
    rows = {
        cells[1].strip(): cells[-2].strip()  # "#" and "bytes", the last column
        for cells in (line.split("│") for line in table.output.splitlines() if "│" in line)
    }
    assert all(rows[str(op["index"])] == str(op["mem_bytes"]) for op in ops)
