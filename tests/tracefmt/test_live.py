"""A second process reads a trace while the writer process is still appending to it (SWMR).

The writer (tests/_writer_proc.py) prints each step number after ``flush()`` returned for it; this
process, the reader, opens the file once and calls ``Trace.refresh()``: it must see at least every
step printed before the refresh, each bit-exact, while the writer still holds the file open.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import h5py
import pytest

import tracefmt
from tests._writer_proc import make_step
from tests.checks import assert_step_matches

REPO = Path(__file__).resolve().parents[2]
LOCKSTEP = 6  # steps the writer waits after: each must be visible at once
STEPS = 30  # then it runs free while the reader refreshes as fast as it can


class Writer:
    """The writer process and the step numbers it has printed so far."""

    def __init__(
        self,
        path: Path,
        seed: int,
        values_filter: str = "none",
        steps: int = STEPS,
        lockstep: int = LOCKSTEP,
    ) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests._writer_proc",
                str(path),
                str(seed),
                "--filter",
                values_filter,
                "--steps",
                str(steps),
                "--lockstep",
                str(lockstep),
                "--pause",
                "0.005",
                "--wait-close",
            ],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line.strip())
                self.changed.notify_all()
        with self.changed:
            self.lines.append("<eof>")
            self.changed.notify_all()

    def wait_for(self, line: str, timeout: float = 120) -> None:
        with self.changed:
            ok = self.changed.wait_for(lambda: line in self.lines or "<eof>" in self.lines, timeout)
        assert ok, f"writer never printed {line!r}: {self.stderr()}"
        assert line in self.lines, f"writer never printed {line!r}: {self.stderr()}"

    def printed(self) -> int:
        """How many steps the writer has flushed (and said so)."""
        with self.changed:
            return sum(x.isdigit() for x in self.lines)

    def send(self, text: str = "\n") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read()[-2000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(60)


@pytest.mark.parametrize(
    "values_filter",
    [
        "none",
        pytest.param(
            "fast",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("hdf5plugin") is None, reason="hdf5plugin not installed"
            ),
        ),
    ],
)
def test_reader_sees_every_flushed_step_while_writer_appends(tmp_path: Path, values_filter: str) -> None:
    path = tmp_path / "rank-00000.tft.h5"
    seed = 11
    writer = Writer(path, seed, values_filter)
    try:
        writer.wait_for("ready")
        with tracefmt.open(path) as trace:
            assert trace.steps() in ([], [0])  # the writer goes straight on to step 0
            # Lock step: the writer flushed step k and waits; the reader must see exactly 0..k.
            for k in range(LOCKSTEP):
                writer.wait_for(str(k))
                trace.refresh()
                assert trace.steps() == list(range(k + 1))
                assert_step_matches(trace.step(k), make_step(seed, k))
                writer.send()
            # Free running: whatever was printed before a refresh must be visible after it.
            checked, refreshes, partial_views = LOCKSTEP, 0, 0
            deadline = time.monotonic() + 300
            while checked < STEPS:
                assert time.monotonic() < deadline, "the writer stalled"
                flushed = writer.printed()
                trace.refresh()
                refreshes += 1
                steps = trace.steps()
                assert steps == list(range(len(steps)))
                assert len(steps) >= flushed, f"flushed steps {flushed} but reader sees {steps}"
                partial_views += len(steps) < STEPS
                for s in steps[checked:]:  # committed steps are complete, even unannounced ones
                    assert_step_matches(trace.step(s), make_step(seed, s))
                checked = len(steps)
            writer.wait_for(str(STEPS - 1))
            assert writer.proc.poll() is None, "the writer must still hold the file open"
            assert refreshes >= 1
            assert partial_views >= 1
            writer.send()  # let it close
            writer.wait_for("closed")
            trace.refresh()
            assert trace.steps() == list(range(STEPS))
        assert writer.proc.wait(60) == 0, writer.stderr()
        with tracefmt.open(path) as trace:  # and a fresh open after the close
            for s in range(STEPS):
                assert_step_matches(trace.step(s), make_step(seed, s), load_values=s % 7 == 0)
    finally:
        writer.stop()


@pytest.mark.parametrize("during", ["refresh", "open"])
def test_a_commit_during_refresh_or_open_is_seen_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, during: str
) -> None:
    """The writer commits a step (with new strings and a new graph) in the middle of a refresh, or
    of an open.

    Refreshing (or opening) the tables before the step index would show the new step with stale
    tables ("string id 19 is out of range"); the reader takes the step index first and counts only
    the steps it saw there.
    """
    path = tmp_path / "rank-00000.tft.h5"
    writer = Writer(path, seed=5, steps=2, lockstep=2)
    fired: list[bool] = []

    def commit_once() -> None:
        if not fired:
            fired.append(True)
            writer.send()  # the writer writes and commits step 1 now
            writer.wait_for("1")

    try:
        writer.wait_for("0")
        if during == "refresh":
            trace = tracefmt.open(path)
            refresh = h5py.Dataset.refresh

            def refresh_then_commit(ds: h5py.Dataset) -> None:
                refresh(ds)
                if ds.name == "/strings/index":
                    commit_once()

            monkeypatch.setattr(h5py.Dataset, "refresh", refresh_then_commit)
            trace.refresh()
        else:
            getitem = h5py.Group.__getitem__

            def get_then_commit(group: h5py.Group, name: Any) -> Any:
                found = getitem(group, name)
                if name == "strings/index":
                    commit_once()
                return found

            monkeypatch.setattr(h5py.Group, "__getitem__", get_then_commit)
            trace = tracefmt.open(path)
        monkeypatch.undo()
        with trace:
            assert fired
            assert trace.steps() in ([0], [0, 1])
            for s in trace.steps():
                assert_step_matches(trace.step(s), make_step(5, s))
            trace.refresh()
            assert trace.steps() == [0, 1]
            assert_step_matches(trace.step(1), make_step(5, 1))
            writer.send()
            writer.send()
        assert writer.proc.wait(60) == 0, writer.stderr()
    finally:
        writer.stop()


def test_a_torn_chunk_read_is_tried_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A live writer rewrites the last chunk of a table in place; a reader catching it halfway gets
    "filter returned failure during read" (fletcher32) once, and must read it again rather than
    call the file damaged.  (Seen in the free-running test above, about one run in ten.)  Only a
    file whose superblock says a SWMR writer has it open is read again: a damaged closed file
    fails at once."""
    from tracefmt._h5open import swmr_writer_flag
    from tracefmt._tableread import TableReader

    path = tmp_path / "rank-00000.tft.h5"
    read, torn = TableReader._read, list[str]()

    def torn_once(self: TableReader, name: str, start: int, count: int) -> Any:
        if name == "steps" and not torn:
            torn.append(name)
            raise OSError("Can't synchronously read data (filter returned failure during read)")
        return read(self, name, start, count)

    writer = Writer(path, seed=3, steps=1, lockstep=1)
    try:
        writer.wait_for("0")
        assert swmr_writer_flag(path)
        with monkeypatch.context() as m:
            m.setattr(TableReader, "_read", torn_once)
            with tracefmt.open(path) as trace:
                assert trace.steps() == [0]
        assert torn == ["steps"]
        writer.send()
        writer.send()
        assert writer.proc.wait(60) == 0, writer.stderr()
    finally:
        writer.stop()
    assert not swmr_writer_flag(path)
    torn.clear()
    monkeypatch.setattr(TableReader, "_read", torn_once)
    with tracefmt.open(path) as trace, pytest.raises(tracefmt.TraceCorruptError, match="/steps"):
        trace.steps()
