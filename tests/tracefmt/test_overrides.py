"""Format 1.1: steps that share a graph but not its op attributes and storage offsets.

The writer stores such a graph once, with the first step's values as its base, and each later step's
differing values in ``op_attrs`` and ``tensor_offsets``; the reader gives every step its own values.
A 1.0 file has none of this and reads as before; a 1.1 file read as 1.0 shows the base values.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

import tracefmt
from tests.badfiles import add_string, set_attr, set_field
from tests.checks import assert_step_matches
from tests.golden import DATA
from tracefmt import DType, GraphBuilder, Phase, Role, StepRecord, TraceFormatError, TraceWriter
from tracefmt import _layout as L
from tracefmt.records import Graph, empty_op_stats, empty_stats
from tracefmt.validate import validate

#: (step size, no-attrs flag, slice start) per step: the optimizer's step size changes, the
#: data loader slices at a new position, and one step drops an op's attributes.
PLAN: list[tuple[float, bool, int]] = [
    (0.1, False, 0),  # step 0: the base
    (0.2, False, 5),  # differs in both ops' attrs and the view's offset
    (0.1, False, 0),  # equal to the base: no rows
    (0.3, True, 5),  # the scale op loses its attributes; offset as in step 1
    (0.2, False, 7),  # changes back and forth
    (0.1, False, 0),  # equal to the base again
]


def _graph(step_size: float, no_attrs: bool, start: int) -> Graph:
    """data[start:start+4] -> scale by -step_size -> add_ with alpha: a per-step op attribute,
    an attribute that is sometimes absent, and a view whose storage offset moves."""
    g = GraphBuilder()
    data = g.add_tensor(DType.FLOAT32, (64,), role=Role.INPUT, name="data")
    view = g.add_tensor(DType.FLOAT32, (4,), strides=(1,), producer=0, storage_offset=start)
    g.add_op(
        "aten::slice.Tensor",
        phase=Phase.FORWARD,
        inputs=[data],
        outputs=[view],
        attrs={"dim": 0, "start": start, "end": start + 4},
    )
    scaled = g.add_tensor(DType.FLOAT32, (4,), producer=1)
    g.add_op(
        "aten::mul.Scalar",
        phase=Phase.OPTIMIZER,
        inputs=[view],
        outputs=[scaled],
        attrs=None if no_attrs else {"other": -step_size},
    )
    w = g.add_tensor(DType.FLOAT32, (4,), role=Role.PARAMETER, name="w")
    w1 = g.add_tensor(DType.FLOAT32, (4,), role=Role.PARAMETER, name="w", producer=2, version=1)
    g.add_op(
        "aten::add_.Tensor",
        phase=Phase.OPTIMIZER,
        inputs=[w, scaled],
        outputs=[w1],
        attrs={"alpha": 1.0, "step_size": step_size},
    )
    return g.finish()


def _records() -> list[StepRecord]:
    out = []
    for step, plan in enumerate(PLAN):
        graph = _graph(*plan)
        stats = empty_stats(graph.num_tensors)
        stats["flags"] = L.STAT_COUNTS
        out.append(
            StepRecord(
                step=step,
                graph=graph,
                stats=stats,
                op_stats=empty_op_stats(graph.num_ops),
                values={1: np.arange(4, dtype=np.float32) + step},
                scalars={"lr": plan[0]},
            )
        )
    return out


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    path = tmp_path / "rank-00000.tft.h5"
    with TraceWriter(path, fsync=False) as w:
        for i, r in enumerate(_records()):
            w.write_step(r)
            if i % 2:
                w.flush()
    return path


def _table(path: Path, name: str) -> np.ndarray:
    with h5py.File(path, "r", swmr=True) as f:
        return np.asarray(f[name][:])


def test_steps_that_differ_in_attrs_and_offsets_share_one_graph(trace: Path) -> None:
    records = _records()
    assert len({r.graph.digest for r in records}) == 1
    with tracefmt.open(trace) as t:
        assert t.rank_file().version == (1, L.FORMAT_MINOR)  # 1.1 or later
        assert [s.graph for s in t.summaries()] == [0] * len(PLAN)
        assert t.rank_file().length(L.GRAPHS) == 1
        for r, step in zip(records, t.iter_steps(), strict=True):
            assert_step_matches(step, r)  # every op's attrs, every tensor's offset, bit for bit
        for r in records:
            assert_step_matches(t.step(r.step), r, load_values=False)
    assert validate(trace, deep=True) == []


def test_a_step_stores_exactly_its_differences_from_the_first(trace: Path) -> None:
    overrides = _table(trace, L.STEP_OVERRIDES)
    counts = [(int(r["op_attrs_count"]), int(r["tensor_offset_count"])) for r in overrides]
    # step 1: slice, mul, add_ and the view; step 3 also the mul's missing attrs; 2 and 5: none
    assert counts == [(0, 0), (3, 1), (0, 0), (3, 1), (3, 1), (0, 0)]
    op_attrs, offsets = _table(trace, L.OP_ATTRS), _table(trace, L.TENSOR_OFFSETS)
    assert op_attrs["op"].tolist() == [0, 1, 2] * 3
    assert op_attrs["attrs"][4] == L.NO_STRING  # step 3's mul has no attributes
    assert offsets.tolist() == [(1, 5), (1, 5), (1, 7)]
    assert len(_table(trace, L.STEP_OVERRIDES)) == len(_table(trace, L.STEPS))


def test_override_strings_are_interned_once(trace: Path) -> None:
    with tracefmt.open(trace) as t:
        f = t.rank_file()
        texts = [f.string(sid) for sid in range(f.length(L.STRINGS_INDEX))]
    assert len(texts) == len(set(texts))
    # step 1's and step 4's add_ attributes are the same text: one string, referenced twice
    attrs = _table(trace, L.OP_ATTRS)["attrs"].tolist()
    assert attrs[2] == attrs[8]


def test_the_graph_itself_keeps_the_base_values(trace: Path) -> None:
    """What a 1.0 reader sees: the ops and tensors rows hold the first step's values."""
    with tracefmt.open(trace) as t:
        graph = t.rank_file()._graph(0, step=3)
    assert [op.attrs for op in graph.ops] == [
        {"dim": 0, "start": 0, "end": 4},
        {"other": -0.1},
        {"alpha": 1.0, "step_size": 0.1},
    ]
    assert graph.metas[1].storage_offset == 0


def test_a_1_1_file_read_as_1_0_shows_the_base_values(trace: Path) -> None:
    set_attr(trace, "format_version", "1.0")
    with tracefmt.open(trace) as t:
        for step in t.iter_steps():
            assert dict(step.ops[1].attrs) == {"other": -0.1}
            assert step.tensors[1].meta.storage_offset == 0


def test_a_1_0_golden_trace_reads_without_the_new_tables() -> None:
    with h5py.File(DATA / "stats_only.tft.h5", "r", swmr=True) as f:
        assert not {L.OP_ATTRS, L.TENSOR_OFFSETS, L.STEP_OVERRIDES} & set(f)
    with tracefmt.open(DATA / "stats_only.tft.h5") as t:
        assert t.rank_file().version == (1, 0)
        assert len(list(t.iter_steps())) == 8


def test_a_failed_write_step_leaves_later_steps_aligned(tmp_path: Path) -> None:
    """write_step refuses a record half-way (after some rows are appended); the step's
    step_overrides row must not be written, or every later step would read another's values."""
    records = _records()
    path = tmp_path / "t.tft.h5"
    with TraceWriter(path, fsync=False) as w:
        w.write_step(records[0])
        bad = records[1]
        bad.histograms = {0: (0.0, 1.0, np.zeros(3, dtype=np.uint64))}  # hist_bins is 0
        with pytest.raises(ValueError, match="hist_bins"):
            w.write_step(bad)
        bad.histograms = {}
        for r in records[1:]:
            w.write_step(r)
    with tracefmt.open(path) as t:
        for r in records:
            assert_step_matches(t.step(r.step), r)
    assert validate(path) == []


def test_digest_ignores_only_attrs_and_offsets() -> None:
    base = _graph(0.1, False, 0).digest
    assert _graph(0.5, True, 9).digest == base
    g = GraphBuilder()
    g.add_tensor(DType.FLOAT32, (64,), role=Role.INPUT, name="data")
    other = g.finish()
    assert other.digest != base


# -- hostile files ---------------------------------------------------------------------------


def _shorten(path: Path, dataset: str, rows: int) -> None:
    with h5py.File(path, "r+") as f:
        f[dataset].resize((rows,))


BREAKS: dict[str, tuple[Callable[[Path], object], str]] = {
    "step without its overrides row": (
        lambda p: _shorten(p, L.STEP_OVERRIDES, 4),
        "/step_overrides are out of range",
    ),
    "op_attrs range past the table": (
        lambda p: set_field(p, L.STEP_OVERRIDES, 1, op_attrs_start=2**40),
        "/op_attrs are out of range",
    ),
    "more op_attrs rows than ops": (
        lambda p: set_field(p, L.STEP_OVERRIDES, 1, op_attrs_count=9),
        "/op_attrs are out of range",
    ),
    "override of a missing op": (lambda p: set_field(p, L.OP_ATTRS, 0, op=10**6), "name op 1000000"),
    "overrides out of order": (lambda p: set_field(p, L.OP_ATTRS, 1, op=0), "must name increasing ops"),
    "override of a missing tensor": (
        lambda p: set_field(p, L.TENSOR_OFFSETS, 0, tensor=10**6),
        "name tensor 1000000",
    ),
    "override attrs not JSON": (
        lambda p: set_field(p, L.OP_ATTRS, 0, attrs=add_string(p, b"{nope")),
        "malformed",
    ),
    "override attrs not an object": (
        lambda p: set_field(p, L.OP_ATTRS, 0, attrs=add_string(p, b"[1]")),
        "malformed",
    ),
    "override attrs string out of range": (
        lambda p: set_field(p, L.OP_ATTRS, 0, attrs=10**6),
        "string id 1000000 is out of range",
    ),
}


@pytest.mark.parametrize("name", list(BREAKS))
def test_broken_overrides_are_refused_naming_file_and_step(trace: Path, name: str) -> None:
    breaks, message = BREAKS[name]
    breaks(trace)
    with pytest.raises(TraceFormatError, match=message) as info, tracefmt.open(trace) as t:
        for _ in t.iter_steps():
            pass
    assert str(trace) in str(info.value)
    assert "step" in str(info.value)


@pytest.mark.parametrize("dataset", [L.OP_ATTRS, L.TENSOR_OFFSETS, L.STEP_OVERRIDES])
def test_a_1_1_file_without_an_override_table_is_refused(trace: Path, dataset: str) -> None:
    with h5py.File(trace, "r+") as f:
        del f[dataset]
    with pytest.raises(TraceFormatError, match=f"dataset /{dataset} is missing"):
        tracefmt.open(trace)


def test_the_cli_shows_a_step_s_own_attributes(trace: Path) -> None:
    from click.testing import CliRunner

    from tracefmt.cli import main

    result = CliRunner().invoke(main, ["show", str(trace), "--step", "3", "--json"])
    assert result.exit_code == 0, result.output
    ops = json.loads(result.output)["ops"]
    assert [op["attrs"] for op in ops][:2] == [{"dim": 0, "start": 5, "end": 9}, {}]


def test_graph_variant_equals_the_graph_built_with_those_values() -> None:
    base = _graph(0.1, False, 0)
    for step_size, no_attrs, start in PLAN[1:]:
        fresh = _graph(step_size, no_attrs, start)
        variant = base.variant(
            {
                0: {"dim": 0, "start": start, "end": start + 4},
                1: None if no_attrs else {"other": -step_size},
                2: {"alpha": 1.0, "step_size": step_size},
            },
            {1: start},
        )
        assert variant.ops == fresh.ops
        assert variant.tensors == fresh.tensors
        assert variant.digest == fresh.digest == base.digest
    with pytest.raises(ValueError, match="negative"):
        base.variant(storage_offsets={1: -1})
