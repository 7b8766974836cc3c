"""Fuzz test: damaged traces give a valid read or a TraceError, never a crash, hang or other error.

Valid traces (with values under several filters, stats-only, Blosc2 ``fast`` when hdf5plugin is
installed) are mutated (byte and bit flips, runs of random bytes or zeros, truncations) and each
variant is read completely by a worker subprocess (tests/_fuzz_worker.py) that processes many files
in turn and answers one JSON line per file.  Files are sent one at a time, so a worker that dies
(segfault) or stops answering (hang: per-file timeout) is attributed to its file and restarted.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import random
import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests import badfiles as bad
from tests.synth import mlp_graph, synthetic_step, write_synthetic
from tracefmt import TraceWriter

REPO = Path(__file__).resolve().parents[2]
PER_FILE_TIMEOUT = 30.0  # seconds; a valid read of these files takes well under one
WORKERS = 2
SEED = int(os.environ.get("TRACEFMT_FUZZ_SEED", random.randrange(2**31)))


# -- base traces ---------------------------------------------------------------------------------


def _stats_only(path: Path) -> None:
    graph, rng = mlp_graph(), np.random.default_rng(1)
    with TraceWriter(path, fsync=False) as w:
        for s in range(0, 40, 2):  # a repeated graph, 20 steps of statistics
            w.write_step(synthetic_step(s, graph, rng, with_values=False))
            if s % 10 == 0:
                w.flush()


def _two_graphs(path: Path) -> None:
    rng = np.random.default_rng(2)
    with TraceWriter(path, fsync=False, hist_bins=4) as w:
        for s in range(4):
            graph = mlp_graph(width=8 if s % 2 else 4, layers=1 + s % 2)
            w.write_step(synthetic_step(s, graph, rng, hist_bins=4, with_values=s % 2 == 0))


def _overrides(path: Path) -> None:
    """One graph, steps with their own op attributes and storage offsets (format 1.1)."""
    rng = np.random.default_rng(3)
    with TraceWriter(path, fsync=False) as w:
        for s in range(12):
            graph = mlp_graph(lr=0.01 * (1 + s % 3), input_offset=8 * (s % 2))
            w.write_step(synthetic_step(s, graph, rng, with_values=False))
            if s % 4 == 3:
                w.flush()


BASES: dict[str, Callable[[Path], None]] = {
    "values-none": lambda p: write_synthetic(p, steps=3, hist_bins=8, fsync=False),
    "values-fletcher32": lambda p: write_synthetic(p, steps=2, values_filter="fletcher32", fsync=False),
    "values-gzip": lambda p: write_synthetic(p, steps=2, values_filter="gzip", fsync=False),
    "stats-only": _stats_only,
    "two-graphs": _two_graphs,
    "overrides": _overrides,
    # format 1.4: light steps, and full steps whose flags classify NaN/Inf
    "flight": lambda p: bad.write_flight(p),
}
if importlib.util.find_spec("hdf5plugin") is not None:
    BASES["values-fast"] = lambda p: write_synthetic(p, steps=3, values_filter="fast", fsync=False)


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fuzz-bases")
    out = {}
    for name, make in BASES.items():
        out[name] = d / f"{name}.tft.h5"
        make(out[name])
    return out


# -- mutations ------------------------------------------------------------------------------------


def _offset(rng: random.Random, data: bytes, hot: np.ndarray) -> int:
    """A byte offset: mostly where something is stored (non-zero bytes), sometimes anywhere."""
    if hot.size and rng.random() < 0.7:
        return int(hot[rng.randrange(hot.size)])
    return rng.randrange(len(data))


def mutate(data: bytes, hot: np.ndarray, rng: random.Random) -> tuple[str, bytes]:
    """One random mutation of ``data``: its description and the mutated bytes."""
    kind = rng.choice(["flip", "flip", "bitflip", "bitflip", "run", "zeros", "truncate"])
    buf = bytearray(data)
    if kind == "flip":
        offsets = [_offset(rng, data, hot) for _ in range(rng.randint(1, 8))]
        for at in offsets:
            buf[at] ^= rng.randrange(1, 256)
        return f"flip@{offsets}", bytes(buf)
    if kind == "bitflip":
        at, bit = _offset(rng, data, hot), rng.randrange(8)
        buf[at] ^= 1 << bit
        return f"bitflip@{at}.{bit}", bytes(buf)
    if kind in ("run", "zeros"):
        at, n = _offset(rng, data, hot), rng.randint(2, 64)
        fill = bytes(n) if kind == "zeros" else rng.randbytes(n)
        buf[at : at + n] = fill[: len(buf) - at]
        return f"{kind}@{at}+{n}", bytes(buf)
    cut = rng.choice(
        [rng.randrange(len(data)), rng.randrange(min(len(data), 4096)), len(data) - rng.randint(1, 4096)]
    )
    return f"truncate@{max(cut, 0)}", data[: max(cut, 0)]


@dataclass
class Variant:
    base: str
    mutation: str
    path: Path


def variants(bases: dict[str, Path], directory: Path, count: int, seed: int) -> Iterator[Variant]:
    """``count`` mutated files, written lazily (the caller deletes the ones that read fine)."""
    rng = random.Random(seed)
    loaded = {}
    for name, path in bases.items():
        data = path.read_bytes()
        loaded[name] = (data, np.flatnonzero(np.frombuffer(data, dtype=np.uint8)))
    names = sorted(loaded)
    for i in range(count):
        name = names[i % len(names)]
        data, hot = loaded[name]
        mutation, mutated = mutate(data, hot, rng)
        out = directory / f"{i:05d}-{name}.tft.h5"
        out.write_bytes(mutated)
        yield Variant(name, mutation, out)


# -- the worker -------------------------------------------------------------------------------------


class Worker:
    """A fuzz worker subprocess, fed one path at a time."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests._fuzz_worker"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def read(self, path: Path) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(f"{path}\n")
            self.proc.stdin.flush()
            line = self.lines.get(timeout=PER_FILE_TIMEOUT)
        except queue.Empty:
            self.proc.kill()
            self.proc.wait()
            return {"status": "hang", "timeout": PER_FILE_TIMEOUT}
        except BrokenPipeError:
            line = None
        if line is None:
            code = self.proc.wait()
            assert self.proc.stderr is not None
            return {"status": "crash", "returncode": code, "stderr": self.proc.stderr.read()[-2000:]}
        result: dict[str, Any] = json.loads(line)
        return result

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_fuzz(
    bases: dict[str, Path], directory: Path, count: int, seed: int
) -> tuple[Counter[str], list[tuple[Variant, dict[str, Any]]]]:
    """Read ``count`` variants with ``WORKERS`` workers; return status counts and the failures
    (their files are kept in ``directory / "failures"``)."""
    keep = directory / "failures"
    keep.mkdir()
    todo: queue.Queue[Variant | None] = queue.Queue(maxsize=4 * WORKERS)
    statuses: Counter[str] = Counter()
    failures: list[tuple[Variant, dict[str, Any]]] = []
    lock = threading.Lock()

    def serve() -> None:
        worker = Worker()
        try:
            while (v := todo.get()) is not None:
                result = worker.read(v.path)
                with lock:
                    statuses[result["status"]] += 1
                    if result["status"] in ("crash", "hang", "uncaught"):
                        failures.append((v, result))
                        shutil.copy(v.path, keep / v.path.name)
                v.path.unlink()
                if not worker.alive:
                    worker = Worker()
        finally:
            worker.close()

    threads = [threading.Thread(target=serve) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    try:
        for v in variants(bases, directory, count, seed):
            todo.put(v)
    finally:
        for _ in threads:
            todo.put(None)
        for t in threads:
            t.join()
    return statuses, failures


def _report(failures: list[tuple[Variant, dict[str, Any]]], directory: Path) -> str:
    lines = [
        f"{len(failures)} variants crashed, hung or raised something other than TraceError "
        f"(TRACEFMT_FUZZ_SEED={SEED}; files kept in {directory / 'failures'}):"
    ]
    for v, result in failures[:10]:
        detail = result.get("traceback") or result.get("stderr") or result
        lines.append(f"- {v.path.name} ({v.base}, {v.mutation}): {result['status']}\n{detail}")
    return "\n".join(lines)


def _check(bases: dict[str, Path], directory: Path, count: int) -> None:
    statuses, failures = run_fuzz(bases, directory, count, SEED)
    assert sum(statuses.values()) == count
    assert not failures, _report(failures, directory)
    # the mutations did damage: some variants are refused outright, some read with errors
    assert statuses["refused"] > 0, statuses


def test_base_traces_read_cleanly(bases: dict[str, Path]) -> None:
    from tests._fuzz_worker import read_everything

    for name, path in bases.items():
        result = read_everything(str(path))
        assert result["status"] == "read", (name, result)
        assert result["trace_error"] == 0, (name, result)


def test_fuzz_1000_variants(bases: dict[str, Path], tmp_path: Path) -> None:
    _check(bases, tmp_path, 1000)


@pytest.mark.slow
def test_fuzz_5000_variants(bases: dict[str, Path], tmp_path: Path) -> None:
    _check(bases, tmp_path, 5000)
