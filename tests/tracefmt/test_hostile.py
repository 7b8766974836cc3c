"""Hostile input: each malformed file is refused with a TraceError that names what is wrong.

Files are written with the writer, then broken in one place with h5py ``r+`` (or by editing bytes).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import tracefmt
from tests.badfiles import add_string, set_field
from tests.synth import mlp_graph, synthetic_step, write_synthetic
from tracefmt import (
    DType,
    GraphBuilder,
    MissingFilterError,
    StepRecord,
    TensorRecord,
    TraceCorruptError,
    TraceFormatError,
    TraceNotFoundError,
    TraceWriter,
    UnsupportedVersionError,
)

REPO = Path(__file__).resolve().parents[2]


def _text(value: str) -> np.ndarray:
    """A fixed-length UTF-8 string attribute value, as the writer stores them."""
    data = value.encode()
    return np.array(data, dtype=h5py.string_dtype("utf-8", max(len(data), 1)))


def _set_item(path: Path, dataset: str, index: int, value: Any) -> None:
    with h5py.File(path, "r+") as f:
        f[dataset][index] = value


def _rows(path: Path, dataset: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return np.asarray(f[dataset][:])


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    path = tmp_path / "rank-00000.tft.h5"
    write_synthetic(path, steps=3, hist_bins=4, fsync=False)
    return path


def _load_all(path: Path) -> None:
    """Open, summarise and load every step and every value."""
    with tracefmt.open(path) as t:
        t.summaries()
        for step in t.iter_steps():
            for tensor in step.tensors:
                if tensor.has_values:
                    tensor.values()


# -- sizes are checked before anything is allocated -------------------------------------------


def _one_tensor_trace(path: Path) -> None:
    g = GraphBuilder()
    g.add_tensor(DType.FLOAT32, (4, 4), name="w")
    with TraceWriter(path, fsync=False) as w:
        w.write_step(StepRecord(step=0, graph=g.finish(), values={0: np.arange(16, dtype=np.float32)}))


def test_a_declared_10e12_element_tensor_is_refused_before_allocation(tmp_path: Path) -> None:
    path = tmp_path / "t.tft.h5"
    _one_tensor_trace(path)
    with h5py.File(path, "r+") as f:
        f["dims"][0:2] = (10**6, 10**6)  # shape (10**6, 10**6): 4 TB of float32
    set_field(path, "data_index", 0, count=10**12)  # and the index agrees, so only size can tell
    with tracefmt.open(path) as t:
        tensor = t.step(0).tensors[0]
        assert tensor.shape == (10**6, 10**6)
        tracemalloc.start()
        try:
            with pytest.raises(TraceFormatError, match=r"4000000000000 bytes; the reader's limit"):
                tensor.values()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 10 << 20


def test_a_stored_count_that_disagrees_with_the_shape_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.tft.h5"
    _one_tensor_trace(path)
    set_field(path, "data_index", 0, count=15)
    with tracefmt.open(path) as t, pytest.raises(TraceFormatError, match="15 stored items"):
        t.step(0).tensors[0].values()


def test_an_empty_shape_numpy_cannot_take_is_refused(tmp_path: Path) -> None:
    """Found by the round-trip test: (0, 2**40, 2**40) holds nothing, but numpy refuses it."""
    path = tmp_path / "t.tft.h5"
    g = GraphBuilder()
    g.add_tensor(DType.FLOAT32, (0, 4, 4))
    with TraceWriter(path, fsync=False) as w:
        w.write_step(StepRecord(step=0, graph=g.finish(), values={0: np.zeros(0, np.float32)}))
    with h5py.File(path, "r+") as f:
        f["dims"][1:3] = (2**40, 2**40)
    with tracefmt.open(path) as t, pytest.raises(TraceFormatError, match="no numpy array"):
        t.step(0).tensors[0].values()


# -- versions --------------------------------------------------------------------------------


def test_unknown_major_version_is_refused_with_a_clear_message(trace: Path) -> None:
    with h5py.File(trace, "r+") as f:
        f.attrs["format_version"] = _text("2.0")
    with pytest.raises(UnsupportedVersionError) as info:
        tracefmt.open(trace)
    message = str(info.value)
    assert "format version 2.0" in message
    assert "major version 1 only" in message
    assert "Install a tracefmt release that supports version 2" in message
    assert str(trace) in message


def test_a_newer_minor_version_reads(trace: Path) -> None:
    with h5py.File(trace, "r+") as f:
        f.attrs["format_version"] = _text("1.99")
    with tracefmt.open(trace) as t:
        assert t.rank_file().version == (1, 99)
        assert t.steps() == [0, 1, 2]
    _load_all(trace)


@pytest.mark.parametrize("version", ["one", "1", "1.0.0", "", "1.x", "99999999.0"])
def test_a_malformed_version_is_refused(trace: Path, version: str) -> None:
    with h5py.File(trace, "r+") as f:
        f.attrs["format_version"] = _text(version)
    with pytest.raises(TraceFormatError, match="format_version"):
        tracefmt.open(trace)


# -- not a trace -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content", [b"", b"hello, world\n", bytes(range(256)) * 64, b"\x89HDF\r\n\x1a\n" + bytes(500)]
)
def test_not_an_hdf5_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "rank-00000.tft.h5"
    path.write_bytes(content)
    with pytest.raises(TraceFormatError, match="not a readable HDF5 file"):
        tracefmt.open(path)
    with pytest.raises(TraceFormatError):  # the run directory holding it
        tracefmt.open(tmp_path)


def test_an_hdf5_file_that_is_not_a_trace_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(TraceFormatError, match="not a tracefmt trace"):
        tracefmt.open(path)


def test_missing_paths_and_empty_directories(tmp_path: Path) -> None:
    with pytest.raises(TraceNotFoundError, match="No trace file or run directory"):
        tracefmt.open(tmp_path / "nothing-here")
    with pytest.raises(TraceNotFoundError, match="no rank files"):
        tracefmt.open(tmp_path)


def test_a_file_claiming_another_files_rank_is_reported_not_read(tmp_path: Path) -> None:
    write_synthetic(tmp_path / "rank-00000.tft.h5", steps=1, run_id="r", fsync=False)
    write_synthetic(tmp_path / "rank-00001.tft.h5", steps=1, run_id="r", fsync=False)
    write_synthetic(tmp_path / "rank-0.tft.h5", steps=1, run_id="r", fsync=False)
    with tracefmt.open(tmp_path) as trace:
        assert trace.ranks == (0,)
        assert "named for rank 1 but holds rank 0" in trace.damaged_ranks[1]
        assert "both claim rank 0" in trace.damaged_files[tmp_path / "rank-00000.tft.h5"]
    (tmp_path / "rank-0.tft.h5").unlink()
    (tmp_path / "rank-00000.tft.h5").unlink()
    with pytest.raises(TraceFormatError, match="named for rank 1 but holds rank 0"):
        tracefmt.open(tmp_path)  # no rank file is usable


# -- structure -------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["ops", "steps", "strings/index", "data/uint16"])
def test_a_missing_dataset_is_named(trace: Path, dataset: str) -> None:
    with h5py.File(trace, "r+") as f:
        del f[dataset]
    with pytest.raises(TraceFormatError, match=f"dataset /{dataset} is missing"):
        tracefmt.open(trace)


@pytest.mark.parametrize(
    ("dataset", "make"),
    [
        ("scalars", lambda f, n: f.create_dataset(n, data=np.zeros(3))),  # not rows
        ("events", lambda f, n: f.create_dataset(n, data=np.zeros((2, 2), dtype="<i4"))),  # 2-D
        ("dims", lambda f, n: f.create_dataset(n, data=np.zeros(4, dtype="<f8"))),  # not int64
        ("data/float32", lambda f, n: f.create_dataset(n, data=np.zeros(4, dtype=">f4"))),  # big-endian
        ("ops", lambda f, n: f.create_dataset(n, (0,), dtype=h5py.string_dtype())),  # strings
    ],
)
def test_a_dataset_of_the_wrong_dtype_is_refused(
    trace: Path, dataset: str, make: Callable[[h5py.File, str], Any]
) -> None:
    with h5py.File(trace, "r+") as f:
        del f[dataset]
        make(f, dataset)
    with pytest.raises(TraceFormatError, match=f"dataset /{dataset} has dtype"):
        tracefmt.open(trace)


def test_a_text_attribute_stored_as_variable_length_data_is_refused(trace: Path) -> None:
    with h5py.File(trace, "r+") as f:
        f.attrs["run_id"] = "a variable-length string"  # h5py's default for str
    with pytest.raises(TraceFormatError, match="'run_id' is variable-length data"):
        tracefmt.open(trace)


def test_a_zeroed_global_heap_does_not_hang_the_reader(trace: Path) -> None:
    """HDF5 2.0 loops for ever decoding a global heap whose free-space object has size 0 (a zeroed
    block).  h5py stores str attributes there; the reader refuses them before reading."""
    with h5py.File(trace, "r+") as f:
        f.attrs["tracefmt_format"] = "tracefmt"  # variable-length: lives in a global heap
    data = bytearray(trace.read_bytes())
    heap = data.find(b"GCOL")
    assert heap > 0
    data[heap + 16 : heap + 80] = bytes(64)
    trace.write_bytes(bytes(data))
    script = (
        "import sys, tracefmt\n"
        "try:\n    tracefmt.open(sys.argv[1])\n"
        "except tracefmt.TraceFormatError as e:\n    print(type(e).__name__, e)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(trace)],
        cwd=REPO,
        timeout=120,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "variable-length" in proc.stdout


def test_a_bad_metadata_checksum_fails_fast(trace: Path) -> None:
    """In SWMR mode HDF5 retries a metadata read that fails its checksum 100 times by default,
    doubling a sleep each time (2**100 ns: for ever).  The reader bounds the retries."""
    data = bytearray(trace.read_bytes())
    headers = [i for i in range(len(data)) if data.startswith(b"OHDR", i)]
    assert len(headers) > 5
    data[headers[5] + 12] ^= 0xFF  # inside a dataset's object header
    trace.write_bytes(bytes(data))
    script = (
        "import sys, tracefmt\n"
        "try:\n    tracefmt.open(sys.argv[1])\n"
        "except tracefmt.TraceError as e:\n    print(type(e).__name__, e)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(trace)],
        cwd=REPO,
        timeout=120,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("TraceCorruptError"), proc.stdout
    assert "the file is damaged" in proc.stdout
    assert str(trace) in proc.stdout


# -- rows pointing out of range ----------------------------------------------------------------

BREAKS: dict[str, tuple[Callable[[Path], None], str]] = {
    "stats beyond the table": (
        lambda p: set_field(p, "steps", 0, stats_start=10**9),
        r"/stats are out of range",
    ),
    "huge stats count": (lambda p: set_field(p, "steps", 0, stats_count=2**32 - 1), "stats rows"),
    "data index beyond the table": (
        lambda p: set_field(p, "steps", 0, data_start=2**60),
        r"/data_index are out of range",
    ),
    "event rows beyond the table": (
        lambda p: set_field(p, "steps", 0, event_count=10**6),
        r"/events are out of range",
    ),
    "graph out of range": (lambda p: set_field(p, "steps", 0, graph=99), "graph"),
    "ops beyond the table": (
        lambda p: set_field(p, "graphs", 0, op_start=10**7),
        r"/ops are out of range",
    ),
    "dims beyond the table": (
        lambda p: set_field(p, "graphs", 0, dim_count=10**8),
        r"/dims are out of range",
    ),
    "op edges outside the graph": (
        lambda p: set_field(p, "ops", 0, in_start=10**6),
        "edges outside its graph",
    ),
    "edge names a missing tensor": (
        lambda p: set_field(p, "edges", 0, tensor=10**6),
        "names tensor 1000000",
    ),
    "producer out of range": (
        lambda p: set_field(p, "tensors", 0, producer=10**6),
        "producer op 1000000",
    ),
    "too many dimensions": (
        lambda p: set_field(p, "tensors", 0, ndim=200),
        "dimensions lie outside /dims",
    ),
    "negative dimension": (lambda p: _set_item(p, "dims", 0, -5), "negative dimension"),
    "unknown dtype code": (lambda p: set_field(p, "tensors", 0, dtype=99), "malformed"),
    "unknown role code": (lambda p: set_field(p, "tensors", 0, role=77), "malformed"),
    "unknown phase code": (lambda p: set_field(p, "ops", 0, phase=9), "malformed"),
    "string id out of range": (
        lambda p: set_field(p, "ops", 0, name=10**6),
        "string id 1000000 is out of range",
    ),
    "string outside the heap": (
        lambda p: set_field(p, "strings/index", 0, offset=2**40),
        "points outside",
    ),
    "string not UTF-8": (lambda p: set_field(p, "ops", 0, name=add_string(p, b"\xff\xfe")), "not UTF-8"),
    "attrs not JSON": (lambda p: set_field(p, "ops", 0, attrs=add_string(p, b"{nope")), "malformed"),
    "attrs not an object": (
        lambda p: set_field(p, "ops", 0, attrs=add_string(p, b"[1, 2]")),
        "malformed",
    ),
    "attrs with NaN literal": (
        lambda p: set_field(p, "ops", 0, attrs=add_string(p, b'{"a": NaN}')),
        "malformed",
    ),
    "attrs nested 100000 deep": (
        lambda p: set_field(p, "ops", 0, attrs=add_string(p, b"[" * 100_000)),
        "malformed",
    ),
    "values for a missing tensor": (
        lambda p: set_field(p, "data_index", 0, tensor=10**6),
        "values recorded for tensor",
    ),
    "values beyond the heap": (
        lambda p: set_field(p, "data_index", 0, offset=2**50),
        r"/data/float32 are out of range",
    ),
    "histogram for a missing tensor": (
        lambda p: set_field(p, "hists", 0, tensor=10**6),
        "histogram for tensor",
    ),
    "event names a missing op": (
        lambda p: set_field(p, "events", 0, op=10**6),
        "event names an op or tensor",
    ),
    "scalar name out of range": (lambda p: set_field(p, "scalars", 0, name=10**6), "string id 1000000"),
}


@pytest.mark.parametrize("name", list(BREAKS))
def test_rows_pointing_out_of_range_are_refused(trace: Path, name: str) -> None:
    breaks, message = BREAKS[name]
    breaks(trace)
    with pytest.raises(TraceFormatError, match=message) as info:
        _load_all(trace)
    assert str(trace) in str(info.value)


# -- corruption --------------------------------------------------------------------------------

FILTERS = ["none", "fletcher32", "gzip"] + (
    ["fast"] if importlib.util.find_spec("hdf5plugin") is not None else []
)


def _values_or_error(tensor: TensorRecord) -> np.ndarray | TraceCorruptError:
    try:
        return tensor.values()
    except TraceCorruptError as e:
        return e


@pytest.mark.parametrize("values_filter", FILTERS)
def test_a_flipped_byte_in_a_value_chunk_names_dataset_and_step(
    tmp_path: Path, values_filter: str
) -> None:
    """Each of a series of single-byte flips across the first float32 chunk: every value either
    reads back exactly or raises TraceCorruptError naming /data/float32 and the step, never comes
    back silently different; and some flips are caught."""
    path = tmp_path / "t.tft.h5"
    graph, rng = mlp_graph(), np.random.default_rng(0)
    records = [synthetic_step(s, graph, rng) for s in range(3)]
    with TraceWriter(path, values_filter=values_filter, fsync=False) as w:
        for r in records:
            w.write_step(r)
    with h5py.File(path, "r") as f:
        chunk = f["data/float32"].id.get_chunk_info(0)
    step2 = _rows(path, "steps")[2]
    item = int(_rows(path, "data_index")[int(step2["data_start"])]["offset"])  # step 2, tensor 0
    positions = [chunk.byte_offset + item * 4 + 5] if values_filter in ("none", "fletcher32") else []
    positions += [chunk.byte_offset + k for k in range(0, chunk.size, max(1, chunk.size // 24))]
    good = path.read_bytes()
    caught = 0
    for at in positions:
        raw = bytearray(good)
        raw[at] ^= 0x40
        path.write_bytes(bytes(raw))
        with tracefmt.open(path) as t:
            for record in records:
                step = t.step(record.step)
                for i, array in record.values.items():
                    if step.tensors[i].dtype is not DType.FLOAT32:
                        continue
                    outcome = _values_or_error(step.tensors[i])
                    if isinstance(outcome, TraceCorruptError):
                        assert "/data/float32" in str(outcome)
                        assert f"step {record.step}" in str(outcome)
                        caught += 1
                    else:
                        assert outcome.tobytes() == array.tobytes(), f"silently changed at {at}"
    assert caught > 0


def test_a_trace_needing_a_missing_plugin_says_what_to_install(tmp_path: Path) -> None:
    pytest.importorskip("hdf5plugin")
    path = tmp_path / "t.tft.h5"
    write_synthetic(path, steps=2, values_filter="fast", fsync=False)
    script = r"""
import sys
sys.modules["hdf5plugin"] = None  # as if it were not installed
import tracefmt
with tracefmt.open(sys.argv[1]) as t:
    step = t.step(1)                      # structure and statistics need no plugin
    assert step.tensors[0].stats is not None
    try:
        step.tensors[0].values()
    except tracefmt.MissingFilterError as e:
        print("MissingFilterError:", e)
"""
    proc = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        cwd=REPO,
        timeout=120,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "MissingFilterError:" in proc.stdout
    assert "pip install hdf5plugin" in proc.stdout
    assert issubclass(MissingFilterError, tracefmt.TraceError)
