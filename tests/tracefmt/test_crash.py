"""Kill test: a writer SIGKILLed at a random moment loses nothing it had flushed.

A writer process (tests/_writer_proc.py) writes steps, some with MBs of values, and prints each step
number only after ``flush()`` returned.  The test kills it at a random moment (while starting, while
writing values, strings or graphs, while flushing), then opens the file with plain
``tracefmt.open`` (no flags, no h5clear) and checks that every committed step, and at least every
printed one, reads back bit-exact against its deterministic regeneration.
"""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import tracefmt
from tests._writer_proc import make_step
from tests.checks import assert_step_matches
from tracefmt import TraceNotFoundError, TraceWriter
from tracefmt.validate import validate

REPO = Path(__file__).resolve().parents[2]
FILTERS = ["none", "fletcher32"] + (["fast"] if importlib.util.find_spec("hdf5plugin") else [])
BASE_SEED = int(os.environ.get("TRACEFMT_KILL_SEED", random.randrange(2**31)))


@dataclass
class Trial:
    path: Path
    seed: int
    values_filter: str
    delay: float
    early: bool
    lines: list[str] = field(default_factory=list)
    stderr: str = ""

    @property
    def ready(self) -> bool:
        return "ready" in self.lines

    @property
    def printed(self) -> list[int]:
        return [int(x) for x in self.lines if x.isdigit()]

    def __str__(self) -> str:
        return (
            f"trial seed={self.seed} filter={self.values_filter} delay={self.delay:.3f}s "
            f"early={self.early} printed={self.printed[-3:]} (TRACEFMT_KILL_SEED={BASE_SEED})"
            f"\nstderr: {self.stderr[-1500:]}"
        )


def kill_trial(directory: Path, index: int, rng: random.Random) -> Trial:
    """Start a writer, SIGKILL it at a random moment, return what it had printed."""
    early = index % 4 == 3  # a quarter of the kills land while the process starts up
    trial = Trial(
        path=directory / f"run-{index}" / "rank-00000.tft.h5",
        seed=rng.randrange(2**31),
        values_filter=FILTERS[index % len(FILTERS)],
        delay=rng.uniform(0.0, 0.35) if early else rng.uniform(0.0, 0.6),
        early=early,
    )
    err_path = directory / f"run-{index}.stderr"
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests._writer_proc",
                str(trial.path),
                str(trial.seed),
                "--filter",
                trial.values_filter,
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        ready = threading.Event()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                trial.lines.append(line.strip())
                ready.set()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            if not early:
                assert ready.wait(120), "the writer process never became ready"
            time.sleep(trial.delay)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(60)
            reader.join(60)
    trial.stderr = err_path.read_text()
    assert proc.returncode == -signal.SIGKILL, f"the writer exited by itself\n{trial}"
    return trial


def check_trial(trial: Trial) -> None:
    """Every committed step (and at least every printed one) reads back bit-exact."""
    printed = trial.printed
    assert printed == list(range(len(printed))), str(trial)
    if not trial.ready and not trial.path.exists():
        # Killed before the writer existed: nothing was flushed.  No file may exist under the trace's
        # name unless it opens.
        with pytest.raises(TraceNotFoundError):
            tracefmt.open(trial.path)
        return
    with tracefmt.open(trial.path) as trace:
        steps = trace.steps()
        assert steps == list(range(len(steps))), str(trial)
        assert len(steps) >= len(printed), f"flushed steps lost: {steps[-3:]}\n{trial}"
        for s in steps:
            assert_step_matches(trace.step(s), make_step(trial.seed, s))
        assert len(trace.summaries()) == len(steps)


def run_trials(directory: Path, count: int) -> list[Trial]:
    rng = random.Random(BASE_SEED)
    return [kill_trial(directory, i, rng) for i in range(count)]


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> list[Trial]:
    return run_trials(tmp_path_factory.mktemp("kill"), 8)


def test_sigkill_loses_no_flushed_step(killed: list[Trial]) -> None:
    for trial in killed:
        check_trial(trial)
    # the kills really landed at different moments: some during start-up, most after steps
    assert any(t.printed for t in killed)


def _validate_clean(trials: list[Trial]) -> None:
    for trial in trials:
        if trial.path.exists():
            for deep in (False, True):
                findings = validate(trial.path, deep=deep)
                assert list(findings) == [], f"{findings}\n{trial}"


def test_killed_files_validate_clean(killed: list[Trial]) -> None:
    _validate_clean(killed)


@pytest.mark.slow
def test_thirty_kills(tmp_path: Path) -> None:
    trials = run_trials(tmp_path, 30)
    for trial in trials:
        check_trial(trial)
    _validate_clean(trials)


# A SIGKILL while the writer builds the file: HDF5 cannot open a file that was never switched to
# SWMR mode and flushed, so the writer builds it under a temporary name and renames it when it is.
KILL_DURING_INIT = r"""
import os, signal, sys
import tracefmt.writer as w

at = sys.argv[2]
if at == "rename":
    w.os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
else:
    create, calls = w.TraceWriter._create, []
    def dying_create(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == int(at):
            os.kill(os.getpid(), signal.SIGKILL)
        create(self, *args, **kwargs)
    w.TraceWriter._create = dying_create
w.TraceWriter(sys.argv[1])
print("not killed")
"""


@pytest.mark.parametrize("at", ["1", "12", "25", "rename"])
def test_kill_while_creating_leaves_no_unopenable_file(tmp_path: Path, at: str) -> None:
    path = tmp_path / "rank-00000.tft.h5"
    proc = subprocess.run(
        [sys.executable, "-c", KILL_DURING_INIT, str(path), at],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert not path.exists()
    with pytest.raises(TraceNotFoundError):
        tracefmt.open(tmp_path)
    with TraceWriter(path) as w:  # the leftover temporary file is no obstacle to a new writer
        w.write_step(make_step(0, 0))
    with tracefmt.open(tmp_path) as trace:
        assert_step_matches(trace.step(0), make_step(0, 0))


# A full disk (here: a file size limit) makes a flush fail.  The writer must say so with a
# TraceError, refuse further writes, let go of the file on close without raising again, and the
# process must exit normally: closing the HDF5 file after the failure used to leave freed dataset
# handles that crashed the interpreter (SIGSEGV) when they were released at exit.
DISK_FULL = r"""
import resource, signal, sys
from tests._writer_proc import make_step
from tracefmt import TraceError, TraceWriter

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]),) * 2)
writer = TraceWriter(sys.argv[1])
step = 0
try:
    while True:
        writer.write_step(make_step(0, step))
        writer.flush()
        print("flushed", step, flush=True)
        step += 1
except TraceError as e:
    print("error", str(e).replace("\n", " "), flush=True)
try:
    writer.write_step(make_step(0, step + 1))
except TraceError as e:
    print("refused", str(e).replace("\n", " "), flush=True)
writer.close()
writer.close()
print("closed", flush=True)
"""


def test_disk_full_raises_then_exits_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "rank-00000.tft.h5"
    proc = subprocess.run(
        [sys.executable, "-c", DISK_FULL, str(path), str(24 << 20)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    lines = proc.stdout.splitlines()
    flushed = [int(line.split()[1]) for line in lines if line.startswith("flushed")]
    error = next(line for line in lines if line.startswith("error"))
    refused = next(line for line in lines if line.startswith("refused"))
    assert lines[-1] == "closed"
    assert "File too large" in error, error
    assert "failed earlier" in refused, refused
    assert flushed, proc.stdout
    with tracefmt.open(tmp_path) as trace:
        assert trace.steps() == flushed
        for n in flushed:
            assert_step_matches(trace.step(n), make_step(0, n))
