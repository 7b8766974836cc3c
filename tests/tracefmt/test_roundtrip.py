"""Hypothesis round trips: whatever the writer accepts, the reader gives back bit for bit.

Every logical dtype (bfloat16, all float8 variants, complex, bool, packed float4 as bytes), every
shape including 0-d and zero-size, NaN/Inf payloads, unicode strings everywhere, JSON attributes
with non-finite floats, events, scalars, statistics, op timings and histograms.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import tempfile
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tracefmt
from tests.checks import assert_step_matches, bits_float, same_json
from tracefmt import DType, Event, GraphBuilder, Phase, Role, StepRecord, TraceWriter
from tracefmt import _layout as L
from tracefmt.dtypes import DTYPE_INFO, fingerprint, from_numpy, to_storage
from tracefmt.records import Graph, decode_attrs, encode_attrs, numpy_can_hold
from tracefmt.stats import tensor_stats


def examples(n: int) -> settings:
    """Modest example counts keep this file well under 40 s on 2 cores."""
    return settings(
        max_examples=n,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


I32 = st.integers(-(2**31), 2**31 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)
U64 = st.integers(0, 2**64 - 1)
OFFSET = st.integers(0, 2**63 - 1)  # spec 5.4: storage offsets are >= 0 (the builder refuses less)
#: Any unicode text HDF5 can hold as UTF-8 (no lone surrogates).
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
#: float64 values from raw bits (every NaN payload, signed zeros, subnormals) or hypothesis floats.
F64 = st.one_of(st.floats(), U64.map(bits_float))

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


def _write(path: Path, records: list[StepRecord], **kwargs: Any) -> None:
    with TraceWriter(path, fsync=False, **kwargs) as w:
        for r in records:
            w.write_step(r)
        w.flush()


# -- values of every dtype ---------------------------------------------------------------------

FLOATS = frozenset(
    {
        DType.FLOAT16,
        DType.BFLOAT16,
        DType.FLOAT32,
        DType.FLOAT64,
        DType.COMPLEX64,
        DType.COMPLEX128,
        DType.FLOAT8_E4M3FN,
        DType.FLOAT8_E4M3FNUZ,
        DType.FLOAT8_E5M2,
        DType.FLOAT8_E5M2FNUZ,
        DType.FLOAT8_E8M0FNU,
    }
)
# NaN payloads, signalling and negative NaNs of the IEEE widths
PAYLOADS = {
    2: [0x7C01, 0xFC01, 0x7DFF, 0x7F81, 0xFF81, 0x7FC1],
    4: [0x7F800001, 0xFF800001, 0x7FBFFFFF, 0x7FC00123],
    8: [0x7FF0000000000001, 0xFFF8000000000123, 0x7FF7FFFFFFFFFFFF],
}


def _specials(dtype: DType) -> list[bytes]:
    """Byte patterns of one element worth hitting on purpose: NaNs with payloads, infinities,
    signed zeros, subnormals, extremes."""
    info = DTYPE_INFO[dtype]
    if dtype is DType.BOOL:
        return [b"\x00", b"\x01"]
    size = info.itemsize
    out = [b"\x00" * size, b"\xff" * size, b"\x80" * size, b"\x7f" * size]
    if dtype not in FLOATS:
        return out
    part = info.logical if info.per_element == 1 else info.storage  # a complex number's parts
    finfo = ml_dtypes.finfo(part)
    with np.errstate(all="ignore"):
        vals = np.array(
            [
                np.nan,
                -np.nan,
                np.inf,
                -np.inf,
                -0.0,
                float(finfo.smallest_subnormal),
                float(finfo.max),
                float(finfo.min),
                1.0,
            ]
        ).astype(part)
    items = [vals[i : i + 1].tobytes() for i in range(len(vals))]
    items += [p.to_bytes(part.itemsize, "little") for p in PAYLOADS.get(part.itemsize, [])]
    if info.per_element == 2:
        return out + [a + b for a in items for b in items[:6]]
    return out + items


@st.composite
def arrays_of(draw: st.DrawFn, dtype: DType) -> np.ndarray:
    """An array of ``dtype`` (logical numpy/ml_dtypes dtype) of any small shape, from raw bytes."""
    info = DTYPE_INFO[dtype]
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=4)))
    numel = int(np.prod(shape, dtype=np.int64))
    size = info.itemsize
    if dtype is DType.BOOL:
        raw = bytearray(draw(st.lists(st.sampled_from([0, 1]), min_size=numel, max_size=numel)))
    else:
        raw = bytearray(draw(st.binary(min_size=numel * size, max_size=numel * size)))
    if numel:
        specials = _specials(dtype)
        for at, item in draw(
            st.lists(st.tuples(st.integers(0, numel - 1), st.sampled_from(specials)), max_size=6)
        ):
            raw[at * size : (at + 1) * size] = item
    return np.frombuffer(bytes(raw), dtype=info.logical).reshape(shape).copy()


def _values_graph(dtype: DType, shapes: list[tuple[int, ...]]) -> Graph:
    g = GraphBuilder()
    for i, shape in enumerate(shapes):
        g.add_tensor(dtype, shape, name=f"t{i}")
    return g.finish()


@pytest.mark.parametrize("dtype", list(DType), ids=lambda d: d.label)
@examples(10)
@given(data=st.data())
def test_values_round_trip_bit_exact(dtype: DType, data: st.DataObject) -> None:
    arrays = data.draw(st.lists(arrays_of(dtype), min_size=1, max_size=4), label="arrays")
    raw_bits = data.draw(st.booleans(), label="pass storage bits instead of the logical dtype")
    graph = _values_graph(dtype, [a.shape for a in arrays])
    info = DTYPE_INFO[dtype]
    given_values = {i: (to_storage(a, dtype) if raw_bits else a) for i, a in enumerate(arrays)}
    with np.errstate(all="ignore"):  # arbitrary bits: overflow in the moments is expected
        stats = np.stack([tensor_stats(a, dtype) for a in arrays])
    record = StepRecord(step=3, graph=graph, stats=stats, values=given_values)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.tft.h5"
        _write(path, [record])
        with tracefmt.open(path) as trace:
            step = trace.step(3)
            for i, a in enumerate(arrays):
                got = step.tensors[i].values()
                assert got.dtype == info.logical
                assert got.shape == a.shape
                assert got.tobytes() == a.tobytes()
                # the recorded fingerprint is the fingerprint of what comes back
                stats_read = step.tensors[i].stats
                assert stats_read is not None
                assert stats_read.fingerprint == fingerprint(got)
            assert_step_matches(
                step, StepRecord(step=3, graph=graph, stats=stats, values=dict(enumerate(arrays)))
            )


@pytest.mark.parametrize(
    "dtype", [d for d in DType if d is not DType.FLOAT4_E2M1FN_X2], ids=lambda d: d.label
)
def test_from_numpy_names_every_logical_dtype(dtype: DType) -> None:
    assert from_numpy(np.zeros(2, dtype=DTYPE_INFO[dtype].logical)) is dtype


def test_float4_is_stored_as_packed_bytes(tmp_path: Path) -> None:
    packed = np.arange(256, dtype=np.uint8).reshape(16, 16)  # every pair of e2m1 codes
    graph = _values_graph(DType.FLOAT4_E2M1FN_X2, [packed.shape])
    _write(tmp_path / "f4.tft.h5", [StepRecord(step=0, graph=graph, values={0: packed})])
    with tracefmt.open(tmp_path / "f4.tft.h5") as trace:
        t = trace.step(0).tensors[0]
        assert t.dtype is DType.FLOAT4_E2M1FN_X2
        assert t.values().tobytes() == packed.tobytes()


def test_bfloat16_and_float8_survive_as_raw_bits(tmp_path: Path) -> None:
    """Every one of the 2**16 bfloat16 and 2**8 float8 bit patterns, NaNs included."""
    bf16 = np.arange(2**16, dtype=np.uint16).view(ml_dtypes.bfloat16)
    f8 = {
        d: np.arange(256, dtype=np.uint8).view(DTYPE_INFO[d].logical)
        for d in (
            DType.FLOAT8_E4M3FN,
            DType.FLOAT8_E4M3FNUZ,
            DType.FLOAT8_E5M2,
            DType.FLOAT8_E5M2FNUZ,
            DType.FLOAT8_E8M0FNU,
        )
    }
    g = GraphBuilder()
    g.add_tensor(DType.BFLOAT16, bf16.shape)
    for d, a in f8.items():
        g.add_tensor(d, a.shape)
    values = {0: bf16, **{i + 1: a for i, a in enumerate(f8.values())}}
    _write(tmp_path / "bits.tft.h5", [StepRecord(step=0, graph=g.finish(), values=values)])
    with tracefmt.open(tmp_path / "bits.tft.h5") as trace:
        step = trace.step(0)
        for i, a in values.items():
            got = step.tensors[i].values()
            assert got.dtype == a.dtype
            assert got.tobytes() == a.tobytes()


def _refuse(literal: str) -> None:
    raise AssertionError(f"non-standard JSON literal {literal}")


# -- attributes --------------------------------------------------------------------------------


@examples(150)
@given(attrs=st.dictionaries(TEXT, JSON, max_size=5))
def test_attrs_json_round_trip(attrs: dict[str, Any]) -> None:
    text = encode_attrs(attrs)
    json.loads(text, parse_constant=_refuse)  # strict JSON: no NaN / Infinity literals
    assert same_json(decode_attrs(text), attrs)


#: Keys and leaves that look like the encoding's own markers (spec section 10).
MARKER_KEYS = st.sampled_from(["$float", "$dict", "$", "$$dict"]) | TEXT.map("$".__add__) | TEXT
MARKER_LEAVES = (
    st.sampled_from([math.inf, -math.inf, math.nan, "inf", "-inf", "nan"])
    | st.none()
    | st.integers()
    | st.floats()
    | TEXT
)
MARKER_JSON = st.recursive(
    MARKER_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(MARKER_KEYS, inner, max_size=3)
        | st.builds(lambda k, v: {k: v}, st.sampled_from(["$float", "$dict"]), inner)
    ),
    max_leaves=10,
)


@examples(300)
@given(attrs=st.dictionaries(MARKER_KEYS, MARKER_JSON, max_size=4))
def test_attrs_with_marker_shaped_data_round_trip(attrs: dict[str, Any]) -> None:
    """Dicts and lists nested in any order, non-finite floats, and objects whose keys begin with
    ``$`` (``{"$float": "inf"}``, ``{"$dict": ...}`` included) all decode back to themselves."""
    text = encode_attrs(attrs)
    json.loads(text, parse_constant=_refuse)
    assert same_json(decode_attrs(text), attrs)


@pytest.mark.parametrize(
    "value",
    [
        {"$float": "inf"},
        {"$float": "-inf"},
        {"$float": "nan"},
        {"$float": math.inf},
        {"$float": "inf", "b": 2},
        {"$dict": {"a": 1}},
        {"$dict": {"$x": 1}},
        {"$dict": {"$float": "nan"}},
        {"$dict": {"$dict": {"$float": "inf"}}},
        {"$x": [math.nan]},
        [{"$float": "inf"}, math.inf, [{"$dict": {}}]],
        {"a": {"$float": "-inf", "$dict": -math.inf}},
    ],
)
def test_attrs_that_look_like_markers_stay_data(value: Any) -> None:
    """A user dict equal to ``{"$float": "inf"}`` used to decode as the float inf."""
    text = encode_attrs({"v": value})
    json.loads(text, parse_constant=_refuse)
    assert same_json(decode_attrs(text), {"v": value})


def test_attrs_encoding_is_the_specified_text() -> None:
    assert encode_attrs({"a": math.inf, "b": {"$float": "inf"}, "c": {"$k": [-math.inf]}}) == (
        '{"a":{"$float":"inf"},"b":{"$dict":{"$float":"inf"}},"c":{"$dict":{"$k":[{"$float":"-inf"}]}}}'
    )
    assert encode_attrs({"$top": 1}) == '{"$dict":{"$top":1}}'


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ('{"a":{"$float":"inf"}}', {"a": math.inf}),
        ('{"a":[{"$float":"-inf"},{"$float":"nan"}]}', {"a": [-math.inf, math.nan]}),
        ('{"a":{"\\u0024float":"inf"}}', {"a": math.inf}),
        ('{"a":{"$x":1,"$float":"inf"}}', {"a": {"$x": 1, "$float": "inf"}}),
        ('{"a":{"$float":"infinity"}}', {"a": {"$float": "infinity"}}),
        ('{"a":{"$dict":{"b":1}}}', {"a": {"$dict": {"b": 1}}}),
        ('{"a":{"$dict":[1]}}', {"a": {"$dict": [1]}}),
        ('{"$x":{"$y":2}}', {"$x": {"$y": 2}}),
    ],
)
def test_attrs_written_before_dict_escaping_read_the_same(text: str, want: dict[str, Any]) -> None:
    """Objects the old encoder wrote bare (no ``$dict``) decode as they always did."""
    assert same_json(decode_attrs(text), want)


def test_marker_shaped_attrs_survive_a_trace(tmp_path: Path) -> None:
    attrs = {"fill": {"$float": "inf"}, "pad": {"$dict": {"$float": "nan"}}, "eps": math.nan}
    g = GraphBuilder()
    g.add_op("aten::fill.Scalar", phase=Phase.FORWARD, attrs=attrs)
    _write(tmp_path / "attrs.tft.h5", [StepRecord(step=0, graph=g.finish())])
    with tracefmt.open(tmp_path / "attrs.tft.h5") as trace:
        assert same_json(trace.step(0).ops[0].attrs, attrs)


@pytest.mark.parametrize(
    "text",
    ['{"a":' + "[" * 100_000 + "]" * 100_000 + "}", '{"a":' + '{"$x":' * 100_000 + "1" + "}" * 100_001],
)
def test_attrs_nested_too_deeply_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        decode_attrs(text)


# -- whole steps: graphs, strings, stats, timings, histograms, events, scalars -------------------


@st.composite
def graphs(draw: st.DrawFn) -> Graph:
    g = GraphBuilder()

    def tensor(producer: int | None, slot: int) -> int:
        shape = draw(
            st.lists(st.integers(0, 2**62), max_size=3) | st.lists(st.integers(0, 3), max_size=3)
        )
        strides = draw(st.none() | st.lists(I64, min_size=len(shape), max_size=len(shape)))
        return g.add_tensor(
            draw(st.sampled_from(DType)),
            shape,
            strides=strides,
            device=draw(TEXT),
            role=draw(st.sampled_from(Role)),
            name=draw(st.none() | TEXT),
            producer=producer,
            producer_slot=slot,
            version=draw(I32),
            storage_offset=draw(OFFSET),
        )

    for _ in range(draw(st.integers(0, 3))):
        tensor(None, draw(I32))
    for _ in range(draw(st.integers(0, 4))):
        inputs: list[int | tuple[int, int, int]] = []
        if g.num_tensors:
            ref = st.integers(0, g.num_tensors - 1)
            inputs = draw(st.lists(ref | st.tuples(ref, I32, st.integers(-1, 2**31 - 1)), max_size=3))
        op = g.num_ops
        outputs = [tensor(op, slot) for slot in range(draw(st.integers(0, 2)))]
        module = ".".join(draw(st.lists(TEXT, max_size=3)))
        g.add_op(
            draw(TEXT),
            phase=draw(st.sampled_from(Phase)),
            module=module,
            inputs=inputs,
            outputs=outputs,
            attrs=draw(st.none() | st.dictionaries(TEXT, JSON, max_size=3)),
            source=draw(st.none() | TEXT),
        )
    return g.finish()


def _rows(
    draw: st.DrawFn, dtype: np.dtype[Any], n: int, fields: dict[str, st.SearchStrategy[Any]]
) -> np.ndarray:
    rows = np.zeros(n, dtype=dtype)
    for i in range(n):
        for name, strategy in fields.items():
            rows[i][name] = draw(strategy)
    return rows


@st.composite
def records(draw: st.DrawFn, graph: Graph, step: int, hist_bins: int) -> StepRecord:
    nt, no = graph.num_tensors, graph.num_ops
    stats = None
    if draw(st.booleans()):
        stats = _rows(
            draw,
            L.STATS_DTYPE,
            nt,
            {
                "flags": st.integers(0, 7),
                "min": F64,
                "max": F64,
                "mean": F64,
                "std": F64,
                "norm": F64,
                "nan": U64,
                "inf": U64,
                "zero": U64,
                "fingerprint": U64,
            },
        )
    op_stats = None
    if draw(st.booleans()):
        op_stats = _rows(
            draw,
            L.OP_STATS_DTYPE,
            no,
            {"host_ns": st.integers(-1, 2**63 - 1) | I64, "device_ns": I64, "mem_bytes": I64},
        )
    # format 1.3: host start times, with or without the other timings
    op_starts = draw(st.none() | st.lists(st.integers(-1, 2**63 - 1) | I64, min_size=no, max_size=no))
    hists: dict[int, tuple[float, float, np.ndarray]] = {}
    if hist_bins and nt:
        for t in draw(st.sets(st.integers(0, nt - 1), max_size=3)):
            counts = draw(st.lists(U64, min_size=hist_bins, max_size=hist_bins))
            hists[t] = (draw(F64), draw(F64), np.array(counts, dtype=np.uint64))
    index = st.none() | (st.integers(0, no - 1) if no else st.none())
    tindex = st.none() | (st.integers(0, nt - 1) if nt else st.none())
    events = draw(st.lists(st.builds(Event, TEXT, TEXT, index, tindex), max_size=3))
    # Values: small tensors only (shape dims <= 3), from raw bytes.
    values: dict[int, np.ndarray] = {}
    for i, spec in enumerate(graph.tensors):
        info = DTYPE_INFO[spec.dtype]
        numel = int(np.prod(spec.shape, dtype=object))
        if numel <= 27 and numpy_can_hold(spec.shape, info.logical) and draw(st.booleans()):
            raw = draw(st.binary(min_size=numel * info.itemsize, max_size=numel * info.itemsize))
            values[i] = np.frombuffer(raw, dtype=info.storage).copy()
    return StepRecord(
        step=step,
        graph=graph,
        stats=stats,
        op_stats=op_stats,
        op_starts=op_starts,
        values=values,
        histograms=hists,
        events=events,
        scalars=draw(st.dictionaries(TEXT, F64, max_size=3)),
        wall_time=draw(F64),
        duration=draw(F64),
        dropped=draw(U64),
    )


@st.composite
def variants(draw: st.DrawFn, graph: Graph) -> Graph:
    """``graph``, or the same structure with other attributes for some ops and other storage
    offsets for some tensors: a step with values of its own (format 1.1)."""
    if not draw(st.booleans()):
        return graph
    attrs = st.none() | st.dictionaries(TEXT, JSON, max_size=2).map(
        lambda a: encode_attrs(a) if a else None
    )
    ops = tuple(
        dataclasses.replace(op, attrs=draw(attrs)) if draw(st.booleans()) else op for op in graph.ops
    )
    tensors = tuple(
        dataclasses.replace(t, storage_offset=draw(OFFSET | st.integers(0, 3)))
        if draw(st.booleans())
        else t
        for t in graph.tensors
    )
    return Graph(ops, tensors)


@st.composite
def traces(draw: st.DrawFn) -> tuple[int, list[StepRecord]]:
    hist_bins = draw(st.integers(0, 4))
    pool = draw(st.lists(graphs(), min_size=1, max_size=2))
    steps = sorted(draw(st.sets(I64 | st.integers(0, 20), min_size=1, max_size=4)))
    return hist_bins, [
        draw(records(draw(variants(draw(st.sampled_from(pool)))), s, hist_bins)) for s in steps
    ]


@examples(60)
@given(trace=traces(), values_filter=st.sampled_from(["none", "fletcher32", "gzip"]))
def test_steps_round_trip_bit_exact(trace: tuple[int, list[StepRecord]], values_filter: str) -> None:
    hist_bins, recs = trace
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rank-00000.tft.h5"
        _write(path, recs, hist_bins=hist_bins, values_filter=values_filter)
        with tracefmt.open(tmp) as t:  # the run directory
            assert t.steps() == [r.step for r in recs]
            summaries = t.summaries()
            for r, s in zip(recs, summaries, strict=True):
                assert (s.step, s.num_ops, s.num_tensors) == (
                    r.step,
                    r.graph.num_ops,
                    r.graph.num_tensors,
                )
                assert (s.num_values, s.num_events) == (len(r.values), len(r.events))
            # equal graphs are stored once, and so are graphs that differ only in op attributes
            # and storage offsets (each step's own values are checked by assert_step_matches)
            assert len({s.graph for s in summaries}) == len({r.graph.digest for r in recs})
            for r, step in zip(recs, t.iter_steps(), strict=True):
                assert_step_matches(step, r)
            for r in recs:  # random access by step number
                assert_step_matches(t.step(r.step), r, load_values=False)


def test_stats_rows_round_trip_exactly(tmp_path: Path) -> None:
    """Every field of every stats row, including the bits of NaN payloads, comes back."""
    rng = np.random.default_rng(5)
    g = GraphBuilder()
    for _ in range(300):
        g.add_tensor(DType.FLOAT32, (2,))
    graph = g.finish()
    stats = np.frombuffer(rng.bytes(300 * L.STATS_DTYPE.itemsize), dtype=L.STATS_DTYPE).copy()
    stats["flags"] &= 7
    path = tmp_path / "s.tft.h5"
    _write(path, [StepRecord(step=0, graph=graph, stats=stats)])
    with tracefmt.open(path) as trace:
        rows = trace.rank_file().step_rows()
        got = trace.rank_file()._rows(L.STATS, int(rows[0]["stats_start"]), 300)
        assert got.tobytes() == stats.tobytes()
        assert_step_matches(trace.step(0), StepRecord(step=0, graph=graph, stats=stats))


def test_scalar_bits_survive(tmp_path: Path) -> None:
    patterns = [0x7FF0000000000001, 0xFFF8000000000123, 0x8000000000000000, 0x0000000000000001]
    scalars = {f"s{i}": struct.unpack("<d", struct.pack("<Q", p))[0] for i, p in enumerate(patterns)}
    graph = GraphBuilder().finish()
    rec = StepRecord(step=0, graph=graph, scalars=scalars)
    _write(tmp_path / "x.tft.h5", [rec])
    with tracefmt.open(tmp_path / "x.tft.h5") as trace:
        assert_step_matches(trace.step(0), rec)


def test_writer_refuses_values_numpy_could_not_read_back(tmp_path: Path) -> None:
    """Found by hypothesis: shape (0, 147412, 62568664944881) holds no element, but numpy refuses
    the shape, so the reader could not return its values.  The writer refuses them up front."""
    g = GraphBuilder()
    g.add_tensor(DType.BOOL, (0, 147412, 62_568_664_944_881))
    record = StepRecord(step=0, graph=g.finish(), values={0: np.zeros(0, dtype=np.bool_)})
    with TraceWriter(tmp_path / "t.tft.h5") as w, pytest.raises(ValueError, match="no numpy"):
        w.write_step(record)
