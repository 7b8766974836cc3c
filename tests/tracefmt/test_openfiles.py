"""A run keeps at most ``tracefmt.reader.MAX_OPEN_FILES`` rank files open; the others are closed
and opened again when read, reading the same steps."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import tracefmt
from tests.tracefmt.multirank import RUN_ID, distributed, dp_graph, dp_step, write_run
from tracefmt import TraceError, TraceWriter, rank_file_path, reader
from tracefmt.writer import make_provenance


def _open_fds(run: Path) -> int:
    """File descriptors of this process on files under ``run``."""
    out = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        out += target.startswith(str(run))
    return out


linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="counts open files through /proc/self/fd"
)


def _fingerprints(trace: tracefmt.Trace, rank: int) -> list[list[int | None]]:
    return [[t.stats.fingerprint for t in s.tensors if t.stats] for s in trace.iter_steps(rank)]


@linux_only
def test_a_run_keeps_at_most_its_budget_of_files_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = write_run(tmp_path / "run", 5, steps=3)
    with tracefmt.open(run) as whole:
        expected = {r: _fingerprints(whole, r) for r in whole.ranks}
        assert _open_fds(run) == 5
    monkeypatch.setattr(reader, "MAX_OPEN_FILES", 2)
    with tracefmt.open(run) as t:
        assert t.ranks == (0, 1, 2, 3, 4)
        assert _open_fds(run) <= 2
        for _ in range(2):  # every rank is closed and opened again at least once
            for r in t.ranks:
                assert t.steps(r) == [0, 1, 2]
                assert _fingerprints(t, r) == expected[r]
                assert t.step(1, r).rank == r
                assert _open_fds(run) <= 2
        step = t.step(2, 0)
        for r in (1, 2, 3):
            t.step(0, r)  # rank 0 is closed meanwhile; its step still reads
        assert [op.name for op in step.ops][:2] == ["aten::mm.default", "aten::mm.default"]
        assert step.tensors[0].stats is not None
    assert _open_fds(run) == 0
    with pytest.raises(TraceError, match="closed"):
        t.step(0, 0)


def test_a_file_opened_again_shows_its_steps_until_refresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader, "MAX_OPEN_FILES", 1)
    run = tmp_path / "run"
    write_run(run, 2, steps=2, ranks=[0])
    rng = np.random.default_rng(1)
    prov = dataclasses.replace(make_provenance(), extra={"distributed": distributed(1, 2)})
    with TraceWriter(
        rank_file_path(run, 1), run_id=RUN_ID, rank=1, world_size=2, fsync=False, provenance=prov
    ) as w:
        w.write_step(dp_step(0, dp_graph(1, 2), rng))
        w.flush()
        with tracefmt.open(run) as t:
            assert t.steps(1) == [0]
            assert t.steps(0) == [0, 1]  # closes rank 1's file
            w.write_step(dp_step(1, dp_graph(1, 2), rng))
            w.flush()
            assert t.steps(1) == [0]  # opened again: the steps it showed before
            t.refresh()
            assert t.steps(1) == [0, 1]
            assert t.step(1, 1).rank == 1
