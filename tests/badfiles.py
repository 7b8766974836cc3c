"""Minimal bad trace files for the validator's tests: write a good small trace, then break one thing.

The writer leaves files in the latest HDF5 format (SWMR); once it has closed them, h5py opens them
``r+`` and every helper here edits exactly one detail.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from tests.synth import attention_step, mlp_graph, synthetic_step
from tracefmt import TraceWriter
from tracefmt.events import NONFINITE_CREATED, NONFINITE_STATE, trigger_event
from tracefmt.light import LightFlags, LightKind, LightStepRecord, empty_light_rows


def write_base(path: Path, *, steps: int = 3, hist_bins: int = 4, **writer_kwargs: Any) -> Path:
    """A small valid trace: the synthetic MLP, values, stats, histograms, an event and two scalars
    per step (so that a duplicate scalar name can be made)."""
    rng = np.random.default_rng(0)
    graph = mlp_graph()
    writer_kwargs.setdefault("fsync", False)  # test files need not reach the disk
    with TraceWriter(path, hist_bins=hist_bins, **writer_kwargs) as w:
        for s in range(steps):
            record = synthetic_step(s, graph, rng, hist_bins=hist_bins)
            record.scalars = {"loss": float(rng.random()), "lr": 0.01}
            w.write_step(record)
            w.flush()
    return path


#: (lr, input offset) of each step of :func:`write_overrides`: step 0 sets the graph's base values,
#: step 1 changes both, step 2 repeats step 0 (no rows of its own), step 3 changes the lr only.
OVERRIDE_STEPS = [(0.01, 0), (0.02, 8), (0.01, 0), (0.03, 0)]


def write_overrides(path: Path) -> Path:
    """A small valid trace whose steps share one graph but not its op attributes and storage
    offsets (:data:`OVERRIDE_STEPS`): step 1 has two op_attrs rows and one tensor_offsets row,
    step 3 two op_attrs rows."""
    rng = np.random.default_rng(1)
    with TraceWriter(path, fsync=False) as w:
        for s, (lr, offset) in enumerate(OVERRIDE_STEPS):
            w.write_step(
                synthetic_step(s, mlp_graph(lr=lr, input_offset=offset), rng, with_values=False)
            )
            w.flush()
    return path


def light_record(step: int, *, created: bool = False, state: bool = False) -> LightStepRecord:
    """A light step of the attention model: its module's output, its weight's gradient, update
    and value; ``created`` puts NaN in the output (its inputs finite), ``state`` Inf in the
    gradient.  Steps with neither have equal rows."""
    rows = empty_light_rows(4)
    rows["name"] = [0, 1, 1, 1]
    rows["kind"] = [LightKind.OUTPUT, LightKind.GRADIENT, LightKind.UPDATE, LightKind.PARAMETER]
    rows["flags"] = LightFlags.MOMENTS | LightFlags.COUNTS
    rows["min"], rows["max"], rows["mean"], rows["std"] = -1.0, 1.0, 0.0, 0.5
    rows["norm"], rows["numel"] = [4.0, 2.0, 0.01, 3.0], [16, 12, 12, 12]
    rows["nan"][0], rows["inf"][1] = int(created), int(state)
    events = []
    if created or state:
        kind = NONFINITE_CREATED if created else NONFINITE_STATE
        events.append(trigger_event(kind, f"light step {step} is non-finite", rank=0, module="attn"))
    return LightStepRecord(
        step,
        ["attn", "attn.weight"],
        rows,
        scalars={"loss": 0.5, "lr": 0.01},
        events=events,
        wall_time=1.7e9 + step,
        duration=0.01,
    )


def write_flight(path: Path) -> Path:
    """A small valid 1.4 trace of a flight recorder: light steps 0 to 3 (1: an output created
    NaN, 2: a gradient holds Inf, each with its trigger event) and full steps 1 and 2 of the
    attention model (1: a fully masked row, the softmax creates NaN, with its trigger event; 2:
    the mask's -inf only, by design)."""
    rng = np.random.default_rng(2)
    with TraceWriter(path, fsync=False) as w:
        for s in range(4):
            w.write_light_step(light_record(s, created=s == 1, state=s == 2))
            if s in (1, 2):
                record = attention_step(s, rng, masked_row=s == 1)
                if s == 1:
                    why = "the softmax created NaN from finite inputs"
                    record.events = [trigger_event(NONFINITE_CREATED, why, rank=0, op=4, tensor=7)]
                w.write_step(record)
            w.flush()
    return path


def shorten(path: Path, dataset: str, rows: int) -> Path:
    """Cut table ``dataset`` down to its first ``rows`` rows."""
    with edit(path) as f:
        f[dataset].resize((rows,))
    return path


@contextmanager
def edit(path: Path) -> Iterator[h5py.File]:
    """The closed trace at ``path`` opened for editing."""
    f = h5py.File(path, "r+")
    try:
        yield f
    finally:
        f.close()


def get(path: Path, dataset: str, row: int, field: str) -> Any:
    with h5py.File(path, "r", swmr=True) as f:
        return f[dataset][row][field].item()


def set_field(path: Path, dataset: str, row: int, **fields: Any) -> Path:
    """Overwrite fields of one row of a table."""
    with edit(path) as f:
        ds = f[dataset]
        rows = ds[row : row + 1]
        for name, value in fields.items():
            rows[name] = value
        ds[row : row + 1] = rows
    return path


def set_item(path: Path, dataset: str, index: int, value: Any) -> Path:
    """Overwrite one item of a heap."""
    with edit(path) as f:
        f[dataset][index] = value
    return path


def fixed_utf8(text: str) -> np.ndarray:
    """``text`` as the writer stores string attributes: a fixed-length UTF-8 string."""
    data = text.encode("utf-8")
    return np.array(data, dtype=h5py.string_dtype("utf-8", max(len(data), 1)))


def set_attr(path: Path, name: str, value: Any) -> Path:
    """Set a root attribute; ``str`` values are stored as the writer stores them (fixed-length)."""
    with edit(path) as f:
        f.attrs[name] = fixed_utf8(value) if isinstance(value, str) else value
    return path


def set_vlen_attr(path: Path, name: str, value: str) -> Path:
    """Set a root attribute to a variable-length string (h5py's default, not the format's)."""
    with edit(path) as f:
        f.attrs[name] = value
    return path


def delete_attr(path: Path, name: str) -> Path:
    with edit(path) as f:
        del f.attrs[name]
    return path


def delete(path: Path, dataset: str) -> Path:
    with edit(path) as f:
        del f[dataset]
    return path


def recreate(path: Path, dataset: str, **kwargs: Any) -> Path:
    """Replace a dataset by one with the same rows, created with ``kwargs`` (filters, chunks)."""
    with edit(path) as f:
        old = f[dataset]
        data, dtype, chunks = old[()], old.dtype, old.chunks
        del f[dataset]
        kwargs.setdefault("chunks", chunks)
        kwargs.setdefault("maxshape", (None,))
        f.create_dataset(dataset, data=data, dtype=dtype, **kwargs)
    return path


def flip_chunk_byte(path: Path, dataset: str) -> Path:
    """Flip one byte in the middle of the first stored chunk of ``dataset`` (bypassing HDF5)."""
    with h5py.File(path, "r", swmr=True) as f:
        info = f[dataset].id.get_chunk_info(0)
    with open(path, "r+b") as raw:
        raw.seek(info.byte_offset + info.size // 2)
        byte = raw.read(1)[0]
        raw.seek(info.byte_offset + info.size // 2)
        raw.write(bytes([byte ^ 0xFF]))
    return path


def copy_earliest(src: Path, dst: Path) -> Path:
    """The same trace rewritten in HDF5's earliest file format (superblock version 0)."""
    with h5py.File(src, "r", swmr=True) as f, h5py.File(dst, "w") as out:
        for key, value in f.attrs.items():
            out.attrs[key] = value
        for name in f:
            f.copy(f[name], out, name=name)
    return dst


def duplicate_graph(path: Path) -> Path:
    """Append a second ``graphs`` row whose rows copy graph 0's, and point step 1 at it."""
    with edit(path) as f:
        g = f["graphs"][0:1]
        for table, start, count in (
            ("ops", "op_start", "op_count"),
            ("edges", "edge_start", "edge_count"),
            ("tensors", "tensor_start", "tensor_count"),
            ("dims", "dim_start", "dim_count"),
        ):
            ds = f[table]
            s, n, end = int(g[0][start]), int(g[0][count]), ds.shape[0]
            rows = ds[s : s + n]
            ds.resize((end + n,))
            ds[end : end + n] = rows
            g[start] = end
        graphs = f["graphs"]
        graphs.resize((2,))
        graphs[1:2] = g
        steps = f["steps"]
        row = steps[1:2]
        row["graph"] = 1
        steps[1:2] = row
    return path


def swap_first_ops(path: Path) -> Path:
    """Swap ops 0 and 1 (mm, relu) and fix their outputs' producers: op 0 now reads a tensor that
    op 1 produces, and everything else stays consistent."""
    with edit(path) as f:
        ops = f["ops"]
        pair = ops[0:2]
        ops[0:2] = pair[::-1]
        tensors = f["tensors"]
        rows = tensors[0:4]
        rows["producer"][2], rows["producer"][3] = 1, 0
        tensors[0:4] = rows
    return path


def run_dir(base: Path, directory: Path, ranks: dict[str, dict[str, Any]]) -> Path:
    """A run directory holding copies of ``base`` named by ``ranks`` keys, with attributes set."""
    directory.mkdir()
    for name, attrs in ranks.items():
        target = shutil.copy(base, directory / name)
        for key, value in attrs.items():
            set_attr(Path(target), key, value)
    return directory


def add_string(path: Path, data: bytes) -> int:
    """Append raw bytes to the string table as a new interned string; return its id."""
    with h5py.File(path, "r+") as f:
        heap, index = f["strings/bytes"], f["strings/index"]
        offset, sid = int(heap.shape[0]), int(index.shape[0])
        heap.resize((offset + len(data),))
        heap[offset:] = np.frombuffer(data, dtype=np.uint8)
        index.resize((sid + 1,))
        index[sid] = (offset, len(data))
    return sid
