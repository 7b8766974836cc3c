"""Numerical comparison of two recorded tensors: fingerprints, then values, then statistics.

Bit-identity is decided by the recorded fingerprints (equal bits give equal fingerprints; one
flipped bit always changes it).  Tensors whose fingerprints differ are measured from their values
when both sides recorded them (max abs, max rel, ULP distance, count of differing elements),
otherwise estimated from their statistics.  Tolerances default by dtype, as
``torch.testing.assert_close`` does (float32: rtol 1.3e-6, atol 1e-5; bfloat16: rtol 1.6e-2).
"""

from __future__ import annotations

import math

import numpy as np

from replayer.diff.results import Distance, Status, Tolerance
from tracefmt.dtypes import DTYPE_INFO, DType
from tracefmt.errors import TraceError
from tracefmt.model import TensorRecord, TensorStats

__all__ = ["DEFAULT_TOLERANCES", "compare_scalars", "measure", "tolerance_for", "values_distance"]

_EXACT = Tolerance(0.0, 0.0)
#: Default tolerance per dtype; integer and boolean tensors must match exactly.
DEFAULT_TOLERANCES: dict[DType, Tolerance] = {
    DType.FLOAT16: Tolerance(1e-3, 1e-5),
    DType.BFLOAT16: Tolerance(1.6e-2, 1e-5),
    DType.FLOAT32: Tolerance(1.3e-6, 1e-5),
    DType.FLOAT64: Tolerance(1e-7, 1e-7),
    DType.COMPLEX64: Tolerance(1.3e-6, 1e-5),
    DType.COMPLEX128: Tolerance(1e-7, 1e-7),
    DType.FLOAT8_E4M3FN: Tolerance(0.125, 1e-3),
    DType.FLOAT8_E4M3FNUZ: Tolerance(0.125, 1e-3),
    DType.FLOAT8_E5M2: Tolerance(0.25, 1e-3),
    DType.FLOAT8_E5M2FNUZ: Tolerance(0.25, 1e-3),
    DType.FLOAT8_E8M0FNU: Tolerance(1.0, 1e-3),
}
_FLOAT_BITS = {
    DType.FLOAT16: np.uint16,
    DType.BFLOAT16: np.uint16,
    DType.FLOAT32: np.uint32,
    DType.FLOAT64: np.uint64,
    DType.FLOAT8_E4M3FN: np.uint8,
    DType.FLOAT8_E5M2: np.uint8,
}


def tolerance_for(
    dtype_a: DType, dtype_b: DType, rtol: float | None = None, atol: float | None = None
) -> Tolerance:
    """The tolerance for a pair: the looser of both dtypes' defaults, overridden by the user's."""
    ta = DEFAULT_TOLERANCES.get(dtype_a, _EXACT)
    tb = ta if dtype_b is dtype_a else DEFAULT_TOLERANCES.get(dtype_b, _EXACT)
    return Tolerance(
        max(ta.rtol, tb.rtol) if rtol is None else rtol, max(ta.atol, tb.atol) if atol is None else atol
    )


def _ordinal(bits: np.ndarray, width: int) -> np.ndarray:
    """Map float bit patterns to integers that count representable values (monotone)."""
    u = bits.astype(np.uint64)
    sign = (u >> np.uint64(width - 1)) & np.uint64(1)
    mag = (u & np.uint64((1 << (width - 1)) - 1)).astype(np.int64)
    return np.where(sign.astype(bool), -mag, mag)


def _ulp(va: np.ndarray, vb: np.ndarray, dtype: DType, both_nan: np.ndarray | None) -> int | None:
    bits_type = _FLOAT_BITS.get(dtype)
    if bits_type is None or va.size == 0:
        return None
    width = np.dtype(bits_type).itemsize * 8
    oa = _ordinal(np.ascontiguousarray(va).reshape(-1).view(bits_type), width)
    ob = _ordinal(np.ascontiguousarray(vb).reshape(-1).view(bits_type), width)
    if width == 64:
        d = np.abs(oa.astype(np.float64) - ob.astype(np.float64))
    else:
        d = np.abs(oa - ob).astype(np.float64)
    if both_nan is not None:
        d[both_nan] = 0
    return int(d.max())


def _bits_differ(va: np.ndarray, vb: np.ndarray, itemsize: int) -> int:
    """How many elements of two same-dtype arrays differ in any bit."""
    ra = np.ascontiguousarray(va).reshape(-1).view(np.uint8)
    rb = np.ascontiguousarray(vb).reshape(-1).view(np.uint8)
    if not ra.size:
        return 0
    if itemsize in (1, 2, 4, 8):
        word = np.dtype(f"<u{itemsize}")
        return int(np.count_nonzero(ra.view(word) != rb.view(word)))
    return int(np.any(ra.reshape(-1, itemsize) != rb.reshape(-1, itemsize), axis=1).sum())


def values_distance(
    va: np.ndarray, vb: np.ndarray, dtype_a: DType, dtype_b: DType, tol: Tolerance
) -> tuple[Distance, bool]:
    """Elementwise distance of two arrays of one shape, and whether all are within ``tol``.

    NaN equals NaN; a NaN or Inf on one side only is an infinite distance (``nonfinite``).
    """
    complex_ = DTYPE_INFO[dtype_a].per_element == 2 or DTYPE_INFO[dtype_b].per_element == 2
    wide = np.complex128 if complex_ else np.float64  # packed float4: the bytes, compared
    a64: np.ndarray = va.astype(wide).reshape(-1)
    b64: np.ndarray = vb.astype(wide).reshape(-1)
    both_nan: np.ndarray | None = None
    nonfinite = False
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        diff = np.abs(a64 - b64)
        abs_b = np.abs(b64)
        if np.isfinite(diff).all():  # the common case: no NaN or Inf anywhere near
            same = None
        else:
            both_nan = np.isnan(a64) & np.isnan(b64)
            same = (a64 == b64) | both_nan
            diff[same] = 0.0
            diff[np.isnan(diff)] = np.inf  # NaN on one side, or inf - inf of opposite signs
            nonfinite = bool(np.any(np.isfinite(a64) != np.isfinite(b64)))
        scale = np.maximum(np.abs(a64), abs_b)
        rel = np.divide(diff, scale, out=np.zeros_like(diff), where=scale > 0)
        rel[(scale == 0) & (diff > 0)] = np.inf
        ok = diff <= tol.atol + tol.rtol * abs_b
        within = bool(ok.all() if same is None else (same | ok).all())
    if dtype_a is dtype_b:
        count = _bits_differ(va, vb, DTYPE_INFO[dtype_a].itemsize)
        ulp = _ulp(va, vb, dtype_a, both_nan)
    else:
        count = int(np.count_nonzero(diff)) if same is None else int((~same).sum())
        ulp = None
    return Distance(
        "values",
        float(diff.max(initial=0.0)),
        float(rel.max(initial=0.0)),
        ulp,
        count,
        int(a64.size),
        nonfinite,
    ), within and not nonfinite


def stats_distance(sa: TensorStats, sb: TensorStats, tol: Tolerance) -> tuple[Distance, bool] | None:
    """Distance estimated from statistics, or ``None`` when no statistic is on both sides."""
    max_abs = max_rel = 0.0
    within = True
    seen = False
    atol, rtol = tol.atol, tol.rtol
    for x, y in (
        (sa.min, sb.min),
        (sa.max, sb.max),
        (sa.mean, sb.mean),
        (sa.std, sb.std),
        (sa.norm, sb.norm),
    ):
        if x is None or y is None:
            continue
        seen = True
        if x == y or (x != x and y != y):  # equal, or NaN on both sides
            continue
        d = abs(x - y)
        if d != d:
            d = math.inf
        scale = abs(x) if abs(x) > abs(y) else abs(y)
        if d > max_abs:
            max_abs = d
        rel = d / scale if scale > 0 else math.inf
        if rel > max_rel:
            max_rel = rel
        if not d <= atol + rtol * scale:
            within = False
    nonfinite = (sa.nan is not None and sb.nan is not None and sa.nan != sb.nan) or (
        sa.inf is not None and sb.inf is not None and sa.inf != sb.inf
    )
    if not seen and not nonfinite:
        return None
    return Distance(
        "stats", float(max_abs), float(max_rel), nonfinite=nonfinite
    ), within and not nonfinite


def measure(
    ta: TensorRecord, tb: TensorRecord, tol: Tolerance, use_values: bool = True
) -> tuple[Status, Distance | None]:
    """Compare two tensors already known to differ in bits (or without fingerprints).

    Returns ``UNKNOWN`` when neither values nor statistics can tell; ``DIFFERENT`` when shapes
    differ.  A value read that fails (a damaged file) falls back to statistics.
    """
    if ta.meta.shape != tb.meta.shape:
        return Status.DIFFERENT, None
    if use_values and ta.has_values and tb.has_values:
        pair: tuple[np.ndarray, np.ndarray] | None
        try:
            pair = ta.values(), tb.values()
        except TraceError:
            pair = None
        if pair is not None:
            va, vb = pair
            dist, within = values_distance(va, vb, ta.meta.dtype, tb.meta.dtype, tol)
            if dist.count == 0 and ta.meta.dtype is tb.meta.dtype:
                return Status.EQUAL, None
            return (Status.CLOSE if within else Status.DIFFERENT), dist
    if ta.stats is not None and tb.stats is not None:
        result = stats_distance(ta.stats, tb.stats, tol)
        if result is not None:
            dist, within = result
            fa, fb = ta.stats.fingerprint, tb.stats.fingerprint
            # No fingerprint: equal statistics are all there is to go by.
            if (fa is None or fb is None) and dist.max_abs == 0 and not dist.nonfinite:
                return Status.EQUAL, None
            return (Status.CLOSE if within else Status.DIFFERENT), dist
    if (
        ta.stats is not None
        and tb.stats is not None
        and ta.stats.fingerprint is not None
        and tb.stats.fingerprint is not None
    ):
        return Status.DIFFERENT, None  # fingerprints differ, nothing else recorded
    return Status.UNKNOWN, None


def compare_scalars(
    a: dict[str, float], b: dict[str, float], rtol: float | None = None, atol: float | None = None
) -> list[tuple[str, float, float, bool]]:
    """Per-step scalars recorded on both sides whose values differ: (name, a, b, within).

    Scalars (the loss, ...) are compared with the float32 tolerance unless one is given.
    """
    t = tolerance_for(DType.FLOAT32, DType.FLOAT32, rtol, atol)
    out = []
    for name in sorted(set(a) & set(b)):
        x, y = a[name], b[name]
        if x == y or (math.isnan(x) and math.isnan(y)):
            continue
        within = abs(x - y) <= t.atol + t.rtol * abs(y)
        out.append((name, x, y, bool(within)))
    return out
