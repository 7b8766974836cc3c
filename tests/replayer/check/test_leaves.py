"""Acceptance of ``values="leaves"``: the GPT example re-executed from its leaves alone.

(a) ``replayer check --chain`` checks at least 95% of every phase's ops of every recorded step and
passes; (b) a recorded leaf altered in a copy makes it fail, naming the op that consumed it;
(c) the file is at most 1.1x the bytes of what the steps start from (parameters, optimizer
state, batch, random-op outputs), measured from torch while recording (``_record_leaves.py``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import replayer
import tracefmt
from replayer.cli import main
from tests.replayer._traces import copy_step

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = Path(__file__).with_name("_record_leaves.py")
PHASES = ("forward", "backward", "optimizer")


def _record(out: Path, engine: str, steps: int, values_filter: str) -> Path:
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed: recording the GPT example needs it")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(SCRIPT), str(out), engine, str(steps), values_filter]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise AssertionError(f"recording failed:\n{done.stdout}\n{done.stderr}")
    return out


@pytest.fixture(scope="module")
def leaves_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _record(tmp_path_factory.mktemp("leaves") / "gpt", "auto", 2, "none")


def test_chain_check_from_the_leaves_covers_every_phase(leaves_trace: Path) -> None:
    with tracefmt.open(leaves_trace) as trace:
        for step in trace.steps():
            loaded = trace.step(step)
            produced = [t for t in loaded.tensors if t.has_values and t.meta.producer is not None]
            # only random draws among the recorded values that an op made
            assert {loaded.ops[t.meta.producer].name for t in produced} <= {
                "aten::bernoulli_.float",
                "aten::randint.generator",
            }
            report = replayer.check_step(trace, step, chain=True)
            assert report.mode == "chain"
            assert report.passed, report.failed
            fractions = report.fractions()
            for phase in PHASES if step else ("forward", "backward"):
                assert fractions[phase] >= 0.95, (step, phase, fractions, report.skip_reasons())
            if step:  # step 0 makes its optimizer state: its optimizer phase is checked too
                assert fractions["optimizer"] >= 0.95, report.skip_reasons()
            numbers = [r for r in report.results if r.method == "number"]
            assert numbers
            assert all(r.status == "checked" for r in numbers)


def test_chain_cli_prints_the_fraction_checked_per_phase(leaves_trace: Path) -> None:
    result = CliRunner().invoke(main, ["check", str(leaves_trace), "--step", "1", "--chain"])
    assert result.exit_code == 0, result.output
    lines = {
        line.split()[0]: line
        for line in result.output.splitlines()
        if line.startswith("  ") and "%" in line
    }
    assert set(lines) >= {*PHASES, "all"}
    as_json = CliRunner().invoke(main, ["check", str(leaves_trace), "--step", "1", "--chain", "--json"])
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.output)
    assert report["mode"] == "chain"
    for phase in PHASES:
        assert report["fraction_checked"][phase] >= 0.95
    print("GPT step 1 from its leaves (--chain):\n" + "\n".join(lines.values()))


def _view_closure(step: tracefmt.reader.Step, index: int, reader: int) -> set[int]:
    """Tensor ``index`` and the views of it made by op ``reader`` on (a consumer reads either)."""
    reached = {index}
    for op in step.ops[reader:]:
        if reached & set(op.inputs) and op.name.removeprefix("aten::").split(".")[0] in (
            "t",
            "view",
            "transpose",
            "permute",
            "expand",
            "slice",
            "select",
            "unsqueeze",
            "_unsafe_view",
            "detach",
        ):
            reached.update(op.outputs)
    return reached


@pytest.mark.parametrize("parameter", ["h.0.mlp.c_fc.weight", "ln_f.bias"])
def test_an_altered_leaf_fails_the_chain_naming_its_consumer(
    leaves_trace: Path, tmp_path: Path, parameter: str
) -> None:
    with tracefmt.open(leaves_trace) as trace:
        loaded = trace.step(1)
        target = next(t for t in loaded.tensors if t.name == parameter and t.meta.version == 0)
        assert target.has_values
        assert target.meta.producer is None
        first = next(op.index for op in loaded.ops if target.index in op.inputs)
        reached = _view_closure(loaded, target.index, first)
    altered = tmp_path / "altered.tft.h5"
    copy_step(leaves_trace, altered, 1, {target.index: lambda v: (v * 1.01 + 0.01).astype(v.dtype)})
    result = CliRunner().invoke(main, ["check", str(altered), "--step", "1", "--chain", "--json"])
    assert result.exit_code == 1, result.output
    failed = [r for r in json.loads(result.output)["ops"] if r["status"] == "failed"]
    assert failed
    with tracefmt.open(altered) as trace:
        consumer = trace.step(1).ops[failed[0]["op"]]
    # The first op to fail reads the parameter itself or a view of it: the op that consumed it.
    assert reached & set(consumer.inputs), (failed[0], parameter)
    text = CliRunner().invoke(
        main, ["check", str(altered), "--step", "1", "--chain"], env={"COLUMNS": "250"}
    )
    assert text.exit_code == 1
    assert consumer.name.removeprefix("aten::").split(".")[0] in text.output


@pytest.mark.parametrize(
    ("engine", "steps", "values_filter"),
    [
        ("python", 6, "none"),
        ("auto", 3, "zstd"),
        ("native", 6, "none"),
    ],
)
def test_leaves_file_is_at_most_1_1x_what_the_steps_start_from(
    tmp_path: Path, engine: str, steps: int, values_filter: str
) -> None:
    if values_filter != "none" and importlib.util.find_spec("hdf5plugin") is None:
        pytest.skip(f"the {values_filter} filter needs hdf5plugin")
    out = _record(tmp_path / "gpt", engine, steps, values_filter)
    reference = json.loads((out / "reference.json").read_text())["steps"]
    leaves = sum(sum(step.values()) for step in reference)
    size = sum(p.stat().st_size for p in out.glob("*.tft.h5"))
    print(f"{engine} {values_filter} {steps} steps: {size} / {leaves} = {size / leaves:.3f}")
    assert size <= 1.1 * leaves, (size, leaves, reference)
