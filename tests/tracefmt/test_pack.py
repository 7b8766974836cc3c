"""``tracefmt pack`` and ``tracefmt verify`` without torch: the golden runs packed and verified.

The 2-rank golden runs of ``tests/data`` (values that ``replayer check`` re-executes to the recorded
bits, a manifest, distributed provenance) are packed; the archive must read back tensor for tensor
and bit for bit, keep the manifest and provenance, say where it came from, validate clean and
verify; a file of format 1.0 packs into the current format.  Then the refusals, a damaged archive
(verify exits 1), and a reader or packer without hdf5plugin or the replayer (a clear error).
A 2-rank run recorded under torchrun is packed in ``tests/recorder/test_pack_recorded.py``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import tracefmt
from replayer.check.verify import PASS, verify
from tests import badfiles as bad
from tests.tracefmt.packfiles import with_packed_from
from tracefmt import TraceError, read_manifest
from tracefmt import _layout as L
from tracefmt.cli import main as tracefmt_main
from tracefmt.pack import PACK_TOOL, pack
from tracefmt.packinfo import PACKED_FROM_KEY, parse_packed_from
from tracefmt.validate import validate

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
needs_plugin = pytest.mark.skipif(
    importlib.util.find_spec("hdf5plugin") is None,
    reason="hdf5plugin (pip install 'tracefmt[archive]') is not installed",
)


def _golden_run(version: str) -> Path:
    run = DATA / version / "run"
    if not run.is_dir():
        pytest.skip(f"no golden run of format {version}")
    return run


class Compared(NamedTuple):
    """What :func:`assert_same_run` found equal: tensors with values, steps with RNG states
    (format 1.6) and steps with a module table (format 1.5)."""

    values: int
    rng_steps: int
    module_steps: int


def assert_same_run(source: Path, archive: Path) -> Compared:
    """Every step of every rank of ``archive`` equals ``source``'s: graph, statistics (with their
    fingerprints), histograms, events, scalars, RNG states, module table and values bit for bit,
    and each rank file's ``data_index`` fingerprints row for row."""
    n_values = n_rng = n_modules = 0
    with tracefmt.open(source) as src, tracefmt.open(archive) as out:
        assert out.ranks == src.ranks
        assert out.run_id == src.run_id
        for rank in src.ranks:
            assert out.steps(rank) == src.steps(rank)
            for s in src.steps(rank):
                a, b = src.step(s, rank), out.step(s, rank)
                assert [op.name for op in b.ops] == [op.name for op in a.ops]
                assert [op.attrs for op in b.ops] == [op.attrs for op in a.ops]
                assert (b.scalars, b.events) == (a.scalars, a.events)
                assert b.rng_states == a.rng_states, (s, rank)
                n_rng += bool(a.rng_states)
                modules = src.modules(s, rank)
                assert out.modules(s, rank) == modules, (s, rank)
                n_modules += modules is not None and len(modules.modules) > 0
                assert len(b.tensors) == len(a.tensors)
                for x, y in zip(a.tensors, b.tensors, strict=True):
                    assert y.meta == x.meta, (s, rank, x.index)
                    assert y.stats == x.stats or (y.stats is not None and _same_stats(x, y))
                    assert y.histogram == x.histogram
                    assert y.has_values == x.has_values
                    if x.has_values:
                        vx, vy = x.values(), y.values()
                        assert vy.dtype == vx.dtype
                        assert vy.shape == vx.shape
                        assert vy.tobytes() == vx.tobytes(), (s, rank, x.index)
                        n_values += 1
            assert _fingerprints(out.rank_file(rank).path) == _fingerprints(src.rank_file(rank).path)
    return Compared(values=n_values, rng_steps=n_rng, module_steps=n_modules)


def _same_stats(x: tracefmt.TensorRecord, y: tracefmt.TensorRecord) -> bool:
    """Statistics equal bit for bit, NaN included (a NaN moment is not == itself)."""
    assert x.stats is not None
    assert y.stats is not None
    return np.array_equal(
        np.array(list(vars(x.stats).values()), dtype=object).astype(str),
        np.array(list(vars(y.stats).values()), dtype=object).astype(str),
    )


def _fingerprints(path: Path) -> list[tuple[int, int, int]]:
    """(tensor, item count, fingerprint) of every ``data_index`` row, in step order."""
    with h5py.File(path, "r", swmr=True) as f:
        steps, index = f["steps"][:], f["data_index"][:]
        return [
            (int(r["tensor"]), int(r["count"]), int(r["fingerprint"]))
            for st in steps
            for r in index[int(st["data_start"]) : int(st["data_start"]) + int(st["data_count"])]
        ]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    pytest.importorskip("hdf5plugin")
    source = _golden_run("1.5")
    archive = tmp_path_factory.mktemp("pack") / "archive"
    result = CliRunner().invoke(tracefmt_main, ["pack", str(source), "-o", str(archive)])
    assert result.exit_code == 0, result.output
    assert "packed 6 steps of 2 ranks" in result.output
    return source, archive


@needs_plugin
def test_the_archive_reads_back_bit_for_bit(packed: tuple[Path, Path]) -> None:
    source, archive = packed
    assert assert_same_run(source, archive).values > 0
    assert sorted(p.name for p in archive.iterdir()) == sorted(p.name for p in source.iterdir())
    assert read_manifest(archive) == read_manifest(source)


@needs_plugin
def test_the_archive_uses_the_filter_and_says_what_it_was_packed_from(
    packed: tuple[Path, Path],
) -> None:
    source, archive = packed
    with tracefmt.open(source) as src, tracefmt.open(archive) as out:
        for rank in src.ranks:
            rf, orig = out.rank_file(rank), src.rank_file(rank)
            assert rf.values_filter == "blosc2-zstd"
            extra = dict(rf.provenance.extra)
            info = parse_packed_from(extra)
            assert info is not None
            assert not hasattr(info, "message")
            extra.pop(PACKED_FROM_KEY)
            assert extra == dict(orig.provenance.extra)  # code, command, distributed, ... kept
            assert rf.provenance.created == orig.provenance.created
            assert (info.tool, info.filter, info.tracefmt) == (
                PACK_TOOL,
                "blosc2-zstd",
                tracefmt.__version__,
            )
            own, manifest = info.sources
            assert Path(own.path) == orig.path.resolve()
            assert (own.bytes, own.sha256) == (orig.path.stat().st_size, _sha256(orig.path))
            assert own.format_version == "1.5"
            assert own.values_filter == orig.values_filter
            assert manifest.sha256 == _sha256(source / "run.json")
    assert validate(archive, deep=True) == []
    shown = CliRunner().invoke(tracefmt_main, ["info", str(archive)])
    assert shown.exit_code == 0, shown.output
    assert "packed: by tracefmt pack" in shown.output
    assert "with blosc2-zstd from" in shown.output


@needs_plugin
def test_verify_passes_on_the_archive_and_prints_its_table(packed: tuple[Path, Path]) -> None:
    _, archive = packed
    result = CliRunner().invoke(tracefmt_main, ["verify", str(archive)])
    assert result.exit_code == 0, result.output
    assert "VERIFIED" in result.output
    assert "re-execution" in result.output
    report = verify(archive)
    assert report.passed
    assert report.exit_code == 0
    with tracefmt.open(archive) as t:
        with_values = {
            (s, r)
            for r in t.ranks
            for s in t.steps(r)
            if any(x.has_values for x in t.step(s, r).tensors)
        }
    assert with_values
    assert {(c.step, c.rank) for c in report.checks if c.verdict == PASS} == with_values
    assert all(c.failed == 0 for c in report.checks)
    assert all(c.checked > 0 for c in report.checks if c.verdict == PASS)


@needs_plugin
def test_verify_json(packed: tuple[Path, Path]) -> None:
    result = CliRunner().invoke(tracefmt_main, ["verify", str(packed[1]), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["passed"] is True
    assert data["findings"] == []
    assert {c["mode"] for c in data["checks"]} == {"local", "chain", "-"}  # "-": a step without values


def test_a_format_1_6_run_keeps_its_rng_states_and_module_tables(tmp_path: Path) -> None:
    source = _golden_run("1.6")
    pack(source, tmp_path / "a", values_filter="gzip")
    found = assert_same_run(source, tmp_path / "a")
    assert found.values > 0
    assert found.rng_steps > 0
    assert found.module_steps > 0
    assert validate(tmp_path / "a", deep=True) == []


def test_an_unreadable_manifest_is_refused(tmp_path: Path) -> None:
    run = shutil.copytree(_golden_run("1.2"), tmp_path / "run")
    (run / "run.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TraceError, match="manifest") as caught:
        pack(run, tmp_path / "a", values_filter="gzip")
    message = str(caught.value)
    assert str(run / "run.json") in message
    assert "cannot be read" in message
    assert "Repair or restore run.json" in message
    assert not (tmp_path / "a").exists()
    result = CliRunner().invoke(
        tracefmt_main, ["pack", str(run), "-o", str(tmp_path / "b"), "--filter", "gzip"]
    )
    assert result.exit_code == 2
    assert "run.json" in result.output


@pytest.mark.parametrize("values_filter", ["gzip", "zstd"])
def test_a_format_1_0_run_packs_into_the_current_format(tmp_path: Path, values_filter: str) -> None:
    if values_filter != "gzip":
        pytest.importorskip("hdf5plugin")
    source = _golden_run("1.0")
    summary = pack(source, tmp_path / "a", values_filter=values_filter)
    assert summary.values_filter == values_filter
    assert summary.steps == 6
    assert assert_same_run(source, tmp_path / "a").values > 0
    with tracefmt.open(tmp_path / "a") as out:
        version = out.rank_file(0).version
        assert (version.major, version.minor) == (L.FORMAT_MAJOR, L.FORMAT_MINOR)
    assert verify(tmp_path / "a").exit_code == 0


def test_duplicate_graphs_are_merged(tmp_path: Path) -> None:
    run = tmp_path / "run"
    path = bad.write_base(tracefmt.rank_file_path(run, 0), steps=3)
    bad.duplicate_graph(path)  # step 1 points at a second copy of graph 0
    summary = pack(run, tmp_path / "a", values_filter="gzip")
    (r,) = summary.ranks
    assert (r.graphs_before, r.graphs_after) == (2, 1)
    assert r.strings_after <= r.strings_before
    assert validate(tmp_path / "a", deep=True) == []
    with tracefmt.open(run) as src, tracefmt.open(tmp_path / "a") as out:
        for s in src.steps():
            assert [op.name for op in out.step(s).ops] == [op.name for op in src.step(s).ops]


def test_refusals(tmp_path: Path) -> None:
    source = _golden_run("1.2")
    with pytest.raises(TraceError, match="compresses values with one of"):
        pack(source, tmp_path / "a", values_filter="none")
    run = shutil.copytree(source, tmp_path / "copy")
    with pytest.raises(TraceError, match="inside the source run"):
        pack(run, run / "inner", values_filter="gzip")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "rank-00000.tft.h5").write_bytes(b"x")
    with pytest.raises(TraceError, match="already exists"):
        pack(source, tmp_path / "full", values_filter="gzip")
    result = CliRunner().invoke(
        tracefmt_main, ["pack", str(source), "-o", str(tmp_path / "b"), "--filter", "lz77"]
    )
    assert result.exit_code == 2
    assert "lz77" in result.output


def test_a_damaged_source_rank_is_refused(tmp_path: Path) -> None:
    run = shutil.copytree(_golden_run("1.2"), tmp_path / "run")
    rank1 = tracefmt.rank_file_path(run, 1)
    rank1.write_bytes(rank1.read_bytes()[:4096])
    result = CliRunner().invoke(
        tracefmt_main, ["pack", str(run), "-o", str(tmp_path / "a"), "--filter", "gzip"]
    )
    assert result.exit_code == 2
    assert "damaged rank files" in result.output
    assert "rank 1" in result.output
    assert not (tmp_path / "a").exists()


def test_a_damaged_archive_fails_verify(tmp_path: Path) -> None:
    archive = tmp_path / "a"
    pack(_golden_run("1.5"), archive, values_filter="gzip")
    bad.flip_chunk_byte(tracefmt.rank_file_path(archive, 1), "data/float32")
    result = CliRunner().invoke(tracefmt_main, ["verify", str(archive)])
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output
    assert "TF-FILT-003" in result.output


def test_verify_of_a_path_that_is_not_a_trace_exits_2(tmp_path: Path) -> None:
    (tmp_path / "x.tft.h5").write_bytes(b"not a trace" * 100)
    result = CliRunner().invoke(tracefmt_main, ["verify", str(tmp_path / "x.tft.h5")])
    assert result.exit_code == 2, result.output


def _without(module: str, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = f"import sys\nsys.modules[{module!r}] = None  # as if it were not installed\n{code}"
    return subprocess.run(
        [sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


@needs_plugin
def test_without_hdf5plugin_reading_and_packing_say_what_to_install(
    packed: tuple[Path, Path], tmp_path: Path
) -> None:
    read = _without(
        "hdf5plugin",
        "import tracefmt\n"
        "with tracefmt.open(sys.argv[1]) as t:\n"
        "    step = t.step(t.steps(0)[0], 0)\n"
        "    try:\n"
        "        next(x for x in step.tensors if x.has_values).values()\n"
        "    except tracefmt.MissingFilterError as e:\n"
        "        print('MissingFilterError:', e)\n",
        str(packed[1]),
    )
    assert read.returncode == 0, read.stderr
    assert "MissingFilterError:" in read.stdout
    assert "'blosc2-zstd'" in read.stdout
    assert "tracefmt[archive]" in read.stdout
    cli = "from tracefmt.cli import main\nmain()\n"
    packing = _without("hdf5plugin", cli, "pack", str(packed[0]), "-o", str(tmp_path / "a"))
    assert packing.returncode == 2
    assert "'blosc2-zstd'" in packing.stderr
    assert "tracefmt[archive]" in packing.stderr
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("missing", ["onnxruntime", "replayer"])
def test_verify_without_the_replayer_says_so(tmp_path: Path, missing: str) -> None:
    archive = tmp_path / "a"
    pack(_golden_run("1.2"), archive, values_filter="gzip")
    done = _without(missing, "from tracefmt.cli import main\nmain()\n", "verify", str(archive))
    assert done.returncode == 2, done.stderr
    assert missing in done.stderr
    assert "tracefmt validate --deep" in done.stderr
    assert "Traceback" not in done.stderr


def test_info_reads_packed_from_with_the_parser(tmp_path: Path) -> None:
    run = tmp_path / "run"
    path = bad.write_base(tracefmt.rank_file_path(run, 0), steps=1)
    with_packed_from(path, {"sources": "rank-00000.tft.h5"})
    result = CliRunner().invoke(tracefmt_main, ["info", str(run)])
    assert result.exit_code == 0, result.output
    assert "packed: unreadable: The provenance field packed_from.sources is" in result.output
