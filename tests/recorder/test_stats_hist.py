"""The histogram kernel (recorder.stats.native.fused_histogram) counts exactly what the torch
path (recorder.stats.common.histogram) counts, edges included, and what numpy's ``histogram``
counts where no value lies on an edge (numpy's edges come from ``linspace`` and may round to the
other side of a value that ``(x - lo) / width * bins`` puts exactly on one)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recorder.stats import native as _native
from recorder.stats.common import histogram
from recorder.stats.cpu import SMALL_NUMEL, StatsCollector

pytestmark = pytest.mark.skipif(not _native.available(), reason="the one-pass kernel could not be built")


def _reference(t: torch.Tensor, bins: int) -> tuple[float, float, np.ndarray]:
    """numpy's counts; when every value is one number, all of them in bin 0 (spec section
    5.10: the range is then ``[lo, lo + 1)``; numpy would centre it)."""
    finite = t[torch.isfinite(t)].double().numpy()
    lo, hi = float(finite.min()), float(finite.max())
    if lo == hi:
        return lo, hi, np.bincount(np.zeros(len(finite), dtype=np.int64), minlength=bins)
    counts, _ = np.histogram(finite, bins=bins, range=(lo, hi))
    return lo, hi, counts


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", [1, 7, 1000, SMALL_NUMEL + 3, 200_000])
@pytest.mark.parametrize("bins", [1, 8, 64, 100])
def test_kernel_equals_numpy_and_torch(dtype: torch.dtype, n: int, bins: int) -> None:
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        t = (torch.randn(n, generator=g) * 3).to(dtype)  # bfloat16: values on a coarse grid
        lo, hi, ref = _reference(t, bins)
        got = _native.fused_histogram(t, lo, hi, bins, finite=True)
        assert got is not None
        np.testing.assert_array_equal(got.astype(np.int64), histogram(t, bins)[2].numpy())
        if dtype is torch.float32:  # bfloat16's coarse grid puts values on edges
            np.testing.assert_array_equal(got.astype(np.int64), ref)
        assert int(got.sum()) == n


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_values_on_bin_edges(dtype: torch.dtype) -> None:
    """Integers 0..64 over 64 bins put one value on every edge: float's rounding must not move
    any of them (the kernel bins those in double)."""
    t = torch.arange(65, dtype=torch.float32).repeat(50).to(dtype)
    lo, hi, ref = _reference(t, 64)
    got = _native.fused_histogram(t, lo, hi, 64, finite=True)
    assert got is not None
    np.testing.assert_array_equal(got.astype(np.int64), ref)
    t = torch.linspace(-1, 1, 4097).to(dtype)
    lo, hi, ref = _reference(t, 32)
    got = _native.fused_histogram(t, lo, hi, 32)
    assert got is not None
    np.testing.assert_array_equal(got.astype(np.int64), ref)


def test_non_finite_elements_are_not_counted() -> None:
    t = torch.randn(100_000)
    t[::7] = math.nan
    t[1::11] = math.inf
    t[2::13] = -math.inf
    lo, hi, ref = _reference(t, 16)
    got = _native.fused_histogram(t, lo, hi, 16)
    assert got is not None
    np.testing.assert_array_equal(got.astype(np.int64), ref)
    assert int(got.sum()) == int(torch.isfinite(t).sum())


def test_a_constant_tensor_is_all_in_the_first_bin() -> None:
    t = torch.full((5000,), 2.5)
    got = _native.fused_histogram(t, 2.5, 2.5, 8, finite=True)
    assert got is not None
    assert got.tolist() == [5000, 0, 0, 0, 0, 0, 0, 0]


def test_threads_give_the_same_counts() -> None:
    t = torch.randn(1 << 20)
    lo, hi, ref = _reference(t, 64)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 4):
            torch.set_num_threads(threads)
            got = _native.fused_histogram(t, lo, hi, 64, finite=True)
            assert got is not None
            np.testing.assert_array_equal(got.astype(np.int64), ref)
    finally:
        torch.set_num_threads(before)


def test_refuses_what_it_does_not_read() -> None:
    assert _native.fused_histogram(torch.randn(10).double(), -1.0, 1.0, 8) is None
    assert _native.fused_histogram(torch.randn(10, 2).t(), -1.0, 1.0, 8) is None


def test_collector_histograms_of_small_and_large_tensors() -> None:
    """The collector's histograms (kernel for float32/bfloat16, small or large; torch for the
    others) against numpy."""
    tensors = [
        torch.randn(50),
        torch.randn(SMALL_NUMEL + 100).to(torch.bfloat16),
        torch.randn(300).double(),
        torch.tensor([1.0, math.inf, 3.0, math.nan]),
        torch.randn(3000).half(),
    ]
    c = StatsCollector(hist_bins=12)
    for i, t in enumerate(tensors):
        c.add(i, t)
    _, hists = c.finish(len(tensors)).resolve()
    for i, t in enumerate(tensors):
        lo, hi, counts = hists[i]
        ref_lo, ref_hi, ref = _reference(t.float() if t.dtype is torch.half else t, 12)
        assert (lo, hi) == (ref_lo, ref_hi)
        np.testing.assert_array_equal(np.asarray(counts, dtype=np.int64), ref)
