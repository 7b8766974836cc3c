"""Per-tensor statistics and fingerprints equal those computed from the values with numpy."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from recorder.convert import to_numpy
from recorder.stats import native as _native
from recorder.stats.cpu import SMALL_NUMEL, StatsCollector, fingerprint
from tracefmt.dtypes import DType
from tracefmt.dtypes import fingerprint as tracefmt_fingerprint
from tracefmt.model import StatFlags
from tracefmt.stats import tensor_stats

DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int8,
    torch.uint8,
    torch.bool,
    torch.complex64,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
]


def _tensor(dtype: torch.dtype, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * 3
    if dtype is torch.bool:
        return x > 0
    if dtype is torch.complex64:
        return torch.complex(x, -x)
    if not dtype.is_floating_point:
        return (x * 10).to(torch.int64).clamp(0 if dtype is torch.uint8 else -100, 100).to(dtype)
    return x.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [0, 1, 3, 8, 13, SMALL_NUMEL + 5])
def test_fingerprint_equals_tracefmt(dtype: torch.dtype, n: int) -> None:
    t = _tensor(dtype, n)
    assert int(fingerprint(t)) % 2**64 == tracefmt_fingerprint(to_numpy(t))


def test_fingerprint_of_views_misaligned_and_non_contiguous() -> None:
    base = torch.randn(64, 33)
    for t in (base[:, 1:], base.t(), base.view(-1)[1:], base[3], base[::2]):
        assert int(fingerprint(t)) % 2**64 == tracefmt_fingerprint(to_numpy(t))


def test_fingerprint_catches_every_single_bit_flip() -> None:
    t = torch.randn(257)
    ref = int(fingerprint(t))
    raw = t.view(torch.int32)
    for i in range(0, 257, 16):
        for bit in (0, 13, 31):
            flipped = raw.clone()
            flipped[i] ^= 1 << bit if bit < 31 else -(1 << 31)
            assert int(fingerprint(flipped.view(torch.float32))) != ref


def _check_row(row: np.void, t: torch.Tensor) -> None:
    """The row equals the spec's reference (``tracefmt.stats.tensor_stats``: moments over the
    finite values, population std, float64) computed from the values, within the accuracy spec
    section 5.7 allows 16- and 32-bit floats (float32 sums: 1e-6 of the magnitudes)."""
    fp = tracefmt_fingerprint(to_numpy(t))
    assert int(row["fingerprint"]) == fp
    assert row["flags"] & StatFlags.FINGERPRINT
    if t.dtype.is_complex or t.numel() == 0:
        return
    x = t.to(torch.float64).numpy().reshape(-1)
    ref = tensor_stats(x, DType.FLOAT64)
    assert row["flags"] == ref["flags"]
    for name in ("nan", "inf", "zero"):
        assert row[name] == ref[name], name
    if not ref["flags"] & StatFlags.MOMENTS:
        return
    np.testing.assert_equal([row["min"], row["max"]], [ref["min"], ref["max"]])
    scale = float(np.abs(x[np.isfinite(x)]).mean())
    np.testing.assert_allclose(row["mean"], ref["mean"], rtol=1e-9, atol=1e-6 * scale)
    np.testing.assert_allclose(row["std"], ref["std"], rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(row["norm"], ref["norm"], rtol=1e-6)


def _native_param(native: bool) -> bool:
    if native and not _native.available():
        pytest.skip("the one-pass statistics kernel could not be built here (no C compiler)")
    return native


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
@pytest.mark.parametrize("n", [1, 7, 1000, SMALL_NUMEL + 1, 100_000, 3 * 65536 + 7])
def test_stats_equal_numpy(n: int, native: bool) -> None:
    tensors = [_tensor(d, n, seed=i) for i, d in enumerate(DTYPES)]
    special = torch.randn(n)
    special[0] = math.nan
    special[-1] = math.inf
    all_nan = torch.full((n,), math.nan)
    neg_zero = torch.randn(n).clamp(min=0) * -1.0  # -0.0 where it was negative
    relu = torch.randn(n).clamp(min=0)  # min exactly 0.0
    tensors += [
        special,
        torch.zeros(n),
        torch.full((n,), 1e4) + torch.randn(n) * 1e-3,
        all_nan,
        neg_zero,
        neg_zero.to(torch.bfloat16),
        special.to(torch.float16),
        relu,
        -relu,
        relu.to(torch.bfloat16),
        (torch.randn(n) * 1e-3 + 2).to(torch.bfloat16),
        special.to(torch.bfloat16),
        torch.randn(n + 1)[1:],  # 4 bytes off alignment
        torch.randn(n).masked_fill(torch.arange(n) % 3 == 0, -math.inf),  # attention mask
        torch.full((n,), math.inf),
        relu.masked_fill(torch.arange(n) % 5 == 1, math.nan),
        torch.randn(n) * 1e20,
        (torch.randn(n) * 1e20).to(torch.bfloat16),  # squares
        torch.full((n,), 3e38) * torch.randn(n).sign(),
    ]  # overflow float: float64 path
    c = StatsCollector(native=_native_param(native))
    for i, t in enumerate(tensors):
        c.add(i, t)
    rows, hists = c.finish(len(tensors)).resolve()
    assert not hists
    for i, t in enumerate(tensors):
        _check_row(rows[i], t)


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
def test_histograms_count_every_finite_value(native: bool) -> None:
    tensors = [torch.randn(50), torch.randn(SMALL_NUMEL + 100), torch.tensor([1.0, math.inf, 3.0])]
    c = StatsCollector(hist_bins=8, native=_native_param(native))
    for i, t in enumerate(tensors):
        c.add(i, t)
    _, hists = c.finish(len(tensors)).resolve()
    for i, t in enumerate(tensors):
        lo, hi, counts = hists[i]
        finite = t[torch.isfinite(t)].double().numpy()
        assert (lo, hi) == (finite.min(), finite.max())
        ref, _ = np.histogram(finite, bins=8, range=(lo, hi))
        np.testing.assert_array_equal(counts, ref)


def test_collector_copies_small_tensors_before_they_change() -> None:
    t = torch.ones(10)
    c = StatsCollector()
    c.add(0, t)
    t.zero_()
    rows, _ = c.finish(1).resolve()
    assert rows[0]["max"] == 1.0


def test_device_path_equals_the_reference() -> None:
    """The accelerator path (no sync: always counts, masks non-finite values on the device) run
    on CPU tensors gives the same rows as the CPU path's reference."""
    from recorder.stats.common import fill_rows
    from recorder.stats.device import DeviceStats
    from tracefmt.records import empty_stats

    tensors = [_tensor(d, n, seed=i) for i, d in enumerate(DTYPES) for n in (5, SMALL_NUMEL + 3)]
    special = torch.randn(SMALL_NUMEL + 9)
    special[3] = math.nan
    special[7] = -math.inf
    tensors += [special, special[:20].clone(), torch.full((30,), math.inf)]
    ds = DeviceStats()
    for i, t in enumerate(tensors):
        ds.add(i, t)
    parts, _, _ = ds.finish()
    rows = empty_stats(len(tensors))
    for indices, numels, flags, floats, ints in parts:
        fill_rows(rows, indices, numels, flags, floats.numpy(), ints.numpy())
    for i, t in enumerate(tensors):
        _check_row(rows[i], t)


def test_alias_copies_the_row_of_its_source() -> None:
    t = torch.randn(SMALL_NUMEL * 2)
    c = StatsCollector()
    c.add(0, t)
    c.alias(1, 0)
    rows, _ = c.finish(2).resolve()
    assert rows[0].tobytes() == rows[1].tobytes()


def test_detach_and_unsafe_view_outputs_reuse_their_input_stats() -> None:
    import recorder
    from tests.recorder._util import ListSink

    sink = ListSink()
    with recorder.record(sink=sink, values="all") as rec:
        x = torch.randn(64, SMALL_NUMEL // 32)
        y = (x * 2).detach()
        _ = torch.ops.aten._unsafe_view(y, (-1,))
        rec.step()
    (record,) = sink.records
    assert record.stats is not None
    for i, v in record.values.items():
        assert int(record.stats["fingerprint"][i]) == tracefmt_fingerprint(v)
        assert record.stats["flags"][i]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", [1, 127, 128, 129, 65536 * 2 + 1, 65536 * 4 + 130])
def test_native_kernel_equals_the_reference(dtype: torch.dtype, n: int) -> None:
    """The one-pass kernel: exact counts and fingerprint, min/max, and sums within spec 5.7's
    1e-6 (float sums over 128-element blocks, then double), for every split into threads and
    tails."""
    _native_param(True)
    x = (torch.randn(n + 3) * 5 + 1).to(dtype)[3:]  # misaligned start
    x[::7] = 0.0
    r = _native.fused_stats(x)
    assert r is not None
    xd = x.double().numpy()
    assert (r.nan, r.inf) == (0, 0)
    assert r.nonzero == np.count_nonzero(xd)
    assert r.fingerprint == tracefmt_fingerprint(to_numpy(x))
    assert (r.min, r.max) == (xd.min(), xd.max())
    assert abs(r.sum - xd.sum()) <= 1e-6 * np.abs(xd).sum()
    assert abs(r.sumsq - np.square(xd).sum()) <= 1e-6 * np.square(xd).sum()
    x[n // 2] = math.nan
    x[n - 1] = -math.inf
    r = _native.fused_stats(x)
    assert r is not None
    assert (r.nan, r.inf) == (int(n > 1), 1)
    finite = x.double().numpy()
    finite = finite[np.isfinite(finite)]
    if finite.size:
        assert (r.min, r.max) == (finite.min(), finite.max())
        assert abs(r.sum - finite.sum()) <= 1e-6 * np.abs(finite).sum()
    assert r.fingerprint == tracefmt_fingerprint(to_numpy(x))


def _check_kernel(r: _native.FusedStats | None, x: torch.Tensor) -> None:
    """Exact counts, min, max and fingerprint; sums within spec 5.7's 1e-6 of the magnitudes,
    unless the kernel says they overflowed float (then the caller computes them in float64)."""
    assert r is not None
    bits = to_numpy(x).view(np.uint32 if x.dtype == torch.float32 else np.uint16)
    sign = 0x80000000 if x.dtype == torch.float32 else 0x8000
    xd = x.double().numpy()
    finite = xd[np.isfinite(xd)]
    assert (r.nan, r.inf) == (np.isnan(xd).sum(), np.isinf(xd).sum())
    assert (r.nonzero, r.negzero) == (np.count_nonzero(xd), (bits == sign).sum())
    assert r.fingerprint == tracefmt_fingerprint(to_numpy(x))
    if finite.size:  # min and max do not tell -0.0 from 0.0
        assert (r.min, r.max) == (finite.min(), finite.max())
    else:
        assert (r.min, r.max) == (np.finfo(np.float32).max, -np.finfo(np.float32).max)
    if math.isfinite(r.sum) and math.isfinite(r.sumsq):
        assert abs(r.sum - finite.sum()) <= 1e-6 * np.abs(finite).sum()
        assert abs(r.sumsq - np.square(finite).sum()) <= 1e-6 * np.square(finite).sum()
    else:  # only when a block's squares overflow float
        assert np.abs(finite).max() > 1e18


_BLOCK_KINDS = ["plain", "zero", "negzero", "nan", "inf", "half zeros", "huge"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("huge", [False, True], ids=["", "huge"])
def test_native_kernel_reads_every_kind_of_block(dtype: torch.dtype, huge: bool) -> None:
    """The kernel takes a fast path through blocks of 128 elements with no zero and no
    non-finite element, and starts each block on the path the last one needed: blocks of every
    kind, after every kind, in runs of several, with partial blocks at either end, are read
    exactly as the reference says."""
    _native_param(True)
    kinds = [k for k in _BLOCK_KINDS if huge or k != "huge"]
    order = [a for a in kinds for b in kinds for a in (a, b)] + ["plain"] * 9 + kinds[::-1] * 2
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(128 * len(order) + 3 + 77, generator=g) * 3).to(dtype)
    body = x[3 : 3 + 128 * len(order)].view(len(order), 128)
    for block, kind in zip(body, order, strict=True):
        j = int(torch.randint(128, (1,), generator=g))
        value = {"zero": 0.0, "negzero": -0.0, "nan": math.nan, "inf": -math.inf, "huge": 3e37}
        if kind in value:
            block[j] = value[kind]
        elif kind == "half zeros":  # a ReLU's output
            block.clamp_(min=0)
    for start, stop in [(3, len(x)), (0, len(x)), (3 + 128, 3 + 128 * 5), (5, 5 + 128 * 3 + 1)]:
        _check_kernel(_native.fused_stats(x[start:stop]), x[start:stop])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_native_kernel_reads_uniform_tensors(dtype: torch.dtype) -> None:
    """Every block alike (constants, all zeros, all -0.0, all NaN, an attention mask, huge and
    subnormal-free tiny values), in sizes around the block and lane widths."""
    _native_param(True)
    for n in [1, 15, 16, 17, 127, 128, 129, 511, 512, 513, 4096 + 300]:
        idx = torch.arange(n)
        for x in [
            torch.ones(n),
            torch.full((n,), -2.75),
            torch.zeros(n),
            torch.full((n,), -0.0),
            torch.full((n,), math.nan),
            torch.full((n,), math.inf),
            torch.randn(n).masked_fill(idx % 3 == 0, -math.inf),
            torch.full((n,), 1e4) + torch.randn(n) * 1e-3,
            torch.randn(n) * 1e30,
            torch.randn(n) * 1e-18,
        ]:
            x = x.to(dtype)
            _check_kernel(_native.fused_stats(x), x)


def test_native_vector_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel is built for the vector level torch runs at."""
    monkeypatch.setattr(_native.platform, "machine", lambda: "x86_64")
    for level, flags in [("AVX512", {"-mavx512f", "-mavx512bw", "-mavx2"}), ("AVX2", {"-mavx2"})]:
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda level=level: level)
        assert flags <= set(_native._vector_flags())
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    assert _native._vector_flags() == []
    monkeypatch.setattr(_native.platform, "machine", lambda: "aarch64")
    assert _native._vector_flags() == []


def test_native_kernel_refuses_what_it_cannot_read() -> None:
    _native_param(True)
    assert _native.fused_stats(torch.randn(4, 4).t()) is None  # not contiguous
    assert _native.fused_stats(torch.randn(8, dtype=torch.float64)) is None
    assert _native.fused_stats(torch.ones(8, dtype=torch.float16)) is None


def test_native_kernel_falls_back_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No compiler, or one that fails: a warning naming the fix and the torch path; disabled by
    TRACEFMT_NATIVE_STATS=0: nothing is built and nothing is said."""
    monkeypatch.setenv("TRACEFMT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_native, "_compiler", lambda: None)
    with pytest.warns(UserWarning, match="no C compiler found"):
        assert _native._build() is None
    monkeypatch.setattr(_native, "_compiler", lambda: "false")  # a compiler that always fails
    monkeypatch.setattr(_native, "cache_dirs", lambda: [tmp_path])
    with pytest.warns(UserWarning, match="could not build the one-pass statistics kernel"):
        assert _native._build() is None
    assert not list(tmp_path.glob("*.so*"))  # no half-written library left in the cache
    monkeypatch.setenv("TRACEFMT_NATIVE_STATS", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _native._build() is None


def test_native_kernel_is_cached_by_source_and_flags(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _native_param(True)
    monkeypatch.setenv("TRACEFMT_CACHE_DIR", str(tmp_path))
    assert _native._build() is not None
    built = sorted(tmp_path.glob("*.so"))
    assert [p.name[:12] for p in built] == ["fused_stats-"]
    assert built[0].stat().st_mode & 0o777 == 0o755  # other users of a shared cache can load it
    assert _native._build() is not None  # loaded from the cache, not rebuilt
    assert sorted(tmp_path.glob("*.so")) == built
    built[0].chmod(0o777)  # anyone could have replaced it: refuse it
    with pytest.raises(OSError, match="writable by other users"):
        _native._load("cc", [], built[0])


def test_native_build_details() -> None:
    """OpenMP only with GCC (clang's would bring a second runtime); a hung compiler is killed."""
    gcc = "gcc (Debian 12.2.0-14) 12.2.0\nCopyright (C) 2022 Free Software Foundation, Inc."
    clang = "Debian clang version 14.0.6\nTarget: x86_64-pc-linux-gnu"
    assert _native._openmp_flags(clang) == []
    if (Path(torch.__file__).parent / "lib" / "libgomp.so.1").exists():
        assert _native._openmp_flags(gcc) == ["-fopenmp"]
    with pytest.raises(OSError, match="took more than"):
        _native._run(["sleep", "30"], 0.5)


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
def test_statistics_build_no_autograd_nodes(native: bool) -> None:
    """Statistics read tensors that require grad; they must not add nodes to the autograd graph
    (nor take sequence numbers, which attribute backward ops to modules)."""
    c = StatsCollector(native=_native_param(native))
    params = [
        torch.randn(8, 4, requires_grad=True).t(),
        torch.randn(SMALL_NUMEL + 9, 2, requires_grad=True).t(),
    ]
    before = torch._C._autograd._get_sequence_nr()
    for i, p in enumerate(params):
        c.add(i, p)
    assert torch._C._autograd._get_sequence_nr() == before
    c.finish(len(params)).resolve()
