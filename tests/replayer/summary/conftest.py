"""Fixtures of the summary tests: tiny models recorded once per module, in a subprocess, with
what torch said about their modules (``_record_summary.py``).  The tests never import torch."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from replayer.summary.cli import summary
from tracefmt.cli import TraceErrorGroup

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = Path(__file__).with_name("_record_summary.py")


def record(kind: str, out: Path, *args: str, needs: str = "torch") -> tuple[Path, dict[str, Any]]:
    """Record model ``kind`` into ``out``; the run directory and the expected module data."""
    if importlib.util.find_spec(needs) is None:
        pytest.skip(f"{needs} is not installed: recording the {kind} trace needs it")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), kind, str(out), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        pytest.fail(f"recording {kind} failed:\n{done.stderr[-3000:]}")
    return out / "run", json.loads((out / "expected.json").read_text())


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The GPT example (2 layers, width 32, batch 4 of 16 tokens, ``wpe`` frozen), two steps."""
    return record("gpt", tmp_path_factory.mktemp("gpt"))


@pytest.fixture
def invoke() -> Callable[..., Result]:
    """``invoke(*args)``: run ``summary`` under a group that turns TraceError into exit code 2,
    as ``replayer``'s does."""
    group = TraceErrorGroup()
    group.add_command(summary)

    def run(*args: str) -> Result:
        return CliRunner().invoke(group, ["summary", *args])

    return run
