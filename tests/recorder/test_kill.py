"""Kill test: a recording training process SIGKILLed mid-run; every step it had flushed reads back.

The child (``tests/recorder/_kill_child.py``) prints a step number only after ``rec.flush()``
returned.  The test kills it with SIGKILL at a random moment after a random number of printed
steps, then opens the run with plain ``tracefmt.open`` and checks that every printed step is
there, loads, has its graph, stats and scalars, that parameter values agree with their recorded
fingerprints, and that the validator finds no error.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tracefmt
from tracefmt.dtypes import fingerprint
from tracefmt.validate import validate

REPO = Path(__file__).resolve().parents[2]


def _kill_after(tmp: Path, printed_steps: int, extra_delay: float) -> list[int]:
    out = tmp / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.recorder._kill_child", str(out)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    printed: list[int] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    try:
        for line in proc.stdout:
            line = line.strip()
            if line.isdigit():
                printed.append(int(line))
            if len(printed) >= printed_steps or time.monotonic() > deadline:
                break
        time.sleep(extra_delay)  # land the kill anywhere in the next steps
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=30)
    assert printed, f"the child printed no step; stderr:\n{err[-2000:]}"
    return printed


def _check(run: Path, printed: list[int]) -> None:
    with tracefmt.open(run) as trace:
        steps = trace.steps()
        assert set(printed) <= set(steps), (printed, steps)
        assert steps == list(range(len(steps)))
        for n in steps:
            step = trace.step(n)
            assert len(step.ops) > 20
            assert "loss" in step.scalars
            checked = 0
            for t in step.tensors:
                if t.has_values and t.stats is not None and t.stats.fingerprint is not None:
                    assert fingerprint(t.values()) == t.stats.fingerprint
                    checked += 1
            assert checked >= 4
            assert np.isfinite(step.scalars["loss"])
    errors = [f for f in validate(run) if getattr(f, "severity", "error") == "error"]
    assert not errors, errors


def test_sigkill_keeps_every_flushed_step(tmp_path: Path) -> None:
    rng = random.Random()
    printed = _kill_after(tmp_path, rng.randint(3, 8), rng.uniform(0.0, 0.05))
    _check(tmp_path / "run", printed)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(8))
def test_sigkill_keeps_every_flushed_step_many(tmp_path: Path, trial: int) -> None:
    rng = random.Random(trial)
    printed = _kill_after(tmp_path, rng.randint(1, 30), rng.uniform(0.0, 0.2))
    _check(tmp_path / "run", printed)


def test_disk_full_raises_trace_error_and_keeps_flushed_steps(tmp_path: Path) -> None:
    """Files limited to 16 MB (``RLIMIT_FSIZE``): the loop gets a ``TraceError`` that says what
    happened at a ``rec.step()`` or ``rec.flush()``, and every step flushed before reads back."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.recorder._diskfull_child", str(out), str(16 << 20)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    lines = proc.stdout.splitlines()
    # Exit 0, not a crash: a writer whose flush failed must let go of the HDF5 file without
    # HDF5 releasing freed handles at interpreter exit (which was a SIGSEGV).
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    flushed = [int(line.split()[1]) for line in lines if line.startswith("flushed")]
    error = next(line for line in lines if line.startswith("error"))
    assert "The trace writer for" in error, error
    assert "failed while writing step" in error, error
    assert "File too large" in error, error
    assert "steps flushed before the failure are kept" in error, error
    assert flushed, proc.stdout[-2000:]
    with tracefmt.open(out) as trace:
        steps = trace.steps()
        assert set(flushed) <= set(steps)
        for n in flushed:
            step = trace.step(n)
            for t in step.tensors:
                if t.has_values and t.stats is not None and t.stats.fingerprint is not None:
                    assert fingerprint(t.values()) == t.stats.fingerprint
