"""RNG states (format 1.6): written per step with equal states stored once, read back per step,
refused by the writer, the reader and the validator alike when they break the spec
(TF-RNG-001..004), carried by ``tracefmt extract`` and shown by ``tracefmt show``."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import tracefmt
from tests import badfiles as bad
from tests.synth import mlp_graph, synthetic_step
from tests.tracefmt.rngfiles import RNG_CASES, STEP_STATES, RngCase, write_rng
from tracefmt import RngState, TraceError, TraceWriter
from tracefmt.cli import main as cli_main
from tracefmt.extract import extract
from tracefmt.validate import validate

GOLDEN_1_5 = Path(__file__).resolve().parents[1] / "data" / "1.5" / "run"


@pytest.fixture(scope="module")
def rng_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_rng(tmp_path_factory.mktemp("rng") / "r.tft.h5")


@pytest.fixture
def copy(rng_trace: Path, tmp_path: Path) -> Path:
    return Path(shutil.copy(rng_trace, tmp_path / "r.tft.h5"))


def test_each_step_reads_back_its_states(rng_trace: Path) -> None:
    with tracefmt.open(rng_trace) as trace:
        steps = [trace.step(s) for s in trace.steps()]
    assert [s.rng_states for s in steps] == list(STEP_STATES)
    assert steps[1].rng_state("cpu") is None
    cuda1 = steps[3].rng_state("cuda:1")
    assert cuda1 is not None
    assert cuda1.state == STEP_STATES[3][2].state
    assert steps[0].rng_state() == STEP_STATES[0][0]  # the CPU's by default


def test_equal_states_are_stored_once(rng_trace: Path) -> None:
    with h5py.File(rng_trace, "r", swmr=True) as f:
        spans = f["step_rng_states"][:].tolist()
        rows = f["rng_states"][:]
        n_bytes = f["rng_bytes"].shape[0]
    assert spans == [(0, 2), (2, 0), (2, 2), (4, 3)]  # a row for every step, in order
    # step 2's CPU state is step 0's: one copy; every CUDA state is new (cuda:1 is a new device)
    assert rows["state_start"][2] == rows["state_start"][0]
    assert n_bytes == 2 * 5056 + 4 * 16


@pytest.mark.parametrize("deep", [False, True])
def test_clean_rng_trace_validates_clean(rng_trace: Path, deep: bool) -> None:
    assert validate(rng_trace, deep=deep) == []


@pytest.mark.parametrize("case", RNG_CASES, ids=[f"{c.rule}-{i}" for i, c in enumerate(RNG_CASES)])
def test_bad_rng_file_fires_exactly_its_rule(case: RngCase, copy: Path) -> None:
    findings = validate(case.make(copy), deep=case.deep)
    assert {f.rule for f in findings} == {case.rule}, "\n".join(map(str, findings))
    assert any(f.severity == "error" for f in findings)


@pytest.mark.parametrize(
    "case",
    [c for c in RNG_CASES if c.rule.startswith("TF-RNG") or c.rule == "TF-STR-001"],
    ids=lambda c: c.rule,
)
def test_reader_refuses_what_the_validator_reports(case: RngCase, copy: Path) -> None:
    """A broken RNG state is a TraceError naming the file and a step, never a wrong state."""
    path = case.make(copy)
    with pytest.raises(TraceError, match=r"r\.tft\.h5, step \d"):
        _read_every_step(path)


def _read_every_step(path: Path) -> None:
    with tracefmt.open(path) as trace:
        for s in trace.steps():
            trace.step(s)


def test_writer_refuses_a_device_twice_and_the_file_stays_valid(tmp_path: Path) -> None:
    path = tmp_path / "w.tft.h5"
    rng = np.random.default_rng(0)
    twice = (RngState("cpu", b"\x01" * 8), RngState("cpu", b"\x02" * 8))
    with TraceWriter(path, fsync=False) as w:
        record = synthetic_step(0, mlp_graph(), rng, with_values=False)
        record.rng_states = twice
        with pytest.raises(ValueError, match="two states of the generator of device 'cpu'"):
            w.write_step(record)
        record.rng_states = twice[:1]
        w.write_step(record)
    assert validate(path, deep=True) == []
    with tracefmt.open(path) as trace:
        assert trace.step(0).rng_states == twice[:1]


@pytest.mark.parametrize(
    ("device", "state", "error"),
    [
        ("gpu", b"x", ValueError),
        ("cuda:01", b"x", ValueError),
        ("cuda", b"x", ValueError),
        ("cpu", b"", ValueError),
        ("cpu", bytes(1 << 20) + b"x", ValueError),
        ("cpu", bytearray(b"x"), TypeError),
    ],
)
def test_rng_state_refuses_what_the_format_does(device: str, state: bytes, error: type) -> None:
    with pytest.raises(error, match=r"(?i)generator"):
        RngState(device, state)


def test_rng_state_repr_and_json_do_not_dump_bytes() -> None:
    s = RngState("cuda:3", bytes(range(16)))
    assert repr(s) == "RngState(device='cuda:3', state=<16 bytes>)"
    data = s.as_json()
    assert (data["device"], data["bytes"]) == ("cuda:3", 16)
    assert base64.b64decode(data["state_base64"]) == s.state


def test_a_1_5_file_reads_with_no_rng_states() -> None:
    """Files older than 1.6 (the 1.5 golden) have no RNG tables: every step has none."""
    with tracefmt.open(GOLDEN_1_5) as trace:
        rank = trace.ranks[0]
        assert trace.rank_file(rank).version.minor == 5
        steps = [trace.step(s, rank) for s in trace.steps(rank)]
    assert steps
    assert all(s.rng_states == () and s.rng_state() is None for s in steps)
    assert validate(GOLDEN_1_5, deep=True) == []


def test_extract_carries_the_states(rng_trace: Path, tmp_path: Path) -> None:
    extract(rng_trace, tmp_path / "out", steps=range(2, 4))
    with tracefmt.open(tmp_path / "out") as trace:
        assert [trace.step(s).rng_states for s in trace.steps()] == list(STEP_STATES[2:])
    assert validate(tmp_path / "out", deep=True) == []


def test_show_prints_and_gives_the_states(rng_trace: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli_main, ["show", str(rng_trace), "--step", "3", "--json"])
    assert result.exit_code == 0, result.output
    states = json.loads(result.output)["rng_states"]
    assert [s["device"] for s in states] == ["cpu", "cuda:0", "cuda:1"]
    assert base64.b64decode(states[0]["state_base64"]) == STEP_STATES[3][0].state
    result = runner.invoke(cli_main, ["show", str(rng_trace), "--step", "3"])
    assert result.exit_code == 0, result.output
    assert "cpu (5056 bytes), cuda:0 (16 bytes), cuda:1 (16 bytes)" in " ".join(result.output.split())


def test_older_minor_of_the_validator_sees_no_rng_tables(copy: Path) -> None:
    """A 1.6 file claiming 1.5 is checked against 1.5: the RNG datasets are not required."""
    for name in ("step_rng_states", "rng_states", "rng_bytes"):
        bad.delete(copy, name)
    bad.set_attr(copy, "format_version", "1.5")
    assert validate(copy, deep=True) == []
    with tracefmt.open(copy) as trace:
        assert all(trace.step(s).rng_states == () for s in trace.steps())
