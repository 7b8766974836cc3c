"""Module metadata (format 1.5): written once per distinct table, read back per step, refused by
the writer, the reader and the validator alike when it breaks the spec (TF-MODULE-001..003)."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import tracefmt
from tests import badfiles as bad
from tests.synth import mlp_graph, synthetic_step
from tests.tracefmt.modulefiles import (
    MODULE_CASES,
    STEP_TABLES,
    ModuleCase,
    mlp_modules,
    write_modules,
)
from tracefmt import TraceFormatError, TraceWriter
from tracefmt.moduletable import ModuleInfo, ModuleTable, parent_path
from tracefmt.validate import validate


@pytest.fixture(scope="module")
def modules_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_modules(tmp_path_factory.mktemp("modules") / "m.tft.h5")


@pytest.fixture
def copy(modules_trace: Path, tmp_path: Path) -> Path:
    return Path(shutil.copy(modules_trace, tmp_path / "m.tft.h5"))


def test_each_step_reads_back_its_table(modules_trace: Path) -> None:
    expected = {"A": mlp_modules(), "B": mlp_modules(frozen=True), None: None}
    with tracefmt.open(modules_trace) as trace:
        got = [trace.modules(s) for s in trace.steps()]
    assert got == [expected[name] for name in STEP_TABLES]
    b = got[3]
    assert b is not None
    assert (b.total_params, b.total_trainable, b.total_param_bytes) == (512, 256, 1024)
    assert b["layers.0"].trainable == 0
    assert [m.depth for m in b] == [0, 1, 2, 3, 2, 3]


def test_equal_tables_are_stored_once(modules_trace: Path) -> None:
    with h5py.File(modules_trace, "r", swmr=True) as f:
        spans = f["step_modules"][:].tolist()
        assert f["modules"].shape[0] == 12  # tables A and B, 6 modules each
    assert len(spans) == 4  # a row for every step
    assert spans[0] == spans[2] == (0, 6)
    assert spans[1][1] == 0  # no table: an empty range
    assert spans[3] == (6, 6)


@pytest.mark.parametrize("deep", [False, True])
def test_clean_module_trace_validates_clean(modules_trace: Path, deep: bool) -> None:
    assert validate(modules_trace, deep=deep) == []


@pytest.mark.parametrize("case", MODULE_CASES, ids=[f"{c.rule}-{i}" for i, c in enumerate(MODULE_CASES)])
def test_bad_module_file_fires_exactly_its_rule(case: ModuleCase, copy: Path) -> None:
    findings = validate(case.make(copy))
    assert {f.rule for f in findings} == {case.rule}, "\n".join(map(str, findings))
    assert any(f.severity == "error" for f in findings)


@pytest.mark.parametrize(
    "case",
    [c for c in MODULE_CASES if c.rule.startswith("TF-MODULE") or c.rule == "TF-STR-001"],
    ids=lambda c: c.rule,
)
def test_reader_refuses_what_the_validator_reports(case: ModuleCase, copy: Path) -> None:
    """A broken module table is a TraceFormatError naming the file and step; the step itself
    still reads."""
    path = case.make(copy)
    with tracefmt.open(path) as trace:
        broken = [s for s in trace.steps() if _raises(trace, s)]
        assert broken, "no step's module table was refused"
        with pytest.raises(TraceFormatError, match=rf"{path.name}, step {broken[0]}"):
            trace.modules(broken[0])
        assert len(trace.step(broken[0]).ops) == mlp_graph().num_ops


def _raises(trace: tracefmt.Trace, step: int) -> bool:
    try:
        trace.modules(step)
    except TraceFormatError:
        return True
    return False


def test_a_1_4_file_has_no_module_metadata(copy: Path) -> None:
    """Before 1.5 the two tables are absent; a 1.5 reader reads the steps without modules."""
    for name in ("modules", "step_modules"):
        bad.delete(copy, name)
    assert {f.rule for f in validate(copy)} == {"TF-LAYOUT-001"}
    bad.set_attr(copy, "format_version", "1.4")
    assert validate(copy, deep=True) == []
    with tracefmt.open(copy) as trace:
        assert [trace.modules(s) for s in trace.steps()] == [None] * 4
        assert all(len(trace.step(s).ops) == mlp_graph().num_ops for s in trace.steps())


def test_a_newer_validator_version_sees_module_tables_as_known(copy: Path) -> None:
    bad.set_attr(copy, "format_version", "1.99")
    assert {(f.rule, f.severity) for f in validate(copy)} == {("TF-FILE-003", "warning")}


def test_steps_written_without_a_table_have_none(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "plain.tft.h5"
    with TraceWriter(path, fsync=False) as w:
        for s in range(2):
            w.write_step(synthetic_step(s, mlp_graph(), rng, with_values=False))
        w.flush()
    with tracefmt.open(path) as trace:
        assert [trace.modules(s) for s in trace.steps()] == [None, None]
    with h5py.File(path, "r", swmr=True) as f:
        assert (f["modules"].shape[0], f["step_modules"].shape[0]) == (0, 2)


def _info(path: str, params: int = 0, trainable: int = 0, nbytes: int = 0) -> ModuleInfo:
    return ModuleInfo(path, None, params, trainable, 0, 0, nbytes)


@pytest.mark.parametrize(
    ("modules", "message"),
    [
        ((), "1 to"),
        ((_info("a"),), "starts with the root"),
        ((_info(""), _info("a"), _info("a")), "appears twice"),
        ((_info(""), _info("a.b")), "before its parent 'a'"),
        ((_info(""), _info("a"), _info("a..b")), "empty component"),
        ((_info("", 4, 8, 16),), "trainable 8, more than its params 4"),
        ((_info("", 4, 4, 0),), "bytes are 0 exactly"),
        ((_info("", 4, 4, 16), _info("a", 8, 0, 32)), "more than its parent ''"),
        ((_info("", -1),), "integer 0..2\\*\\*64-1"),
    ],
)
def test_module_table_refuses_what_the_format_forbids(
    modules: tuple[ModuleInfo, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ModuleTable(modules)


def test_module_info_names_its_place() -> None:
    m = ModuleInfo("h.0.attn", "transformers.models.gpt2.modeling_gpt2.GPT2Attention", 1, 1, 0, 0, 4)
    assert (m.depth, m.parent, m.short_class) == (3, "h.0", "GPT2Attention")
    assert (parent_path("h"), parent_path("")) == ("", None)
    table = mlp_modules()
    assert "layers.0.act" in table
    assert "layers.2" not in table
    with pytest.raises(KeyError, match=r"no module 'layers\.2'"):
        table["layers.2"]
    assert table.digest != mlp_modules(frozen=True).digest
    assert table.digest == mlp_modules().digest


def test_extract_keeps_each_steps_module_table(modules_trace: Path, tmp_path: Path) -> None:
    from tracefmt.extract import extract

    extract(modules_trace, tmp_path / "out", steps=range(1, 4))
    with tracefmt.open(modules_trace) as src, tracefmt.open(tmp_path / "out") as dst:
        assert dst.steps() == [1, 2, 3]
        assert [dst.modules(s) for s in dst.steps()] == [src.modules(s) for s in (1, 2, 3)]
