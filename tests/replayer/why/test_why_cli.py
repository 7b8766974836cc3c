"""``replayer why`` at the command line: exit codes, ``--json``, narrowing, no torch, and the
GPT example recorded in flight mode with an Inf injected."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from replayer.cli import main
from tests.replayer.why.why_synth import event, light_step, mlp_step, writer
from tracefmt.events import LOSS_SPIKE, NONFINITE_CREATED

ROOT = Path(__file__).resolve().parents[3]
GPT_SMALL = ["--layers", "1", "--embd", "32", "--heads", "2", "--block", "16", "--batch", "8"]


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["why", *args], env={"COLUMNS": "250"})
    return result.exit_code, result.output


def _two_events(run: Path) -> None:
    with writer(run) as w:
        w.write_step(mlp_step(4))
        w.write_step(mlp_step(5, log_shift=-3.0, events=[event(NONFINITE_CREATED, module="block.1")]))
        w.write_step(mlp_step(6))
        w.write_step(mlp_step(7, head_scale=40.0, events=[event(LOSS_SPIKE)]))


def test_events_exit_1_with_a_report_per_step(tmp_path: Path) -> None:
    _two_events(tmp_path)
    code, out = _run(str(tmp_path))
    assert code == 1, out
    assert "2 trigger events" in out
    assert "rank 0, step 5" in out
    assert "aten::log.default" in out
    assert "block.1" in out
    assert "rank 0, step 7" in out
    assert "aten::mul.Scalar" in out
    assert "recorder.schedule(steps=[4, 5])" in out


def test_json_holds_every_explanation(tmp_path: Path) -> None:
    _two_events(tmp_path)
    code, out = _run(str(tmp_path), "--json")
    assert code == 1
    data = json.loads(out)
    assert set(data) >= {"path", "ranks", "options", "events", "first_seen", "explanations", "notes"}
    assert data["events"] == 2
    first = data["explanations"][0]
    assert set(first) >= {
        "rank", "step", "kind", "reason", "fields", "category", "capture", "cause", "earlier",
        "path", "path_elided", "first_seen", "rerecord", "notes",
    }  # fmt: skip
    assert set(first["cause"]) == {"kind", "description", "at", "before", "state", "ratio"}
    assert first["cause"]["at"]["name"] == "aten::log.default"
    assert set(first["rerecord"]) == {"python", "commands"}
    assert data["first_seen"]["step"] == 5


def test_step_and_rank_narrow_the_report(tmp_path: Path) -> None:
    _two_events(tmp_path)
    code, out = _run(str(tmp_path), "--step", "7", "--json")
    assert code == 1
    assert [e["step"] for e in json.loads(out)["explanations"]] == [7]
    code, out = _run(str(tmp_path), "--step", "6")
    assert code == 0
    assert "no trigger event" in out
    assert "step 6" in out
    code, out = _run(str(tmp_path), "--rank", "3")
    assert code == 2
    assert "Rank 3 is not in" in out


def test_spike_ratio_is_an_option(tmp_path: Path) -> None:
    _two_events(tmp_path)
    code, out = _run(str(tmp_path), "--step", "7", "--spike-ratio", "100", "--json")
    assert code == 1
    assert json.loads(out)["explanations"][0]["cause"]["kind"] == "largest_departure"
    code, out = _run(str(tmp_path), "--spike-ratio", "1")
    assert code == 2


def test_a_run_without_events_exits_0(tmp_path: Path) -> None:
    with writer(tmp_path) as w:
        w.write_step(mlp_step(0))
        w.write_light_step(light_step(0))
    code, out = _run(str(tmp_path))
    assert code == 0
    assert "no trigger event" in out


def test_a_damaged_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "rank-00000.tft.h5"
    bad.write_bytes(b"not hdf5 at all")
    code, out = _run(str(bad))
    assert code == 2
    assert "Traceback" not in out


NO_TORCH = r"""
import sys
sys.modules["torch"] = None
from replayer.cli import main
try:
    main(["why", sys.argv[1], "--json"])
except SystemExit as e:
    code = e.code
assert sys.modules["torch"] is None
print("exit", code)
"""


def test_why_works_without_torch(tmp_path: Path) -> None:
    _two_events(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    *body, last = proc.stdout.strip().splitlines()
    assert last == "exit 1"
    assert json.loads("\n".join(body))["events"] == 2


def _gpt(out: Path, *args: str) -> None:
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed: recording the GPT example needs it")
    cmd = [
        sys.executable,
        "-m",
        "recorder.examples.gpt",
        *GPT_SMALL,
        "--quiet",
        "--out",
        str(out),
        *args,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_gpt_example_with_an_injected_inf_is_explained(tmp_path: Path) -> None:
    run = tmp_path / "nan"
    _gpt(run, "--mode", "flight", "--inject-nan", "12", "--steps", "14", "--ring", "4")
    code, out = _run(str(run), "--json")
    assert code == 1, out
    data = json.loads(out)
    assert data["first_seen"]["rank"] == 0
    assert data["first_seen"]["step"] == 12
    causes = [e["cause"] for e in data["explanations"] if e["step"] == 12]
    assert causes
    assert all(c is not None for c in causes)
    cause = causes[0]
    # the op that wrote the Inf into the weight (``weight.view(-1)[0] = inf``), and the weight
    assert cause["at"]["name"] == "aten::copy_.default"
    assert cause["state"] == "h.0.attn.c_attn.weight"
    code, text = _run(str(run))
    assert code == 1
    assert "h.0.attn.c_attn" in text
    assert "rank 0" in text
    clean = tmp_path / "clean"
    _gpt(clean, "--mode", "flight", "--steps", "6", "--ring", "4")
    code, out = _run(str(clean))
    assert code == 0, out
