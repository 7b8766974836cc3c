"""Runs for the analysis tests: a tiny MLP recorded by the recorder (in a subprocess: the tests
never import torch), and a synthetic two-rank run with full and light steps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.synth import mlp_graph, synthetic_step
from tracefmt import (
    Event,
    LightKind,
    LightStepRecord,
    RunManifest,
    TraceWriter,
    rank_file_path,
    write_manifest,
)
from tracefmt.light import empty_light_rows

HERE = Path(__file__).resolve().parent
#: Steps of the recorded run.
RECORDED_STEPS = 6


@pytest.fixture(scope="session")
def recorded_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory of a tiny MLP recorded for 6 steps (graph and statistics, every step)."""
    pytest.importorskip("torch", reason="recording the test run needs torch")
    out = tmp_path_factory.mktemp("analysis") / "tiny"
    subprocess.run(
        [sys.executable, str(HERE / "_record_tiny.py"), str(out), str(RECORDED_STEPS)],
        check=True,
        timeout=240,
    )
    return out


def _light(step: int, rng: np.random.Generator) -> LightStepRecord:
    rows = empty_light_rows(2)
    rows["name"] = [0, 1]
    rows["kind"] = [LightKind.OUTPUT, LightKind.GRADIENT]
    rows["flags"] = 3
    for name in ("min", "max", "mean", "std", "norm"):
        rows[name] = rng.random(2)
    rows["numel"] = [8, 16]
    return LightStepRecord(
        step=step,
        names=["layers.0", "layers.0.weight"],
        rows=rows,
        scalars={"loss": float(rng.random())},
        events=[Event("spike", "a light event")] if step == 7 else [],
        wall_time=1.7e9 + step,
    )


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two ranks, each with full steps 0..9 (two graph structures, a step's own lr) and light
    steps 0..11, and a run manifest."""
    run = tmp_path_factory.mktemp("analysis") / "synthetic"
    for rank in range(2):
        rng = np.random.default_rng(rank)
        with TraceWriter(rank_file_path(run, rank), run_id="r1", rank=rank, world_size=2) as w:
            for s in range(10):
                graph = mlp_graph(layers=3 if s == 6 else 2, lr=0.01 * (s + 1))
                w.write_step(synthetic_step(s, graph, rng, with_values=False))
            for s in range(12):
                w.write_light_step(_light(s, rng))
            w.flush()
    write_manifest(
        run, RunManifest(run_id="r1", world_size=2, expected_ranks=(0, 1), run_id_source="argument")
    )
    return run
