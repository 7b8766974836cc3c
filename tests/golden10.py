"""The generator of the 1.0 golden traces in ``tests/data/1.0/`` (written once with format 1.0).

Kept because ``tests/tracefmt/test_golden.py`` regenerates them into a scratch directory with the
current writer and checks that the records still describe as the kept manifest says: the files
are reproducible from this code.  It never writes into ``tests/data`` (see :mod:`tests.golden`).

Contents (``tests/data/1.0``):

- ``values.tft.h5``: two steps with full values of bfloat16, every float8 kind, float16/32/64,
  complex64, int64, bool and packed float4, NaN/Inf included; statistics, histograms, events,
  scalars, op timings and attributes with non-finite floats.  The values of the casts were made
  with numpy and ml_dtypes, not by the ops they are attached to: ``replayer check`` re-executes only
  the float16/32/64 casts to the recorded bits.
- ``stats_only.tft.h5``: eight steps of statistics only; one graph repeats (stored once), one step
  brings a second graph.
- ``run/``: a run directory with two ranks of one run (world size 2).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

import tracefmt.writer
from tests.checks import expected_meta, expected_stats
from tests.golden import RUN_ID, _meta, _stats, _values, bits
from tests.synth import mlp_graph, synthetic_step
from tracefmt import DType, Event, GraphBuilder, Phase, Role, StepRecord, TraceWriter
from tracefmt import _layout as L
from tracefmt.dtypes import DTYPE_INFO
from tracefmt.model import Provenance
from tracefmt.records import decode_attrs, empty_op_stats, encode_attrs
from tracefmt.stats import histogram, tensor_stats


def describe_record(record: StepRecord, graph_row: int) -> dict[str, Any]:
    """What the reader must return for ``record`` (the format's normalisations applied)."""
    g = record.graph
    timing = record.op_stats if record.op_stats is not None and g.num_ops else None
    stats = record.stats if record.stats is not None and g.num_tensors else None

    def t_ns(i: int, field: str) -> int | None:
        return None if timing is None or int(timing[i][field]) < 0 else int(timing[i][field])

    counted = None if stats is None else stats[(stats["flags"] & L.STAT_COUNTS) != 0]
    return {
        "step": record.step,
        "graph": graph_row,
        "ops": [
            {
                "name": op.name,
                "phase": op.phase.label,
                "module": op.module,
                "inputs": [t for t, _, _ in op.inputs],
                "input_args": [[a, item] for _, a, item in op.inputs],
                "outputs": list(op.outputs),
                "attrs": encode_attrs({} if op.attrs is None else decode_attrs(op.attrs)),
                "source": op.source,
                "host_ns": t_ns(i, "host_ns"),
                "device_ns": t_ns(i, "device_ns"),
                "mem_bytes": t_ns(i, "mem_bytes"),
            }
            for i, op in enumerate(g.ops)
        ],
        "tensors": [
            {
                **_meta(expected_meta(spec)),
                "stats": None if stats is None else _stats(expected_stats(stats[i])),
                "histogram": None
                if i not in record.histograms
                else {
                    "lo": bits(record.histograms[i][0]),
                    "hi": bits(record.histograms[i][1]),
                    "counts": [int(c) for c in record.histograms[i][2]],
                },
                "values": _values(record.values[i]) if i in record.values else None,
            }
            for i, spec in enumerate(g.tensors)
        ],
        "events": [[e.kind, e.message, e.op, e.tensor] for e in record.events],
        "scalars": {k: bits(v) for k, v in record.scalars.items()},
        "wall_time": bits(record.wall_time),
        "duration": bits(record.duration),
        "dropped": record.dropped,
        "has_nan": bool(counted is not None and np.any(counted["nan"])),
        "has_inf": bool(counted is not None and np.any(counted["inf"])),
    }


# -- the traces ----------------------------------------------------------------------------------

ALL_VALUE_DTYPES = [
    DType.BFLOAT16,
    DType.FLOAT8_E4M3FN,
    DType.FLOAT8_E4M3FNUZ,
    DType.FLOAT8_E5M2,
    DType.FLOAT8_E5M2FNUZ,
    DType.FLOAT8_E8M0FNU,
    DType.FLOAT16,
    DType.FLOAT32,
    DType.FLOAT64,
    DType.COMPLEX64,
    DType.INT64,
    DType.BOOL,
    DType.FLOAT4_E2M1FN_X2,
]


def _values_records() -> list[StepRecord]:
    rng = np.random.default_rng(20261123)
    g = GraphBuilder()
    x = g.add_tensor(DType.FLOAT32, (4, 6), role=Role.INPUT, name="x")
    tensors = []
    for dtype in ALL_VALUE_DTYPES:
        t = g.add_tensor(
            dtype,
            (4, 6) if dtype is not DType.FLOAT4_E2M1FN_X2 else (4, 3),
            producer=g.num_ops,
            name=f"as_{dtype.label}",
            device="cuda:0",
        )
        g.add_op(
            "aten::_to_copy.default",
            phase=Phase.FORWARD,
            module=f"cast.{dtype.label}",
            inputs=[x],
            outputs=[t],
            attrs={"dtype": dtype.label, "scale": float("inf"), "shift": [-0.0, float("-inf")]},
        )
        tensors.append(t)
    graph = g.finish()
    records = []
    for step in (100, 200):
        base = rng.standard_normal((4, 6)).astype(np.float32)
        base[0, 0], base[1, 1], base[2, 2] = np.nan, np.inf, -np.inf
        arrays: dict[int, np.ndarray] = {x: base}
        with np.errstate(all="ignore"):
            for t, dtype in zip(tensors, ALL_VALUE_DTYPES, strict=True):
                logical = DTYPE_INFO[dtype].logical
                if dtype is DType.FLOAT4_E2M1FN_X2:
                    arrays[t] = rng.integers(0, 256, (4, 3), dtype=np.uint8)
                elif dtype is DType.BOOL:
                    arrays[t] = base > 0
                elif dtype is DType.INT64:
                    arrays[t] = rng.integers(-(2**62), 2**62, (4, 6), dtype=np.int64)
                elif dtype is DType.COMPLEX64:
                    arrays[t] = (base + 1j * base[::-1]).astype(np.complex64)
                else:
                    arrays[t] = base.astype(logical)
            stats = np.stack(
                [tensor_stats(arrays[i], graph.tensors[i].dtype) for i in range(graph.num_tensors)]
            )
            hists = {i: histogram(arrays[i].astype(np.float64), 4) for i in (x, tensors[0])}
        op_stats = empty_op_stats(graph.num_ops)
        op_stats["host_ns"] = rng.integers(1000, 9000, graph.num_ops)
        op_stats["mem_bytes"][0] = 4096
        records.append(
            StepRecord(
                step=step,
                graph=graph,
                stats=stats,
                op_stats=op_stats,
                values=arrays,
                histograms=hists,
                events=[Event("trigger", "nan seen in x", op=0, tensor=x), Event("note", "ünïcode ✓")],
                scalars={"loss": float(base[3, 3]), "lr": 3e-4, "nan": float("nan")},
                wall_time=1_790_000_000.0 + step,
                duration=0.125,
                dropped=step // 100 - 1,
            )
        )
    return records


def _stats_only_records() -> list[StepRecord]:
    rng = np.random.default_rng(7)
    small, wide = mlp_graph(), mlp_graph(width=8, layers=1)
    records = []
    for step in range(0, 80, 10):
        graph = wide if step == 50 else small
        rec = synthetic_step(step, graph, rng, with_values=False)
        records.append(rec)
    return records


def _rank_records(rank: int) -> list[StepRecord]:
    rng = np.random.default_rng(1000 + rank)
    graph = mlp_graph(batch=2, width=4, layers=1)
    records = []
    for step in range(3):
        rec = synthetic_step(step, graph, rng, with_values=False)
        weight = rng.standard_normal((4, 4)).astype(ml_dtypes.bfloat16)
        rec.values = {1: weight}  # the weight's values, and statistics that match them
        assert rec.stats is not None
        rec.stats[1] = tensor_stats(weight, DType.BFLOAT16)
        records.append(rec)
    return records


#: file (relative to tests/data) -> (writer keyword arguments, records)
TRACES: dict[str, tuple[dict[str, Any], Any]] = {
    "values.tft.h5": ({"values_filter": "gzip", "hist_bins": 4}, _values_records),
    "stats_only.tft.h5": ({}, _stats_only_records),
    "run/rank-00000.tft.h5": (
        {"rank": 0, "world_size": 2, "values_filter": "gzip"},
        lambda: _rank_records(0),
    ),
    "run/rank-00001.tft.h5": (
        {"rank": 1, "world_size": 2, "values_filter": "gzip"},
        lambda: _rank_records(1),
    ),
}


def fixed_provenance() -> Provenance:
    p = tracefmt.writer.make_provenance({"generator": "tests/golden.py"})
    return Provenance(
        tracefmt=p.tracefmt,
        h5py=p.h5py,
        hdf5=p.hdf5,
        numpy=p.numpy,
        python=p.python,
        created="2026-11-23T00:00:00+00:00",
        host="golden",
        torch=None,
        extra=p.extra,
    )


@contextmanager
def _provenance(p: Provenance) -> Iterator[None]:
    original = tracefmt.writer.make_provenance
    tracefmt.writer.make_provenance = lambda extra=None: p
    try:
        yield
    finally:
        tracefmt.writer.make_provenance = original


def _graph_rows(records: list[StepRecord]) -> list[int]:
    """The graph row each step gets: rows are numbered by first appearance of a graph."""
    rows: dict[bytes, int] = {}
    return [rows.setdefault(r.graph.digest, len(rows)) for r in records]


def generate(directory: Path) -> dict[str, Any]:
    """Write every golden trace into ``directory`` and return the manifest."""
    provenance = fixed_provenance()
    manifest: dict[str, Any] = {
        "format_version": "1.0",  # what it was written as (tests/data/1.0)
        "run_id": RUN_ID,
        "provenance": json.loads(provenance.to_json()),
        "files": {},
    }
    with _provenance(provenance):
        for name, (kwargs, make) in TRACES.items():
            path = directory / name
            records = make()
            with TraceWriter(path, run_id=RUN_ID, overwrite=True, **kwargs) as w:
                for i, r in enumerate(records):
                    w.write_step(r)
                    if i % 4 == 3:  # a few commits (each flush rewrites the tables' last chunks)
                        w.flush()
            manifest["files"][name] = {
                "rank": kwargs.get("rank", 0),
                "world_size": kwargs.get("world_size", 1),
                "values_filter": kwargs.get("values_filter", "none"),
                "hist_bins": kwargs.get("hist_bins", 0),
                "steps": [
                    describe_record(r, g) for r, g in zip(records, _graph_rows(records), strict=True)
                ],
            }
    return manifest
