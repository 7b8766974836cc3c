"""``tracefmt pack`` of a 2-rank run recorded under torchrun with every value, then ``verify``.

The GPT example under ``torchrun --standalone --nproc_per_node=2`` (gloo, DDP) records steps 0 to 2
with ``--values all`` (step 1 is the one where DDP rebuilds its gradient buckets, from index
buffers it fills outside the dispatcher: tests/recorder/test_blank_bytes.py).  The archive must
verify (exit 0), read back every tensor's values and fingerprints identical to the source, and be
smaller; its ratio and time are printed (``pytest -s``), never asserted as timings.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch.distributed as dist
from click.testing import CliRunner

from tests import badfiles as bad
from tests.torchrun import torchrun_ok
from tests.tracefmt.test_pack import assert_same_run
from tracefmt import rank_file_path
from tracefmt.cli import main as tracefmt_main

pytestmark = [
    pytest.mark.skipif(
        not dist.is_available() or not dist.is_gloo_available(),
        reason="torch.distributed with gloo is not available in this torch build",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("hdf5plugin") is None,
        reason="hdf5plugin (pip install 'tracefmt[archive]') is not installed",
    ),
]
SMALL = ["--layers", "1", "--embd", "16", "--heads", "2", "--block", "16", "--batch", "4"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("packrec") / "run"
    args = ["-m", "recorder.examples.gpt", "--ddp", "--steps", "3", "--out", str(run)]
    torchrun_ok([*args, *SMALL, "--values", "all", "--quiet"], timeout=150, out=run)
    return run


@pytest.mark.parametrize("values_filter", ["blosc2-zstd", "zstd", "gzip"])
def test_a_recorded_two_rank_run_packs_verifies_and_shrinks(
    recorded: Path, tmp_path: Path, values_filter: str
) -> None:
    archive = tmp_path / "archive"
    runner = CliRunner()
    done = runner.invoke(
        tracefmt_main, ["pack", str(recorded), "-o", str(archive), "--filter", values_filter, "--json"]
    )
    assert done.exit_code == 0, done.output
    summary = json.loads(done.output)
    assert summary["steps"] == 6  # steps 0 to 2 of ranks 0 and 1
    assert summary["output_bytes"] < summary["source_bytes"]
    print(
        f"\n{values_filter}: {summary['source_bytes']} -> {summary['output_bytes']} bytes, ratio "
        f"{summary['ratio']:.2f}, {summary['seconds']:.2f} s, {summary['mb_per_s']:.1f} MB/s"
    )
    same = assert_same_run(recorded, archive)  # every value of 6 steps, bit for bit
    assert same.values > 600
    assert same.rng_steps == 6  # each step's RNG states, and its module table, kept
    assert same.module_steps == 6
    verified = runner.invoke(tracefmt_main, ["verify", str(archive), "--json"])
    assert verified.exit_code == 0, verified.output
    report = json.loads(verified.output)
    assert report["findings"] == []
    assert {(c["step"], c["rank"], c["mode"]) for c in report["checks"]} == {
        (s, r, m) for s in (0, 1, 2) for r in (0, 1) for m in ("local", "chain")
    }
    assert all(c["verdict"] == "pass" for c in report["checks"])


def test_a_damaged_recorded_archive_fails_verify(recorded: Path, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    runner = CliRunner()
    assert runner.invoke(tracefmt_main, ["pack", str(recorded), "-o", str(archive)]).exit_code == 0
    damaged = tmp_path / "damaged"
    shutil.copytree(archive, damaged)
    bad.flip_chunk_byte(rank_file_path(damaged, 0), "data/float32")  # no checksum: Blosc2 may not see it
    result = runner.invoke(tracefmt_main, ["verify", str(damaged)])
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output
