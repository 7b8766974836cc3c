"""The layout is readable with HDF5 tools alone: h5py without tracefmt, and h5dump.

The subprocess below knows only the documented layout (dataset names, row fields, dtype codes) and
resolves a step by following rows by hand: steps -> graphs -> ops/edges/tensors/dims -> strings,
and data_index -> the raw value heap, decoding bfloat16 from its raw bits.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from tracefmt import DType, Event, GraphBuilder, Phase, Role, StepRecord, TraceWriter
from tracefmt import _layout as L
from tracefmt.dtypes import STORAGE_HEAPS
from tracefmt.light import LightFlags, LightKind, LightStepRecord, empty_light_rows
from tracefmt.records import Graph, empty_op_stats
from tracefmt.stats import tensor_stats

#: The documented datasets and their row fields (spec/format.md).  Kept literal on purpose: a change
#: of layout must change this test and the spec together.
TABLE_FIELDS: dict[str, list[str]] = {
    "strings/index": ["offset", "length"],
    "graphs": [
        "op_start",
        "op_count",
        "edge_start",
        "edge_count",
        "tensor_start",
        "tensor_count",
        "dim_start",
        "dim_count",
        "digest",
    ],
    "ops": [
        "name",
        "phase",
        "module",
        "attrs",
        "source",
        "in_start",
        "in_count",
        "out_start",
        "out_count",
    ],
    "edges": ["tensor", "arg", "item"],
    "tensors": [
        "dtype",
        "role",
        "ndim",
        "dim_start",
        "device",
        "name",
        "producer",
        "producer_slot",
        "version",
        "storage_offset",
    ],
    "steps": [
        "step",
        "graph",
        "stats_start",
        "stats_count",
        "op_stats_start",
        "op_stats_count",
        "data_start",
        "data_count",
        "hist_start",
        "hist_count",
        "event_start",
        "event_count",
        "scalar_start",
        "scalar_count",
        "wall_time",
        "duration",
        "flags",
        "dropped",
    ],
    "stats": ["flags", "min", "max", "mean", "std", "norm", "nan", "inf", "zero", "fingerprint"],
    "op_stats": ["host_ns", "device_ns", "mem_bytes"],
    "hists": ["tensor", "lo", "hi", "counts"],
    "data_index": ["tensor", "offset", "count", "fingerprint"],
    "events": ["kind", "op", "tensor", "message"],
    "scalars": ["name", "value"],
    "op_attrs": ["op", "attrs"],
    "tensor_offsets": ["tensor", "storage_offset"],
    "step_overrides": ["op_attrs_start", "op_attrs_count", "tensor_offset_start", "tensor_offset_count"],
    "op_starts": ["host_start_ns"],
    "light_steps": [
        "step",
        "stats_start",
        "stats_count",
        "event_start",
        "event_count",
        "scalar_start",
        "scalar_count",
        "wall_time",
        "duration",
        "flags",
    ],
    "light_stats": [
        "name",
        "kind",
        "flags",
        "min",
        "max",
        "mean",
        "std",
        "norm",
        "nan",
        "inf",
        "numel",
    ],
    "light_events": ["kind", "op", "tensor", "message"],
    "light_scalars": ["name", "value"],
    "modules": [
        "path",
        "class_name",
        "params",
        "trainable",
        "own_params",
        "own_trainable",
        "param_bytes",
    ],
    "step_modules": ["module_start", "module_count"],
    "rng_states": ["device", "state_start", "state_count", "fingerprint"],
    "step_rng_states": ["rng_start", "rng_count"],
}
HEAPS = ["strings/bytes", "dims", "rng_bytes"]
VALUE_HEAPS = [
    f"data/{n}"
    for n in (
        "float16",
        "float32",
        "float64",
        "int16",
        "int32",
        "int64",
        "int8",
        "uint16",
        "uint32",
        "uint64",
        "uint8",
    )
]
ROOT_ATTRS = [
    "format_version",
    "hist_bins",
    "provenance",
    "rank",
    "run_id",
    "tracefmt_format",
    "values_filter",
    "world_size",
]

# Runs in a fresh interpreter that never imports tracefmt.
H5PY_ONLY = r"""
import json, sys
import h5py, numpy as np

BFLOAT16, FLOAT32 = 11, 12          # documented dtype codes
HEAP = {11: "uint16", 12: "float32"}  # storage heap of each logical dtype used here

out = {}
with h5py.File(sys.argv[1], "r") as f:
    out["attrs"] = {k: (v.decode() if isinstance(v, bytes) else
                        v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    found = {}
    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            found[name] = {"fields": list(obj.dtype.names or ()), "ndim": obj.ndim,
                           "chunk_bytes": obj.chunks[0] * obj.dtype.itemsize}
    f.visititems(visit)
    out["datasets"] = found

    index, blob = f["strings/index"][:], f["strings/bytes"][:]
    def text(sid):
        if sid < 0:
            return None
        offset, length = int(index[sid]["offset"]), int(index[sid]["length"])
        return blob[offset:offset + length].tobytes().decode("utf-8")

    steps = []
    overrides = f["step_overrides"][:]  # format 1.1: row k belongs to steps row k
    for k, row in enumerate(f["steps"][:]):
        g = f["graphs"][int(row["graph"])]
        o = overrides[k]  # the step's own op attributes and storage offsets
        own_attrs = {int(r["op"]): int(r["attrs"]) for r in
                     f["op_attrs"][o["op_attrs_start"]:o["op_attrs_start"] + o["op_attrs_count"]]}
        own_offsets = {int(r["tensor"]): int(r["storage_offset"]) for r in
                       f["tensor_offsets"][o["tensor_offset_start"]:
                                           o["tensor_offset_start"] + o["tensor_offset_count"]]}
        ops = f["ops"][g["op_start"]:g["op_start"] + g["op_count"]]
        edges = f["edges"][g["edge_start"]:g["edge_start"] + g["edge_count"]]
        tensors = f["tensors"][g["tensor_start"]:g["tensor_start"] + g["tensor_count"]]
        dims = f["dims"][g["dim_start"]:g["dim_start"] + g["dim_count"]]
        stats = f["stats"][row["stats_start"]:row["stats_start"] + row["stats_count"]]
        o0, on = int(row["op_stats_start"]), int(row["op_stats_count"])
        timing = f["op_stats"][o0:o0 + on]
        starts = f["op_starts"][o0:o0 + on]  # format 1.3: row r belongs to op_stats row r
        step = {"step": int(row["step"]), "graph": int(row["graph"]), "ops": [], "tensors": [],
                "values": {}}
        for i, op in enumerate(ops):
            ins = edges[op["in_start"]:op["in_start"] + op["in_count"]]
            outs = edges[op["out_start"]:op["out_start"] + op["out_count"]]
            step["ops"].append({"name": text(op["name"]), "phase": int(op["phase"]),
                                "module": text(op["module"]),
                                "attrs": json.loads(text(own_attrs.get(i, op["attrs"])) or "{}"),
                                "inputs": [int(e["tensor"]) for e in ins],
                                "outputs": [int(e["tensor"]) for e in outs],
                                "host_ns": int(timing[i]["host_ns"]),
                                "host_start_ns": int(starts[i]["host_start_ns"])})
        for i, t in enumerate(tensors):
            d0, nd = int(t["dim_start"]), int(t["ndim"])
            step["tensors"].append({"dtype": int(t["dtype"]), "role": int(t["role"]),
                                    "shape": [int(x) for x in dims[d0:d0 + nd]],
                                    "strides": [int(x) for x in dims[d0 + nd:d0 + 2 * nd]],
                                    "name": text(t["name"]), "device": text(t["device"]),
                                    "producer": int(t["producer"]),
                                    "storage_offset": own_offsets.get(i, int(t["storage_offset"])),
                                    "mean": float(stats[i]["mean"])})
        for d in f["data_index"][row["data_start"]:row["data_start"] + row["data_count"]]:
            t = tensors[int(d["tensor"])]
            raw = f["data/" + HEAP[int(t["dtype"])]][d["offset"]:d["offset"] + d["count"]]
            if t["dtype"] == BFLOAT16:  # bfloat16: the high half of a float32
                raw = (raw.astype(np.uint32) << 16).view(np.float32)
            step["values"][str(int(d["tensor"]))] = raw.astype(np.float64).tolist()
        events = f["events"][row["event_start"]:row["event_start"] + row["event_count"]]
        step["events"] = [[text(e["kind"]), text(e["message"])] for e in events]
        scalars = f["scalars"][row["scalar_start"]:row["scalar_start"] + row["scalar_count"]]
        step["scalars"] = {text(s["name"]): float(s["value"]) for s in scalars}
        steps.append(step)
    out["steps"] = steps
    light = []  # format 1.4: light steps, each with its own ranges of three tables
    for row in f["light_steps"][:]:
        def rows(table, field):
            start, count = int(row[field + "_start"]), int(row[field + "_count"])
            return f[table][start:start + count]
        light.append({
            "step": int(row["step"]), "flags": int(row["flags"]),
            "rows": [[text(r["name"]), int(r["kind"]), float(r["norm"]), int(r["nan"])]
                     for r in rows("light_stats", "stats")],
            "events": [[text(e["kind"]), text(e["message"])] for e in rows("light_events", "event")],
            "scalars": {text(s["name"]): float(s["value"]) for s in rows("light_scalars", "scalar")},
        })
    out["light"] = light
assert "tracefmt" not in sys.modules, "the h5py-only reader imported tracefmt"
out["modules_ok"] = True
print(json.dumps(out))
"""


def _graph(step: int) -> Graph:
    """x (float32) @ w (bfloat16 parameter) -> y; the op's ``alpha`` and x's storage offset are
    the step's own (step 10: 1.5 and 0, step 20: 3.0 and 6)."""
    g = GraphBuilder()
    x = g.add_tensor(
        DType.FLOAT32, (2, 3), role=Role.INPUT, name="x", storage_offset=6 * (step // 10 - 1)
    )
    w = g.add_tensor(DType.BFLOAT16, (3, 4), role=Role.PARAMETER, name="fc.weight", strides=(4, 1))
    y = g.add_tensor(DType.FLOAT32, (2, 4), producer=g.num_ops, device="cuda:0")
    g.add_op(
        "aten::mm.default",
        phase=Phase.FORWARD,
        module="model.fc",
        inputs=[x, w],
        outputs=[y],
        attrs={"alpha": 1.5 * step / 10},
    )
    return g.finish()


def _timing(step: int) -> np.ndarray:
    rows = empty_op_stats(1)
    rows["host_ns"] = step * 10
    return rows


def _write_trace(path: Path) -> dict[int, dict[int, np.ndarray]]:
    """Two steps sharing one graph (but not its op attribute and x's storage offset); values of w
    and y."""
    x, w, y = 0, 1, 2
    rng = np.random.default_rng(3)
    values: dict[int, dict[int, np.ndarray]] = {}
    with TraceWriter(path, run_id="layout-test", fsync=False) as writer:
        for step in (10, 20):
            graph = _graph(step)
            arrays = {
                x: rng.standard_normal((2, 3)).astype(np.float32),
                w: rng.standard_normal((3, 4)).astype(ml_dtypes.bfloat16),
                y: rng.standard_normal((2, 4)).astype(np.float32),
            }
            stats = np.stack([tensor_stats(a, graph.tensors[i].dtype) for i, a in arrays.items()])
            values[step] = {w: arrays[w], y: arrays[y]}
            writer.write_step(
                StepRecord(
                    step=step,
                    graph=graph,
                    stats=stats,
                    op_stats=_timing(step),
                    op_starts=[step * 100],
                    values=values[step],
                    events=[Event("note", f"step {step}")],
                    scalars={"loss": step / 10},
                )
            )
        for step in (19, 20):  # light steps: step 20 also has a full step
            rows = empty_light_rows(2)
            rows["name"], rows["kind"] = [0, 1], [LightKind.OUTPUT, LightKind.GRADIENT]
            rows["flags"], rows["norm"], rows["numel"] = LightFlags.COUNTS, [1.0, 2.0], 8
            rows["nan"][1] = step - 19  # step 20: a NaN in the gradient, the state is non-finite
            writer.write_light_step(
                LightStepRecord(
                    step,
                    ["model.fc", "model.fc.weight"],
                    rows,
                    scalars={"loss": 1.0},
                    events=[Event("note", "light")] if step == 20 else (),
                )
            )
    return values


def _run_h5py_only(path: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", H5PY_ONLY, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_documented_names_match_the_code() -> None:
    """The literal layout above is the one tracefmt writes (so the subprocess test means something)."""
    assert set(TABLE_FIELDS) == {*L.TABLES, L.HISTS}
    for name, (dtype, _) in L.TABLES.items():
        assert list(dtype.names or ()) == TABLE_FIELDS[name], name
    assert list(L.hist_dtype(4).names or ()) == TABLE_FIELDS["hists"]
    assert set(HEAPS) == set(L.HEAPS)
    assert sorted(VALUE_HEAPS) == sorted(L.VALUE_HEAPS)
    assert sorted(VALUE_HEAPS) == sorted(f"data/{n}" for n in STORAGE_HEAPS)
    assert sorted(ROOT_ATTRS) == sorted(L.ROOT_ATTRS)
    assert (int(DType.BFLOAT16), int(DType.FLOAT32)) == (11, 12)


def test_h5py_alone_reads_the_documented_layout(tmp_path: Path) -> None:
    path = tmp_path / "rank-00000.tft.h5"
    written = _write_trace(path)
    got = _run_h5py_only(path)
    assert got["modules_ok"]

    attrs = got["attrs"]
    assert sorted(attrs) == ROOT_ATTRS
    assert attrs["tracefmt_format"] == "tracefmt"
    assert attrs["format_version"] == L.FORMAT_VERSION
    assert (attrs["run_id"], attrs["rank"], attrs["world_size"]) == ("layout-test", 0, 1)
    assert (attrs["values_filter"], attrs["hist_bins"]) == ("none", 0)
    provenance = json.loads(attrs["provenance"])
    assert {"tracefmt", "h5py", "hdf5", "numpy", "python", "created"} <= provenance.keys()

    datasets = got["datasets"]
    assert sorted(datasets) == sorted([*TABLE_FIELDS, *HEAPS, *VALUE_HEAPS])
    for name, fields in TABLE_FIELDS.items():
        assert datasets[name]["fields"] == fields, name
    assert all(d["ndim"] == 1 for d in datasets.values())
    for name in VALUE_HEAPS:  # value chunks are 1 MiB, a power of two that divides most payloads
        assert datasets[name]["chunk_bytes"] == L.VALUE_CHUNK_BYTES, name

    steps = got["steps"]
    assert [s["step"] for s in steps] == [10, 20]
    assert steps[0]["graph"] == steps[1]["graph"] == 0  # the repeated graph is stored once
    for s in steps:
        assert s["ops"] == [
            {
                "name": "aten::mm.default",
                "phase": int(Phase.FORWARD),
                "module": "model.fc",
                "attrs": {"alpha": 1.5 * s["step"] / 10},
                "inputs": [0, 1],
                "outputs": [2],
                "host_ns": s["step"] * 10,
                "host_start_ns": s["step"] * 100,
            }
        ]
        assert [t["storage_offset"] for t in s["tensors"]] == [6 * (s["step"] // 10 - 1), 0, 0]
        shapes = [(t["dtype"], t["shape"], t["name"], t["producer"]) for t in s["tensors"]]
        assert shapes == [
            (int(DType.FLOAT32), [2, 3], "x", -1),
            (int(DType.BFLOAT16), [3, 4], "fc.weight", -1),
            (int(DType.FLOAT32), [2, 4], None, 0),
        ]
        assert s["tensors"][1]["strides"] == [4, 1]
        assert s["tensors"][1]["role"] == int(Role.PARAMETER)
        assert s["tensors"][2]["device"] == "cuda:0"
        assert s["events"] == [["note", f"step {s['step']}"]]
        assert s["scalars"] == {"loss": s["step"] / 10}
        for t, array in written[s["step"]].items():
            want = np.asarray(array, dtype=np.float32).astype(np.float64).reshape(-1).tolist()
            assert s["values"][str(t)] == want  # bit-exact: bf16 -> f32 is exact
        bf16 = np.asarray(written[s["step"]][1], dtype=np.float64)
        assert s["tensors"][1]["mean"] == pytest.approx(float(bf16.mean()))
    nan_state = L.STEP_HAS_NAN | L.STEP_NONFINITE_STATE
    assert got["light"] == [
        {
            "step": step,
            "flags": 0 if step == 19 else nan_state,
            "rows": [
                ["model.fc", int(LightKind.OUTPUT), 1.0, 0],
                ["model.fc.weight", int(LightKind.GRADIENT), 2.0, step - 19],
            ],
            "events": [] if step == 19 else [["note", "light"]],
            "scalars": {"loss": 1.0},
        }
        for step in (19, 20)
    ]


def test_h5dump_reads_the_header(tmp_path: Path) -> None:
    h5dump = shutil.which("h5dump")
    if h5dump is None:
        pytest.skip("h5dump not installed (apt-get install hdf5-tools)")
    path = tmp_path / "rank-00000.tft.h5"
    _write_trace(path)
    proc = subprocess.run(
        [h5dump, "-H", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "error" not in proc.stderr.lower(), proc.stderr
    for name in [*TABLE_FIELDS, *HEAPS, *VALUE_HEAPS]:
        assert f'DATASET "{name.rsplit("/", 1)[-1]}"' in proc.stdout, name
    for group in ("strings", "data"):
        assert f'GROUP "{group}"' in proc.stdout
    for attr in ROOT_ATTRS:
        assert f'ATTRIBUTE "{attr}"' in proc.stdout, attr
    # and the data itself: the strings heap (deflate + fletcher32) decodes with any HDF5 build
    strings = subprocess.run(
        [h5dump, "-d", "/strings/bytes", "-b", "LE", "-o", str(tmp_path / "strings.bin"), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert strings.returncode == 0, strings.stderr
    assert b"aten::mm.default" in (tmp_path / "strings.bin").read_bytes()
