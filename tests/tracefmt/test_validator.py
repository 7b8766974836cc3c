"""The validator: clean traces validate clean, each rule has a minimal bad file that makes exactly that
rule fire, and the spec's ids, the registered rules and the tested rules are one set."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np
import pytest

from tests import badfiles as bad
from tests.tracefmt import multirank as mr
from tests.tracefmt.modulefiles import MODULE_CASES
from tests.tracefmt.packfiles import with_packed_from
from tests.tracefmt.rngfiles import RNG_CASES
from tracefmt import DType, GraphBuilder, Phase, StepRecord, TraceNotFoundError, TraceWriter
from tracefmt.validate import RULES, UNREADABLE, Finding, validate

SPEC = Path(__file__).resolve().parents[2] / "spec" / "format.md"


class Case(NamedTuple):
    rule: str
    make: Callable[[Path, Path], Path]  # (copy of the base trace, tmp dir) -> path to validate
    deep: bool = False
    # "overrides": steps that share a graph but not its attrs and offsets; "flight": light steps
    # and full steps with NaN/Inf created, by design and in the state (format 1.4)
    base: str = "plain"


def _garbage(p: Path, tmp: Path) -> Path:
    p.write_bytes(b"not an HDF5 file\n" * 64)
    return p


def _module_sid(p: Path) -> int:
    return int(bad.get(p, "ops", 0, "module"))


def _break_string(p: Path, tmp: Path) -> Path:
    offset = int(bad.get(p, "strings/index", _module_sid(p), "offset"))
    return bad.set_item(p, "strings/bytes", offset, 0xFF)


def _negative_dim(p: Path, tmp: Path) -> Path:
    return bad.set_item(p, "dims", int(bad.get(p, "tensors", 0, "dim_start")), -5)


def _other_fingerprint(p: Path, dataset: str) -> Path:
    fp = int(bad.get(p, dataset, 0, "fingerprint"))
    return bad.set_field(p, dataset, 0, fingerprint=fp ^ 1)


def _duplicate_scalar(p: Path, tmp: Path) -> Path:
    return bad.set_field(p, "scalars", 1, name=int(bad.get(p, "scalars", 0, "name")))


def _duplicate_but_attrs(p: Path, tmp: Path) -> Path:
    """Graph 1 copies graph 0 but for one op's attributes and one tensor's storage offset: two
    graphs in 1.0, one graph (with per-step values) from 1.1."""
    bad.duplicate_graph(p)
    op0, t0 = int(bad.get(p, "graphs", 1, "op_start")), int(bad.get(p, "graphs", 1, "tensor_start"))
    bad.set_field(p, "ops", op0 + 5, attrs=int(bad.get(p, "ops", 6, "attrs")))
    return bad.set_field(p, "tensors", t0, storage_offset=8)


def _base_attrs(p: Path, tmp: Path) -> Path:
    """op_attrs row 0 (step 1, op 6) gives the op the attributes its graph already has."""
    return bad.set_field(p, "op_attrs", 0, attrs=int(bad.get(p, "ops", 6, "attrs")))


def _run(tmp: Path, **manifest_changes: object) -> Path:
    """A clean 2-rank run directory with a manifest, then the manifest's fields changed."""
    run = mr.write_run(tmp / "run", 2, steps=2)
    if manifest_changes:
        data = json.loads((run / "run.json").read_text())
        data.update(manifest_changes)
        (run / "run.json").write_text(json.dumps(data))
    return run


def _rank0(tmp: Path, **kw: Any) -> Path:
    """Rank 0's file of a 2-rank run with collectives, written with ``kw`` (see multirank)."""
    return mr.write_rank(tmp / "run", 0, 2, steps=2, **kw)


def _as_1_3(p: Path, tmp: Path) -> Path:
    """The flight trace as a 1.3 file: no light tables, but step flags with the bits of 1.4."""
    for name in ("light_steps", "light_stats", "light_events", "light_scalars"):
        bad.delete(p, name)
    return bad.set_attr(p, "format_version", "1.3")


def _message(p: Path, table: str, text: bytes) -> Path:
    """Row 0 of ``table`` (a trigger event) gets the message ``text``."""
    return bad.set_field(p, table, 0, message=bad.add_string(p, text))


CASES: list[Case] = [
    Case("TF-FILE-001", lambda p, t: bad.delete_attr(p, "tracefmt_format")),
    Case("TF-FILE-001", _garbage),
    Case("TF-FILE-001", lambda p, t: bad.set_vlen_attr(p, "tracefmt_format", "tracefmt")),
    Case("TF-FILE-002", lambda p, t: bad.copy_earliest(p, t / "old.tft.h5")),
    Case("TF-FILE-003", lambda p, t: bad.set_attr(p, "format_version", "2.0")),
    Case("TF-FILE-003", lambda p, t: bad.set_attr(p, "format_version", "one")),
    Case("TF-FILE-003", lambda p, t: bad.set_vlen_attr(p, "format_version", "1.0")),
    Case("TF-FILE-004", lambda p, t: bad.set_attr(p, "provenance", "{not json")),
    Case("TF-FILE-004", lambda p, t: bad.set_attr(p, "provenance", '{"tracefmt": "0.1"}')),
    Case("TF-FILE-005", lambda p, t: bad.set_attr(p, "rank", np.int64(3))),
    Case("TF-FILE-006", lambda p, t: bad.set_attr(p, "values_filter", "lz77")),
    Case("TF-FILE-006", lambda p, t: bad.set_attr(p, "hist_bins", np.int64(5000))),
    Case(
        "TF-RUN-001",
        lambda p, t: bad.run_dir(p, t / "run", {"rank-00001.tft.h5": {"world_size": np.int64(2)}}),
    ),
    Case(
        "TF-RUN-002",
        lambda p, t: bad.run_dir(
            p,
            t / "run",
            {
                "rank-00000.tft.h5": {"world_size": np.int64(2)},
                "rank-00001.tft.h5": {
                    "world_size": np.int64(2),
                    "rank": np.int64(1),
                    "run_id": "another-run",
                },
            },
        ),
    ),
    Case("TF-RUN-003", lambda p, t: _run(t, world_size="2")),
    Case("TF-RUN-003", lambda p, t: _run(t, process_groups=[{"id": "0:0", "name": "0", "ranks": [0]}])),
    Case("TF-RUN-003", lambda p, t: _run(t, tracefmt_run="2.0")),
    Case("TF-RUN-004", lambda p, t: _run(t, run_id="another-run")),
    Case("TF-RUN-004", lambda p, t: _run(t, expected_ranks=[0])),
    Case("TF-FILE-007", lambda p, t: _rank0(t, prov=mr.distributed(1, 2))),
    Case("TF-FILE-007", lambda p, t: _rank0(t, prov={**mr.distributed(0, 2), "pid": -1})),
    Case("TF-FILE-007", lambda p, t: _rank0(t, prov={**mr.distributed(0, 2), "hostname": 7})),
    Case("TF-PACK-001", lambda p, t: with_packed_from(p, sha256="not a digest")),
    Case("TF-PACK-001", lambda p, t: with_packed_from(p, {"sources": "rank-00000.tft.h5"})),
    Case("TF-PACK-001", lambda p, t: with_packed_from(p, {"filter": "zstd"})),  # file's is "none"
    Case("TF-COLL-001", lambda p, t: _rank0(t, c10d={"reduce_op": "MEAN"})),
    Case("TF-COLL-001", lambda p, t: _rank0(t, c10d={"rank": 1})),
    Case("TF-COLL-001", lambda p, t: _rank0(t, c10d={"group": "0:00000000"})),
    Case("TF-COLL-001", lambda p, t: _rank0(t, c10d={"seq": mr.DROP})),
    Case("TF-COLL-001", lambda p, t: _rank0(t, c10d={"c10d": mr.DROP})),
    Case("TF-COLL-001", lambda p, t: _rank0(t, c10d={"coalesced": [2, 2]})),
    Case("TF-COLL-001", lambda p, t: _rank0(t, c10d={"root": 5})),
    Case("TF-COLL-002", lambda p, t: _rank0(t, extra_allreduce=True, c10d={"seq": 0})),
    Case("TF-COLL-002", lambda p, t: _rank0(t, c10d={"seq": 1})),
    Case("TF-LAYOUT-001", lambda p, t: bad.delete(p, "events")),
    Case("TF-LAYOUT-001", lambda p, t: bad.recreate(p, "events", chunks=None, maxshape=None)),
    Case("TF-FILT-001", lambda p, t: bad.recreate(p, "events", compression="gzip", shuffle=True)),
    Case("TF-FILT-002", lambda p, t: bad.recreate(p, "data/float64", fletcher32=True)),
    Case("TF-FILT-003", lambda p, t: bad.flip_chunk_byte(p, "ops"), deep=True),
    Case("TF-STR-001", lambda p, t: bad.set_field(p, "ops", 0, module=10_000)),
    Case("TF-STR-001", lambda p, t: bad.set_field(p, "ops", 0, name=-1)),
    Case("TF-STR-002", _break_string),
    Case("TF-GRAPH-001", lambda p, t: bad.set_field(p, "graphs", 0, op_count=10**6)),
    Case("TF-GRAPH-002", lambda p, t: bad.duplicate_graph(p)),
    Case("TF-OP-001", lambda p, t: bad.set_field(p, "ops", 0, phase=9)),
    Case("TF-OP-002", lambda p, t: bad.set_field(p, "ops", 0, in_count=100)),
    Case("TF-OP-002", lambda p, t: bad.set_field(p, "edges", 2, arg=5)),
    Case("TF-OP-003", lambda p, t: bad.set_field(p, "ops", 0, attrs=_module_sid(p))),
    Case("TF-TENSOR-001", lambda p, t: bad.set_field(p, "tensors", 0, dtype=99)),
    Case("TF-TENSOR-001", lambda p, t: bad.set_field(p, "tensors", 0, role=99)),
    Case("TF-TENSOR-002", _negative_dim),
    Case("TF-TENSOR-002", lambda p, t: bad.set_field(p, "tensors", 0, ndim=200)),
    Case("TF-TENSOR-003", lambda p, t: bad.set_field(p, "tensors", 2, producer_slot=3)),
    Case("TF-TENSOR-004", lambda p, t: bad.swap_first_ops(p)),
    Case("TF-STEP-001", lambda p, t: bad.set_field(p, "steps", 2, step=1)),
    Case("TF-STEP-002", lambda p, t: bad.set_field(p, "steps", 0, graph=7)),
    Case("TF-STEP-002", lambda p, t: bad.set_field(p, "steps", 2, scalar_count=50)),
    Case("TF-STEP-003", lambda p, t: bad.set_field(p, "steps", 0, stats_count=5)),
    Case("TF-STEP-004", lambda p, t: bad.set_field(p, "steps", 1, stats_start=6)),
    Case("TF-STEP-005", lambda p, t: bad.set_field(p, "steps", 0, flags=1)),
    Case("TF-STAT-001", lambda p, t: bad.set_field(p, "stats", 0, min=5.0)),
    Case("TF-STAT-001", lambda p, t: bad.set_field(p, "stats", 0, zero=10**6)),
    Case("TF-STAT-002", lambda p, t: bad.set_field(p, "op_stats", 0, host_ns=-7)),
    Case("TF-STAT-003", lambda p, t: _other_fingerprint(p, "stats"), deep=True),
    Case("TF-LAYOUT-001", lambda p, t: bad.delete(p, "op_starts")),
    Case("TF-OPSTART-001", lambda p, t: bad.shorten(p, "op_starts", 3)),
    Case("TF-OPSTART-002", lambda p, t: bad.set_field(p, "op_starts", 0, host_start_ns=-7)),
    Case("TF-OPSTART-003", lambda p, t: bad.set_field(p, "op_starts", 1, host_start_ns=2 * 10**8)),
    Case("TF-DATA-001", lambda p, t: bad.set_field(p, "data_index", 0, tensor=99)),
    Case("TF-DATA-002", lambda p, t: bad.set_field(p, "data_index", 0, count=127)),
    Case("TF-DATA-002", lambda p, t: bad.set_field(p, "data_index", 0, offset=10**9)),
    Case("TF-DATA-003", lambda p, t: _other_fingerprint(p, "data_index"), deep=True),
    Case("TF-HIST-001", lambda p, t: bad.set_field(p, "hists", 0, lo=5.0, hi=1.0)),
    Case("TF-EVENT-001", lambda p, t: bad.set_field(p, "events", 0, op=50)),
    Case("TF-SCALAR-001", _duplicate_scalar),
    Case("TF-LAYOUT-001", lambda p, t: bad.delete(p, "op_attrs")),
    Case("TF-STR-001", lambda p, t: bad.set_field(p, "op_attrs", 0, attrs=10_000), base="overrides"),
    Case("TF-GRAPH-002", _duplicate_but_attrs),
    Case("TF-OVERRIDE-001", lambda p, t: bad.shorten(p, "step_overrides", 3), base="overrides"),
    Case(
        "TF-OVERRIDE-001",
        lambda p, t: bad.set_field(p, "step_overrides", 1, op_attrs_count=10**6),
        base="overrides",
    ),
    Case(
        "TF-OVERRIDE-001",
        lambda p, t: bad.set_field(p, "step_overrides", 3, op_attrs_start=0),
        base="overrides",
    ),
    Case("TF-OVERRIDE-002", lambda p, t: bad.set_field(p, "op_attrs", 0, op=99), base="overrides"),
    Case("TF-OVERRIDE-002", lambda p, t: bad.set_field(p, "op_attrs", 1, op=6), base="overrides"),
    Case(
        "TF-OVERRIDE-002",
        lambda p, t: bad.set_field(p, "tensor_offsets", 0, tensor=10**6),
        base="overrides",
    ),
    Case(
        "TF-OVERRIDE-003",
        lambda p, t: bad.set_field(p, "op_attrs", 0, attrs=_module_sid(p)),
        base="overrides",
    ),
    Case(
        "TF-OVERRIDE-003",
        lambda p, t: bad.set_field(p, "tensor_offsets", 0, storage_offset=-3),
        base="overrides",
    ),
    Case("TF-STAT-001", lambda p, t: bad.set_field(p, "stats", 0, flags=15)),
    Case("TF-LAYOUT-001", lambda p, t: bad.delete(p, "light_stats"), base="flight"),
    Case("TF-LIGHT-001", lambda p, t: bad.set_field(p, "light_steps", 2, step=1), base="flight"),
    Case(
        "TF-LIGHT-002",
        lambda p, t: bad.set_field(p, "light_steps", 1, stats_count=10**6),
        base="flight",
    ),
    Case("TF-LIGHT-002", lambda p, t: bad.set_field(p, "light_steps", 3, stats_start=0), base="flight"),
    Case("TF-LIGHT-003", lambda p, t: bad.set_field(p, "light_stats", 0, kind=9), base="flight"),
    Case("TF-LIGHT-003", lambda p, t: bad.set_field(p, "light_stats", 1, min=5.0), base="flight"),
    Case("TF-LIGHT-003", lambda p, t: bad.set_field(p, "light_stats", 2, flags=16), base="flight"),
    Case("TF-LIGHT-004", lambda p, t: bad.set_field(p, "light_steps", 0, flags=4), base="flight"),
    Case("TF-LIGHT-004", lambda p, t: bad.set_field(p, "light_steps", 1, flags=1), base="flight"),
    Case("TF-LIGHT-004", lambda p, t: bad.set_field(p, "light_steps", 3, flags=64), base="flight"),
    Case("TF-LIGHT-005", lambda p, t: bad.set_field(p, "light_events", 0, op=3), base="flight"),
    Case(
        "TF-LIGHT-005",
        lambda p, t: bad.set_field(
            p, "light_scalars", 1, name=int(bad.get(p, "light_scalars", 0, "name"))
        ),
        base="flight",
    ),
    Case("TF-STR-001", lambda p, t: bad.set_field(p, "light_stats", 0, name=-1), base="flight"),
    Case("TF-STEP-006", lambda p, t: bad.set_field(p, "steps", 1, flags=6), base="flight"),
    Case("TF-STEP-006", lambda p, t: bad.set_field(p, "steps", 0, flags=7), base="flight"),
    Case("TF-STEP-005", _as_1_3, base="flight"),
    Case("TF-EVENT-002", lambda p, t: _message(p, "events", b"softmax made NaN"), base="flight"),
    Case(
        "TF-EVENT-002",
        lambda p, t: _message(p, "light_events", b'{"reason": "r", "rank": 5}'),
        base="flight",
    ),
    Case(
        "TF-EVENT-002",
        lambda p, t: _message(p, "light_events", b'{"reason": 1, "rank": 0}'),
        base="flight",
    ),
    Case("TF-OVERRIDE-004", _base_attrs, base="overrides"),
    Case(
        "TF-OVERRIDE-004",
        lambda p, t: bad.set_field(p, "tensor_offsets", 0, storage_offset=0),
        base="overrides",
    ),
]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bad.write_base(tmp_path_factory.mktemp("base") / "base.tft.h5")


@pytest.fixture(scope="module")
def overrides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bad.write_overrides(tmp_path_factory.mktemp("overrides") / "overrides.tft.h5")


@pytest.fixture(scope="module")
def flight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bad.write_flight(tmp_path_factory.mktemp("flight") / "flight.tft.h5")


@pytest.fixture
def trace(base: Path, tmp_path: Path) -> Path:
    """A fresh copy of the base trace to break."""
    return Path(shutil.copy(base, tmp_path / "t.tft.h5"))


def _summary(findings: list[Finding]) -> str:
    return "\n".join(str(f) for f in findings)


@pytest.mark.parametrize("deep", [False, True])
def test_clean_trace_validates_clean(base: Path, deep: bool) -> None:
    assert validate(base, deep=deep) == []


@pytest.mark.parametrize("values_filter", ["fletcher32", "gzip", "fast"])
def test_clean_with_each_values_filter(tmp_path: Path, values_filter: str) -> None:
    path = bad.write_base(tmp_path / "t.tft.h5", steps=2, values_filter=values_filter)
    assert validate(path, deep=True) == []


GOLDEN = Path(__file__).resolve().parents[1] / "data" / "1.0"


@pytest.mark.parametrize("name", ["stats_only.tft.h5", "values.tft.h5", "run"])
def test_golden_traces_validate_clean(name: str) -> None:
    """Traces written by earlier versions of tracefmt still meet the spec."""
    if not (GOLDEN / name).exists():
        pytest.skip(f"no golden trace {name}")
    assert validate(GOLDEN / name, deep=True) == []


@pytest.mark.parametrize("deep", [False, True])
def test_clean_trace_with_per_step_values_validates_clean(overrides: Path, deep: bool) -> None:
    assert validate(overrides, deep=deep) == []
    with h5py.File(overrides, "r", swmr=True) as f:  # the base really has rows of both tables
        assert (f["graphs"].shape[0], f["op_attrs"].shape[0], f["tensor_offsets"].shape[0]) == (1, 4, 1)


@pytest.mark.parametrize("deep", [False, True])
def test_clean_flight_trace_validates_clean(flight: Path, deep: bool) -> None:
    assert validate(flight, deep=deep) == []


def test_a_1_3_file_needs_no_light_tables(flight: Path, tmp_path: Path) -> None:
    """Before 1.4 the light tables are absent and the step flags of 1.4 undefined."""
    path = _as_1_3(Path(shutil.copy(flight, tmp_path / "f.tft.h5")), tmp_path)
    for row, flags in ((0, 3), (1, 2)):  # step 1: NaN and Inf, step 2: Inf (the mask)
        bad.set_field(path, "steps", row, flags=flags)
    assert validate(path, deep=True) == []


def test_a_1_3_validator_sees_a_1_4_file_as_newer(flight: Path, tmp_path: Path) -> None:
    """What a reader of 1.3 does: the light tables are unknown datasets, the new flag bits unknown
    bits, reported as warnings only (simulated here by claiming a minor version beyond ours)."""
    path = bad.set_attr(Path(shutil.copy(flight, tmp_path / "f.tft.h5")), "format_version", "1.99")
    bad.set_field(path, "steps", 1, flags=2 | 64)
    findings = validate(path)
    assert {(f.rule, f.severity) for f in findings} == {
        ("TF-FILE-003", "warning"),
        ("TF-STEP-005", "warning"),
    }


def test_graphs_differing_in_attrs_are_distinct_in_a_1_0_file(trace: Path, tmp_path: Path) -> None:
    """TF-GRAPH-002 compares attrs and storage offsets in a 1.0 file: the 1.0 golden traces hold
    such graphs and stay valid."""
    path = bad.set_attr(_duplicate_but_attrs(trace, tmp_path), "format_version", "1.0")
    assert validate(path) == []


def test_a_1_0_file_needs_no_override_tables(trace: Path) -> None:
    for name in ("op_attrs", "tensor_offsets", "step_overrides"):
        bad.delete(trace, name)
    assert [f.rule for f in validate(trace)] == ["TF-LAYOUT-001"] * 3
    assert validate(bad.set_attr(trace, "format_version", "1.0"), deep=True) == []


def test_clean_run_directory(base: Path, tmp_path: Path) -> None:
    run = bad.run_dir(
        base,
        tmp_path / "run",
        {
            "rank-00000.tft.h5": {"world_size": np.int64(2)},
            "rank-00001.tft.h5": {"world_size": np.int64(2), "rank": np.int64(1)},
        },
    )
    (run / "notes.txt").write_text("not part of the run")
    assert validate(run, deep=True) == []


@pytest.mark.parametrize("case", CASES, ids=[f"{c.rule}-{i}" for i, c in enumerate(CASES)])
def test_bad_file_fires_exactly_its_rule(
    case: Case, trace: Path, overrides: Path, flight: Path, tmp_path: Path
) -> None:
    if case.base != "plain":
        source = {"overrides": overrides, "flight": flight}[case.base]
        trace = Path(shutil.copy(source, tmp_path / "o.tft.h5"))
    path = case.make(trace, tmp_path)
    findings = validate(path, deep=case.deep)
    assert {f.rule for f in findings} == {case.rule}, _summary(findings)
    assert any(f.severity == "error" for f in findings), _summary(findings)
    assert all(f.message and f.location for f in findings)


def test_ids_in_spec_rules_and_tests_are_one_set() -> None:
    spec_ids = set(re.findall(r"TF-[A-Z]+-\d{3}", SPEC.read_text(encoding="utf-8")))
    tested = {case.rule for case in CASES} | {case.rule for case in MODULE_CASES}  # test_modules
    tested |= {case.rule for case in RNG_CASES}  # test_rngtables
    assert spec_ids == set(RULES)
    assert tested == set(RULES)
    assert len(spec_ids) >= 20


def test_deep_rules_are_marked_deep_in_spec() -> None:
    text = SPEC.read_text(encoding="utf-8")
    marked = set(re.findall(r"\*\*(TF-[A-Z]+-\d{3})\*\* \*\(deep\)\*", text))
    assert marked == {rule_id for rule_id, r in RULES.items() if r.deep}


def test_newer_minor_version_is_a_warning(trace: Path) -> None:
    findings = validate(bad.set_attr(trace, "format_version", "1.9"))
    assert [(f.rule, f.severity) for f in findings] == [("TF-FILE-003", "warning")]


def test_damaged_table_is_reported_without_deep(trace: Path) -> None:
    findings = validate(bad.flip_chunk_byte(trace, "ops"))
    assert {f.rule for f in findings} == {"TF-FILT-003"}
    assert "/ops" in findings[0].message


def test_unreadable_file_is_one_finding(tmp_path: Path) -> None:
    findings = validate(_garbage(tmp_path / "x.tft.h5", tmp_path))
    assert [f.rule for f in findings] == [UNREADABLE]


def test_truncated_file_is_reported(base: Path, tmp_path: Path) -> None:
    path = tmp_path / "t.tft.h5"
    path.write_bytes(base.read_bytes()[:-100_000])
    findings = validate(path, deep=True)
    assert any(f.rule == "TF-FILE-001" and "truncated" in f.message for f in findings)


def test_missing_path_raises(tmp_path: Path) -> None:
    with pytest.raises(TraceNotFoundError):
        validate(tmp_path / "nothing")
    with pytest.raises(TraceNotFoundError):
        validate(tmp_path)  # a directory without rank files


def test_progress_reaches_total(base: Path) -> None:
    calls: list[tuple[int, int]] = []
    validate(base, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1][0] == calls[-1][1] == len(calls)
    assert calls[-1][1] == sum(not r.deep for r in RULES.values())


def test_rows_no_step_reaches_are_ignored(trace: Path) -> None:
    """Rows past the last commit (a killed writer's uncommitted step) are not part of the trace."""
    with bad.edit(trace) as f:
        for name in ("stats", "ops", "strings/index", "data_index", "graphs"):
            ds = f[name]
            n = ds.shape[0]
            ds.resize((n + 3,))
            junk = np.zeros(3, dtype=ds.dtype)
            junk.view(np.uint8)[:] = 0xAB
            ds[n : n + 3] = junk
    assert validate(trace, deep=True) == []


def test_mutated_files_never_raise(base: Path, tmp_path: Path) -> None:
    """Random byte flips and truncations give findings (or none), never an exception or a hang."""
    rng = np.random.default_rng(7)
    data = base.read_bytes()
    for i in range(24):
        blob = bytearray(data)
        if i % 4 == 3:
            blob = blob[: int(rng.integers(64, len(blob)))]
        else:
            for pos in rng.integers(0, len(blob), 4).tolist():
                blob[pos] ^= 1 << int(rng.integers(0, 8))
        path = tmp_path / f"m{i}.tft.h5"
        path.write_bytes(bytes(blob))
        findings = validate(path, deep=True)
        assert all(isinstance(f, Finding) for f in findings)
        assert not any("could not run" in f.message for f in findings), _summary(findings)


def _scalar_graph(strides: tuple[int, ...] | None) -> GraphBuilder:
    g = GraphBuilder()
    t = g.add_tensor(DType.FLOAT32, (), strides=strides, producer=0)
    g.add_op("aten::ones.default", phase=Phase.FORWARD, outputs=[t])
    return g


def test_writer_dedupes_graphs_that_store_the_same_rows(tmp_path: Path) -> None:
    path = tmp_path / "t.tft.h5"
    with TraceWriter(path, fsync=False) as w:
        w.write_step(StepRecord(0, _scalar_graph(None).finish()))
        w.write_step(StepRecord(1, _scalar_graph(()).finish()))
    assert validate(path) == []
