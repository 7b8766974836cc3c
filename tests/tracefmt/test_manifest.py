"""The run manifest (``run.json``): round trip, atomic write, malformed files refused by field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import tracefmt
from tracefmt import (
    ProcessGroupInfo,
    RunManifest,
    TraceError,
    TraceFormatError,
    UnsupportedVersionError,
    group_id,
    read_manifest,
    write_manifest,
)


def _manifest(world: int = 4) -> RunManifest:  # world >= 4: it has groups {0, 2}, {1, 3}
    ranks = tuple(range(world))
    return RunManifest(
        run_id="run-7",
        world_size=world,
        expected_ranks=ranks,
        run_id_source="TORCHELASTIC_RUN_ID",
        process_groups=(
            ProcessGroupInfo(group_id("0", ranks), "0", ranks, "gloo"),
            ProcessGroupInfo(group_id("1", [0, 2]), "1", (0, 2), None),
            ProcessGroupInfo(group_id("1", [1, 3]), "1", (1, 3), "nccl"),
        ),
        created="2026-12-01T23:00:00Z",
        writer=f"tracefmt {tracefmt.__version__}",
    )


def test_group_id_hashes_the_sorted_ranks() -> None:
    assert group_id("0", [1, 0]) == group_id("0", (0, 1)) == "0:fa583645"  # sha1(b"0,1")
    assert group_id("1", [0, 2]) != group_id("1", [1, 3])  # same name, other ranks


def test_round_trip(tmp_path: Path) -> None:
    m = _manifest()
    write_manifest(tmp_path, m)
    assert read_manifest(tmp_path) == m
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["tracefmt_run"] == "1.6"
    assert data["process_groups"][1] == {
        "id": group_id("1", [0, 2]),
        "name": "1",
        "ranks": [0, 2],
        "backend": None,
    }
    assert m.group(group_id("1", [1, 3])) == m.process_groups[2]
    assert m.group("9:00000000") is None


def test_rewrite_is_atomic_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    write_manifest(tmp_path, RunManifest("run-7", 2, (0, 1), "generated"))
    write_manifest(tmp_path, _manifest(4))
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
    got = read_manifest(tmp_path)
    assert got is not None
    assert got.world_size == 4


def test_manifest_is_as_readable_as_a_new_file(tmp_path: Path) -> None:
    # mkstemp makes files 0600: a manifest other users of a shared cluster cannot read.
    write_manifest(tmp_path, _manifest())
    plain = tmp_path / "plain"
    plain.touch()
    assert (tmp_path / "run.json").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_absent_manifest_is_none(tmp_path: Path) -> None:
    assert read_manifest(tmp_path) is None


def test_invalid_manifest_is_not_written(tmp_path: Path) -> None:
    bad = RunManifest("r", 2, (0, 5), "argument")
    with pytest.raises(TraceError, match="expected_ranks"):
        write_manifest(tmp_path, bad)
    assert not (tmp_path / "run.json").exists()


def _good() -> dict[str, Any]:
    return _manifest().to_dict()


def _with(**changes: Any) -> dict[str, Any]:
    data = _good()
    for k, v in changes.items():
        if v is _DROP:
            del data[k]
        else:
            data[k] = v
    return data


_DROP = object()


def _group(**changes: Any) -> dict[str, Any]:
    g = {"id": group_id("0", [0, 1]), "name": "0", "ranks": [0, 1], "backend": "gloo"}
    g.update(changes)
    return g


MALFORMED: list[tuple[Any, str]] = [
    ([1, 2], "not a JSON object"),
    (_with(run_id=_DROP), "'run_id' is missing"),
    (_with(run_id=""), "'run_id'"),
    (_with(run_id=7), "'run_id'"),
    (_with(world_size="4"), "'world_size'"),
    (_with(world_size=True), "'world_size'"),
    (_with(world_size=0), "'world_size'"),
    (_with(expected_ranks=[0, 0]), "'expected_ranks'"),
    (_with(expected_ranks=[0, 4]), "'expected_ranks'"),
    (_with(expected_ranks=[]), "'expected_ranks'"),
    (_with(expected_ranks="0,1"), "'expected_ranks'"),
    (_with(run_id_source="guessed"), "'run_id_source'"),
    (_with(tracefmt_run="one"), "'tracefmt_run'"),
    (_with(process_groups={}), "'process_groups'"),
    (_with(process_groups=[_group(id="0:00000000")]), "does not match its name and ranks"),
    (_with(process_groups=[_group(ranks=[0, 9])]), "'ranks'"),
    (_with(process_groups=[_group(ranks=[])]), "ranks"),
    (_with(process_groups=[_group(backend=3)]), "'backend'"),
    (_with(process_groups=[_group(), _group()]), "appears twice"),
    (_with(process_groups=["0"]), "process_groups[0]"),
    (_with(created=5), "'created'"),
]


@pytest.mark.parametrize(("data", "words"), MALFORMED)
def test_malformed_fields_are_refused_by_name(tmp_path: Path, data: Any, words: str) -> None:
    (tmp_path / "run.json").write_text(json.dumps(data))
    with pytest.raises(TraceFormatError) as e:
        read_manifest(tmp_path)
    assert words in str(e.value)
    assert str(tmp_path / "run.json") in str(e.value)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b'{"tracefmt_run": "1.2", "run_id": "r", ', "not valid JSON"),
        (b'{"world_size": NaN}', "not valid JSON"),
        (b'\xff\xfe{"a": 1}', "not UTF-8"),
        (b"", "not valid JSON"),
    ],
)
def test_unparseable_manifest_is_refused(tmp_path: Path, raw: bytes, words: str) -> None:
    (tmp_path / "run.json").write_bytes(raw)
    with pytest.raises(TraceFormatError, match=words):
        read_manifest(tmp_path)


def test_unknown_major_version_is_refused_and_newer_minor_read(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(json.dumps(_with(tracefmt_run="2.0")))
    with pytest.raises(UnsupportedVersionError, match="major version 1"):
        read_manifest(tmp_path)
    newer = _with(tracefmt_run="1.9", run_id_source="slurm", future_key={"x": 1})
    (tmp_path / "run.json").write_text(json.dumps(newer))
    got = read_manifest(tmp_path)
    assert got is not None
    assert got.run_id_source == "slurm"
