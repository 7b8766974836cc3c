"""Per-tensor statistics and fingerprints equal those computed from the values with numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recorder._convert import to_numpy
from recorder.stats import SMALL_NUMEL, StatsCollector, fingerprint
from tracefmt._layout import STAT_COUNTS, STAT_FINGERPRINT, STAT_MOMENTS
from tracefmt.dtypes import fingerprint as tracefmt_fingerprint

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
          torch.int8, torch.uint8, torch.bool, torch.complex64, torch.float8_e4m3fn,
          torch.float8_e5m2]


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
    fp = tracefmt_fingerprint(to_numpy(t))
    assert int(row["fingerprint"]) == fp
    assert row["flags"] & STAT_FINGERPRINT
    if t.dtype.is_complex or t.numel() == 0:
        return
    x = t.to(torch.float64).numpy().reshape(-1)
    assert row["flags"] & STAT_MOMENTS
    assert row["flags"] & STAT_COUNTS
    assert row["nan"] == int(np.isnan(x).sum())
    assert row["inf"] == int(np.isinf(x).sum())
    assert row["zero"] == int((x == 0).sum())
    finite = np.isfinite(x).all()
    for name, ref in (("min", x.min()), ("max", x.max())):
        np.testing.assert_equal(row[name], ref)
    if finite:
        std = x.std(ddof=1) if x.size > 1 else 0.0
        np.testing.assert_allclose(row["mean"], x.mean(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(row["std"], std, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(row["norm"], np.linalg.norm(x), rtol=1e-9)


@pytest.mark.parametrize("n", [1, 7, 1000, SMALL_NUMEL + 1, 100_000])
def test_stats_equal_numpy(n: int) -> None:
    tensors = [_tensor(d, n, seed=i) for i, d in enumerate(DTYPES)]
    special = torch.randn(n)
    special[0] = math.nan
    special[-1] = math.inf
    tensors += [special, torch.zeros(n), torch.full((n,), 1e4) + torch.randn(n) * 1e-3]
    c = StatsCollector()
    for i, t in enumerate(tensors):
        c.add(i, t)
    rows, hists = c.finish(len(tensors)).resolve()
    assert not hists
    for i, t in enumerate(tensors):
        _check_row(rows[i], t)


def test_histograms_count_every_finite_value() -> None:
    tensors = [torch.randn(50), torch.randn(SMALL_NUMEL + 100), torch.tensor([1.0, math.inf, 3.0])]
    c = StatsCollector(hist_bins=8)
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
