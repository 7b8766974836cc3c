"""Run directories (format 1.2): the manifest, ranks that are missing or damaged, distributed
provenance, collective attributes, and every reading command's ``--rank``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import tracefmt
from tests.tracefmt import multirank as mr
from tracefmt.cli import main
from tracefmt.collective import CollectiveInfo, parse_collective
from tracefmt.validate import validate


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mr.write_run(tmp_path_factory.mktemp("clean") / "run", 3)


@pytest.fixture
def broken_run(tmp_path: Path) -> Path:
    """3 ranks expected: rank 1 wrote nothing, rank 2's file is cut in half."""
    path = mr.write_run(tmp_path / "run", 3, ranks=[0, 2])
    mr.truncate(path / "rank-00002.tft.h5")
    return path


def test_clean_run_reads_and_validates(clean_run: Path) -> None:
    assert validate(clean_run) == []
    with tracefmt.open(clean_run) as trace:
        assert trace.manifest == mr.manifest(3)
        assert (trace.ranks, trace.expected_ranks, trace.missing_ranks) == ((0, 1, 2),) * 2 + ((),)
        assert trace.damaged_ranks == {}
        info = trace.rank_file(2).distributed
        assert info is not None
        assert (info.rank, info.world_size, info.hostname) == (2, 3, "node0")
        op = next(o for o in trace.step(1, rank=2).ops if o.name == "c10d::allreduce_.default")
        got = parse_collective(op.attrs["c10d"], world_size=3, rank=2)
        assert isinstance(got, CollectiveInfo)
        assert (got.kind, got.seq, got.reduce_op, got.backend_seq) == ("collective", 0, "SUM", 2)


def test_missing_and_damaged_ranks_are_reported_not_raised(broken_run: Path) -> None:
    with tracefmt.open(broken_run) as trace:
        assert trace.ranks == (0,)
        assert trace.missing_ranks == (1,)
        assert list(trace.damaged_ranks) == [2]
        assert "rank-00002.tft.h5" in trace.damaged_ranks[2]
        assert trace.steps(0) == [0, 1, 2]
        with pytest.raises(tracefmt.TraceError, match=r"Rank 2's file .* cannot be read"):
            trace.step(0, rank=2)
        with pytest.raises(tracefmt.TraceError, match="Rank 1 wrote no file"):
            trace.step(0, rank=1)


def test_a_run_with_no_readable_rank_still_raises(broken_run: Path) -> None:
    mr.truncate(broken_run / "rank-00000.tft.h5")
    with pytest.raises(tracefmt.TraceFormatError, match="None of the 2 rank files"):
        tracefmt.open(broken_run)


def test_without_a_manifest_the_world_size_names_the_ranks(broken_run: Path) -> None:
    (broken_run / "run.json").unlink()
    with tracefmt.open(broken_run) as trace:
        assert trace.manifest is None
        assert trace.expected_ranks == (0, 1, 2)
        assert trace.missing_ranks == (1,)


def test_a_damaged_manifest_is_reported_and_the_run_read(broken_run: Path) -> None:
    (broken_run / "run.json").write_text('{"tracefmt_run": "1.2", "run_id"')
    with tracefmt.open(broken_run) as trace:
        assert trace.manifest is None
        assert trace.manifest_problem is not None
        assert "not valid JSON" in trace.manifest_problem
        assert trace.ranks == (0,)


def test_a_rank_file_of_another_run_is_damaged(clean_run: Path, tmp_path: Path) -> None:
    run_dir = Path(shutil.copytree(clean_run, tmp_path / "run"))
    manifest = mr.manifest(3)
    tracefmt.write_manifest(run_dir, type(manifest)(**{**manifest.__dict__, "run_id": "other"}))
    with pytest.raises(tracefmt.TraceFormatError, match="belongs to another run"):
        tracefmt.open(run_dir)  # every file disagrees with the manifest


def test_coalesced_ops_may_share_a_sequence_number(tmp_path: Path) -> None:
    path = mr.write_rank(tmp_path, 0, 2, extra_allreduce=True, c10d={"seq": 0, "coalesced": [0, 2]})
    assert validate(path) == []


def test_info_shows_a_row_per_rank(broken_run: Path) -> None:
    code, out, err = run("info", str(broken_run))
    assert code == 1, err  # a rank is missing or damaged
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 10}
    assert set(rows) == {"0", "1", "2"}
    assert "node0" in rows["0"]
    assert " ok " in rows["0"]
    assert "missing" in rows["1"]
    assert "damaged" in rows["2"]
    assert "rank 2 damaged:" in out


def test_info_json_is_strict_and_complete(broken_run: Path) -> None:
    code, out, _ = run("info", str(broken_run), "--json")
    assert code == 1
    data = json.loads(out)
    assert (data["expected_ranks"], data["missing_ranks"]) == ([0, 1, 2], [1])
    assert list(data["damaged_ranks"]) == ["2"]
    rows = {r["rank"]: r for r in data["rank_info"]}
    assert rows[0]["status"] == "ok"
    assert (rows[0]["steps"], rows[0]["last_step"], rows[0]["host"]) == (3, 2, "node0")
    assert rows[0]["file_bytes"] > 0
    assert rows[1]["status"] == "missing"
    assert rows[1]["steps"] is None
    assert rows[2]["status"] == "damaged"
    assert rows[2]["problem"]
    assert data["provenance"]["distributed"]["rank"] == 0


def test_info_of_one_rank(broken_run: Path, clean_run: Path) -> None:
    code, out, _ = run("info", str(broken_run), "--rank", "0", "--json")
    assert code == 0
    assert [r["rank"] for r in json.loads(out)["rank_info"]] == [0]
    code, out, _ = run("info", str(clean_run))
    assert code == 0


def test_ls_lists_every_rank_and_names_the_missing(broken_run: Path, clean_run: Path) -> None:
    code, out, _ = run("ls", str(clean_run), "--json")
    assert code == 0
    rows = [(r["step"], r["rank"]) for r in json.loads(out)]
    assert rows == [(s, r) for s in range(3) for r in range(3)]
    code, out, _ = run("ls", str(clean_run), "--rank", "1", "--json")
    assert {r["rank"] for r in json.loads(out)} == {1}
    code, out, err = run("ls", str(broken_run), "--json")
    assert code == 0
    assert {r["rank"] for r in json.loads(out)} == {0}
    assert "rank 2 is damaged" in err
    assert "rank 1 has no file" in err


def test_show_dump_and_validate_take_a_rank(broken_run: Path, clean_run: Path, tmp_path: Path) -> None:
    code, out, _ = run("show", str(clean_run), "--step", "1", "--rank", "2", "--json")
    assert code == 0
    assert json.loads(out)["rank"] == 2
    code, _, err = run("show", str(broken_run), "--step", "1", "--rank", "2")
    assert code == 2
    assert "cannot be read" in err
    code, _, err = run("dump", str(clean_run), "--step", "0", "--rank", "1", "--tensor", "fc.weight",
                       "-o", str(tmp_path / "w.npy"))  # fmt: skip
    assert code == 2  # rank 1's step read: stats only, no values to dump
    assert "has no recorded values" in err
    code, _, err = run("dump", str(broken_run), "--step", "0", "--rank", "2", "--tensor", "0",
                       "-o", str(tmp_path / "w.npy"))  # fmt: skip
    assert code == 2
    assert "cannot be read" in err
    code, out, _ = run("validate", str(broken_run), "--rank", "0")
    assert code == 0, out
    code, out, _ = run("validate", str(broken_run), "--json")
    assert code == 2  # rank 2's file is unreadable
    assert {f["rule"] for f in json.loads(out)} >= {"TF-FILE-001"}
    code, _, err = run("validate", str(broken_run), "--rank", "1")
    assert code == 2
    assert "no rank file of rank(s) 1" in err
