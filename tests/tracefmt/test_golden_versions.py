"""Every format version's golden traces (tests/data/<version>/) read, validate and replay with the
current tracefmt and replayer as their manifests say (spec/versioning.md, "Golden traces").

The goldens of 1.1 on were written by ``tests/goldgen.py`` run on the code of the commit that
introduced each version; never regenerate them to make this test pass.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import pytest

import tracefmt
from replayer.check import check_step
from tests import goldgen
from tests.golden import (
    ROOT,
    describe_light_step,
    describe_modules,
    describe_rng_states,
    describe_step,
    minor,
    versions,
)
from tracefmt import _layout as L
from tracefmt.validate import validate

#: What git stores of one version's goldens (zlib-compressed blobs).  On disk each rank file is
#: about 250-550 KB: the writer allocates a whole chunk of every per-step table however few rows
#: it holds, and those chunks are zeros.
MAX_STORED_BYTES = 200_000
NEW_VERSIONS = [v for v in versions() if v != "1.0"]


def _manifest(version: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / version / "manifest.json").read_text())
    return data


def test_every_format_version_up_to_this_one_has_goldens() -> None:
    """A format bump without its goldens fails here (spec/versioning.md)."""
    here = versions()
    assert here == [f"{L.FORMAT_MAJOR}.{m}" for m in range(L.FORMAT_MINOR + 1)]


@pytest.mark.parametrize("version", versions())
def test_goldens_are_small_in_git(version: str) -> None:
    files = [p for p in (ROOT / version).rglob("*") if p.is_file()]
    stored = sum(len(zlib.compress(p.read_bytes(), 1)) for p in files)
    assert stored < MAX_STORED_BYTES, (version, stored)


@pytest.mark.parametrize("version", NEW_VERSIONS)
def test_golden_rank_files_read_as_written(version: str) -> None:
    manifest = _manifest(version)
    assert manifest["format_version"] == version
    for name, want in manifest["files"].items():
        with tracefmt.open(ROOT / version / name) as trace:
            rank_file = trace.rank_file()
            assert ".".join(map(str, rank_file.version)) == version
            assert trace.run_id == manifest["run_id"]
            assert (rank_file.rank, trace.world_size) == (want["rank"], want["world_size"])
            assert (rank_file.values_filter, rank_file.hist_bins) == (
                want["values_filter"],
                want["hist_bins"],
            )
            assert json.loads(trace.provenance.to_json()) == want["provenance"]
            assert trace.steps() == [s["step"] for s in want["steps"]]
            for expected in want["steps"]:
                step = trace.step(expected["step"])
                got = describe_step(step, starts=minor(version) >= 3)
                if minor(version) >= 5:
                    got["modules"] = describe_modules(trace.modules(expected["step"]))
                if minor(version) >= 6:
                    got["rng_states"] = describe_rng_states(step)
                assert got == expected, f"{version}/{name}, step {expected['step']}"
            assert [s.graph for s in trace.summaries()] == [s["graph"] for s in want["steps"]]
            light = [describe_light_step(s) for s in trace.light_steps()]
            assert light == want.get("light_steps", []), f"{version}/{name}"


@pytest.mark.parametrize("version", NEW_VERSIONS)
def test_golden_runs_read_as_a_run(version: str) -> None:
    manifest = _manifest(version)
    with tracefmt.open(ROOT / version / "run") as trace:
        assert trace.ranks == (0, 1)
        assert trace.missing_ranks == ()
    run_manifest = tracefmt.read_manifest(ROOT / version / "run")
    want = manifest.get("run_manifest")
    assert (run_manifest is None) == (want is None)
    if run_manifest is not None:
        written = json.loads((ROOT / version / "run" / "run.json").read_text())
        assert written["tracefmt_run"] == want["tracefmt_run"] == version
        # to_dict() names the current version: RunManifest keeps the content, not the version
        assert {**run_manifest.to_dict(), "tracefmt_run": version} == want


@pytest.mark.parametrize("version", versions())
def test_goldens_validate_clean(version: str) -> None:
    runs = sorted((ROOT / version).rglob("run"))
    files = [p for p in (ROOT / version).glob("*.tft.h5")]
    assert runs or files
    for path in [*runs, *files]:
        assert validate(path, deep=True) == [], path


@pytest.mark.parametrize("version", NEW_VERSIONS)
def test_golden_steps_with_values_replay_clean(version: str) -> None:
    """``replayer check`` re-executes the aten ops of every step with values to the recorded bits:
    with each step's own attributes and storage offsets (1.1), which differ from the first step's."""
    manifest = _manifest(version)
    with tracefmt.open(ROOT / version / "run") as trace:
        for name, want in manifest["files"].items():
            rank = want["rank"]
            assert want["replay"], name
            for step, ops in want["replay"].items():
                assert ops, (version, name, step)  # the generator says which ops re-execute
                report = check_step(trace, int(step), rank=rank)
                assert report.passed, (version, name, step, report.failed)
                checked = [r.op for r in report.results if r.status == "checked"]
                assert checked == ops, (version, name, step)


def test_the_1_0_values_replay_where_numpy_computes_as_torch() -> None:
    """The 1.0 casts' values were made with numpy and ml_dtypes (tests/golden10.py), not by the ops:
    the replay reports every op, and the casts to float16/32/64, which numpy rounds as torch does,
    check clean.  (The other 1.0 files hold too few values for any op to be re-executed.)"""
    with tracefmt.open(ROOT / "1.0" / "values.tft.h5") as trace:
        for step in trace.steps():
            report = check_step(trace, step)
            loaded = trace.step(step)
            assert len(report.results) == len(loaded.ops)
            exact = {
                op.index
                for op in loaded.ops
                if loaded.tensors[op.outputs[0]].meta.dtype.label in {"float16", "float32", "float64"}
            }
            assert len(exact) == 3
            assert {r.op for r in report.results if r.status == "checked"} == exact


def test_the_generator_refuses_an_existing_version(tmp_path: Path) -> None:
    (tmp_path / "1.9").mkdir()
    with pytest.raises(SystemExit, match="never regenerated"):
        goldgen.generate(tmp_path / "1.9")
    assert list((tmp_path / "1.9").iterdir()) == []


def test_the_current_version_goldens_are_reproducible(tmp_path: Path) -> None:
    """The generator run by this code describes its records as the kept manifest of this version
    says (only the package versions in the provenance may differ)."""
    kept = _manifest(L.FORMAT_VERSION)
    fresh = goldgen.generate(tmp_path / L.FORMAT_VERSION)
    for manifest in (kept, fresh):
        for described in manifest["files"].values():
            for key in ("tracefmt", "h5py", "hdf5", "numpy", "python"):
                described["provenance"].pop(key)
    assert fresh == kept
