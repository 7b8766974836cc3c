"""The 1.0 golden traces in tests/data/1.0/, written by tracefmt 1.0, read by this one (see
tests/golden.py and tests/golden10.py; every version's goldens: test_golden_versions.py).

Never regenerate them to make this test pass: a failure here means the current reader no longer
reads what an earlier version wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import tracefmt
from tests.golden import DATA, MANIFEST, ROOT, SWITCH, describe_step, main
from tracefmt.validate import validate

#: The golden set must stay small enough to keep in git.  (Every file holds at least one full chunk
#: of each per-step table, about 250 KB with the current chunk sizes.)
MAX_TOTAL_BYTES = 1_500_000


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(MANIFEST.read_text())
    return data


def test_the_golden_set_is_complete_and_small(manifest: dict[str, Any]) -> None:
    names = sorted(manifest["files"])
    assert names == [
        "run/rank-00000.tft.h5",
        "run/rank-00001.tft.h5",
        "stats_only.tft.h5",
        "values.tft.h5",
    ]
    for name in names:
        assert (DATA / name).is_file(), name
    assert sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file()) < MAX_TOTAL_BYTES


@pytest.mark.parametrize(
    "name", ["values.tft.h5", "stats_only.tft.h5", "run/rank-00000.tft.h5", "run/rank-00001.tft.h5"]
)
def test_golden_file_reads_as_written(manifest: dict[str, Any], name: str) -> None:
    want = manifest["files"][name]
    with tracefmt.open(DATA / name) as trace:
        rank_file = trace.rank_file()
        assert ".".join(map(str, rank_file.version)) == manifest["format_version"]
        assert trace.run_id == manifest["run_id"]
        assert (rank_file.rank, trace.world_size) == (want["rank"], want["world_size"])
        assert (rank_file.values_filter, rank_file.hist_bins) == (
            want["values_filter"],
            want["hist_bins"],
        )
        assert json.loads(trace.provenance.to_json()) == manifest["provenance"]
        assert trace.steps() == [s["step"] for s in want["steps"]]
        for expected in want["steps"]:
            got = describe_step(trace.step(expected["step"]))
            assert got == expected, f"{name}, step {expected['step']}"
        summaries = trace.summaries()
        assert [s.graph for s in summaries] == [s["graph"] for s in want["steps"]]


def test_golden_run_directory(manifest: dict[str, Any]) -> None:
    with tracefmt.open(DATA / "run") as trace:
        assert trace.ranks == (0, 1)
        assert trace.world_size == 2
        for rank in (0, 1):
            want = manifest["files"][f"run/rank-{rank:05d}.tft.h5"]["steps"]
            assert trace.steps(rank) == [s["step"] for s in want]
            assert describe_step(trace.step(want[-1]["step"], rank)) == want[-1]


def test_the_stats_only_graph_repeats_and_is_stored_once(manifest: dict[str, Any]) -> None:
    graphs = [s["graph"] for s in manifest["files"]["stats_only.tft.h5"]["steps"]]
    assert graphs == [0, 0, 0, 0, 0, 1, 0, 0]
    with tracefmt.open(DATA / "stats_only.tft.h5") as trace:
        assert trace.rank_file().length("graphs") == 2


def test_golden_files_validate_clean() -> None:
    for path in sorted(DATA.rglob("*.tft.h5")):
        assert list(validate(path, deep=True)) == [], path


def test_make_golden_never_rewrites_existing_goldens(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without the switch, and with it once the current version's goldens exist, ``make golden``
    refuses and touches nothing."""
    before = {p: p.stat().st_mtime_ns for p in ROOT.rglob("*") if p.is_file()}
    monkeypatch.delenv(SWITCH, raising=False)
    assert main() != 0
    assert "Refusing" in capsys.readouterr().err
    monkeypatch.setenv(SWITCH, "1")
    assert main() == 1  # this version's goldens are in tests/data (test_golden_versions checks it)
    assert "exists" in capsys.readouterr().err
    assert before == {p: p.stat().st_mtime_ns for p in ROOT.rglob("*") if p.is_file()}


def test_the_generator_still_describes_what_the_writer_writes(
    tmp_path: Path, manifest: dict[str, Any]
) -> None:
    """Regenerating into a scratch directory gives the same manifest (only the tracefmt/h5py
    versions in the provenance may differ): the golden files are reproducible."""
    from tests.golden10 import generate

    fresh = generate(tmp_path)
    assert fresh["files"] == manifest["files"]
    for name in manifest["files"]:
        with tracefmt.open(tmp_path / name) as trace:
            for expected in manifest["files"][name]["steps"]:
                assert describe_step(trace.step(expected["step"])) == expected
