"""Bit-exact comparison of what the reader returns with the StepRecord that was written.

Shared by the round-trip, kill, live-reading and golden tests.  Floats are compared by their bits,
so NaN payloads, signed zeros and infinities must survive exactly.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from tracefmt import Step, StepRecord, TensorMeta, TensorStats
from tracefmt import _layout as L
from tracefmt.dtypes import DTYPE_INFO
from tracefmt.records import TensorSpec, decode_attrs


def float_bits(x: float) -> int:
    """The IEEE-754 binary64 bits of ``x``."""
    return int(struct.unpack("<Q", struct.pack("<d", float(x)))[0])


def bits_float(bits: int) -> float:
    """The binary64 float whose bits are ``bits``."""
    return float(struct.unpack("<d", struct.pack("<Q", bits))[0])


def same_float(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return float_bits(a) == float_bits(b)


def same_json(a: Any, b: Any) -> bool:
    """JSON equality where NaN equals NaN (payloads are not kept by JSON) and bool is not int."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or float_bits(a) == float_bits(b)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def expected_meta(spec: TensorSpec) -> TensorMeta:
    """What the reader must return for a tensor written as ``spec``.

    Two normalisations are part of the format: a 0-d tensor's strides read back as ``()``, and an
    empty name (or strides that are all -1) as "not recorded" (``None``).
    """
    ndim = len(spec.shape)
    strides = spec.strides
    if ndim == 0:
        strides = ()
    elif strides is not None and all(s == -1 for s in strides):
        strides = None
    return TensorMeta(
        dtype=spec.dtype,
        shape=spec.shape,
        strides=strides,
        device=spec.device,
        role=spec.role,
        name=spec.name or None,
        producer=None if spec.producer < 0 else spec.producer,
        producer_slot=spec.producer_slot,
        version=spec.version,
        storage_offset=spec.storage_offset,
    )


def expected_stats(row: Any) -> TensorStats:
    flags = int(row["flags"])
    moments, counts = flags & L.STAT_MOMENTS, flags & L.STAT_COUNTS

    def f(name: str) -> float | None:
        return float(row[name]) if moments else None

    def n(name: str) -> int | None:
        return int(row[name]) if counts else None

    return TensorStats(
        min=f("min"),
        max=f("max"),
        mean=f("mean"),
        std=f("std"),
        norm=f("norm"),
        nan=n("nan"),
        inf=n("inf"),
        zero=n("zero"),
        fingerprint=int(row["fingerprint"]) if flags & L.STAT_FINGERPRINT else None,
    )


def assert_stats_equal(got: TensorStats | None, want: TensorStats | None, where: str) -> None:
    if want is None:
        assert got is None, where
        return
    assert got is not None, where
    for name in ("min", "max", "mean", "std", "norm"):
        assert same_float(getattr(got, name), getattr(want, name)), f"{where}: stats.{name}"
    for name in ("nan", "inf", "zero", "fingerprint"):
        assert getattr(got, name) == getattr(want, name), f"{where}: stats.{name}"


def assert_values_equal(got: np.ndarray, spec: TensorSpec, array: np.ndarray, where: str) -> None:
    info = DTYPE_INFO[spec.dtype]
    assert got.dtype == info.logical, f"{where}: dtype {got.dtype} != {info.logical}"
    assert got.shape == spec.shape, f"{where}: shape {got.shape} != {spec.shape}"
    assert got.tobytes() == np.ascontiguousarray(array).tobytes(), f"{where}: values differ"


def assert_step_matches(step: Step, record: StepRecord, *, load_values: bool = True) -> None:
    """Everything ``record`` holds must come back from ``step``, bit for bit."""
    where = f"step {record.step}"
    g = record.graph
    assert step.step == record.step
    assert len(step.ops) == g.num_ops, where
    assert len(step.tensors) == g.num_tensors, where
    timing = record.op_stats if record.op_stats is not None and g.num_ops else None
    for i, (op, spec) in enumerate(zip(step.ops, g.ops, strict=True)):
        w = f"{where}, op {i}"
        assert op.index == i, w
        assert op.name == spec.name, w
        assert op.phase is spec.phase, w
        assert op.module == spec.module, w
        assert op.inputs == tuple(t for t, _, _ in spec.inputs), w
        assert op.input_args == tuple((a, item) for _, a, item in spec.inputs), w
        assert op.outputs == spec.outputs, w
        assert same_json(op.attrs, {} if spec.attrs is None else decode_attrs(spec.attrs)), w
        assert op.source == spec.source, w
        for field in ("host_ns", "device_ns", "mem_bytes"):
            want = None if timing is None or int(timing[i][field]) < 0 else int(timing[i][field])
            assert getattr(op, field) == want, f"{w}: {field}"
        start = None if record.op_starts is None else int(record.op_starts[i])
        assert op.host_start_ns == (None if start is None or start < 0 else start), f"{w}: start"
    stats = record.stats if record.stats is not None and g.num_tensors else None
    for i, (t, tspec) in enumerate(zip(step.tensors, g.tensors, strict=True)):
        w = f"{where}, tensor {i}"
        assert t.index == i, w
        assert t.meta == expected_meta(tspec), w
        assert_stats_equal(t.stats, None if stats is None else expected_stats(stats[i]), w)
        hist = record.histograms.get(i)
        if hist is None:
            assert t.histogram is None, w
        else:
            assert t.histogram is not None, w
            assert same_float(t.histogram.lo, hist[0]), w
            assert same_float(t.histogram.hi, hist[1]), w
            assert t.histogram.counts == tuple(int(c) for c in hist[2]), w
        assert t.has_values == (i in record.values), w
        if load_values and i in record.values:
            assert_values_equal(t.values(), tspec, record.values[i], w)
    assert len(step.events) == len(record.events), where
    for event, written in zip(step.events, record.events, strict=True):
        assert (event.kind, event.message, event.op, event.tensor) == (
            written.kind,
            written.message,
            written.op,
            written.tensor,
        ), where
    assert step.scalars.keys() == record.scalars.keys(), where
    for k, v in record.scalars.items():
        assert same_float(step.scalars[k], v), f"{where}: scalar {k!r}"
    assert same_float(step.wall_time, record.wall_time), where
    assert same_float(step.duration, record.duration), where
    assert step.dropped == record.dropped, where
    counted = None if stats is None else stats[(stats["flags"] & L.STAT_COUNTS) != 0]
    assert step.has_nan == bool(counted is not None and np.any(counted["nan"])), where
    assert step.has_inf == bool(counted is not None and np.any(counted["inf"])), where
