"""Comparing a replayed tensor with what the trace recorded: values, or statistics and fingerprint.

Tolerance.  Two correct float implementations of one op differ by rounding, which grows with the
number of terms summed into one output element (the op's *reduction length* K: the inner dimension
of a product, the normalized size of a norm, the window of a pool).  The relative tolerance is

    tol = eps(dtype) * 16 * (1 + sqrt(K))

and an element passes when ``|replayed - recorded| <= tol * (|recorded| + scale)``, where ``scale``
is the larger of the tensor's own RMS and the size of the terms the element was computed from
(``magnitude``: sum|x| for a sum, sum|a||b| for a product, :mod:`replayer.check.magnitude`).
Errors are measured against the tensor's scale, so a near-zero element of a tensor is not held to a
relative standard it cannot meet, and against its terms, so a whole tensor that cancels to
rounding noise (a sum that is mathematically zero) is judged by the rounding of its inputs, not by
its own size.  Bit-exact ops (data movement, integer math) fed recorded inputs must match exactly.
Non-finite elements must match exactly, everywhere.

Chain mode (``replayer check --chain``, a step re-executed from its leaves).  An op's inputs are
then replays, off by their own bounds, and its output's bound is

    tol(op) = max(tol_own + CHAIN_GROWTH * max(tol(inputs)), floor)

with ``tol_own`` the formula above (0 for exact ops), ``CHAIN_GROWTH`` 1 (bounds add up along
the longest path of ops to the step's leaves, they do not compound) and ``floor`` ``CHAIN_FLOOR_EPS``
/ 2 epsilons (9.8e-4 in float32; 5% at most), for ops not bit-exact, which covers rounding amplified
by one ill-conditioned op (Adam's division by sqrt(v) + eps, relu dropping half a tensor's scale).
A recorded output (values) passes its measured error on instead of its bound.  This is a
calibrated bound, not a proof: the GPT example (recorder/examples/gpt.py) replayed from its
leaves deviates from its record by at most 2.6e-6 (Adam's ``addcdiv_``; 3e-7 forward, 8e-7
backward) where the bound reaches 1.5e-3 forward, 2.2e-3 backward and optimizer, and a 1%
change of one leaf fails the op that reads it (tests/replayer/check/test_leaves.py).  A change
smaller than the floor, about 1e-3 of a tensor's scale in float32, can go unseen.

Statistics.  The trace format says moments are over the finite values and ``std`` is the
population standard deviation; the recorder currently writes Bessel's ``std`` and moments over all
values.  Each recorded moment passes when it matches either definition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from tracefmt.dtypes import DTYPE_INFO, DType, fingerprint
from tracefmt.model import TensorStats

_EPS = {
    DType.FLOAT64: 2.0**-52,
    DType.FLOAT32: 2.0**-23,
    DType.FLOAT16: 2.0**-10,
    DType.BFLOAT16: 2.0**-7,
    DType.FLOAT8_E4M3FN: 2.0**-3,
    DType.FLOAT8_E4M3FNUZ: 2.0**-3,
    DType.FLOAT8_E5M2: 2.0**-2,
    DType.FLOAT8_E5M2FNUZ: 2.0**-2,
    DType.COMPLEX64: 2.0**-23,
    DType.COMPLEX128: 2.0**-52,
}


def tolerance(dtype: DType, reduction: int = 1) -> float:
    """Relative tolerance for one op's output of ``dtype`` with reduction length ``reduction``."""
    eps = _EPS.get(dtype, 0.0)
    return eps * 16 * (1 + math.sqrt(max(reduction, 1)))


@dataclass(frozen=True)
class Comparison:
    """The outcome of comparing one output."""

    ok: bool
    method: str
    max_abs: float | None = None
    max_rel: float | None = None
    detail: str = ""


def _as_float(x: np.ndarray) -> np.ndarray:
    if x.dtype.kind == "c":
        return np.abs(x.astype(np.complex128))
    return np.asarray(x, dtype=np.float64)


def compare_values(
    replayed: np.ndarray,
    recorded: np.ndarray,
    dtype: DType,
    tol: float,
    exact: bool,
    floor: float = 0.0,
    magnitude: np.ndarray | None = None,
) -> Comparison:
    """Elementwise comparison (see the module docstring).  ``floor`` (one number) and
    ``magnitude`` (per element, the shape of ``recorded``) raise the scale errors are measured
    against to the size of the terms an element sums (for outputs that cancel)."""
    if tuple(replayed.shape) != tuple(recorded.shape):
        return Comparison(
            False,
            "values",
            detail=f"shape {tuple(replayed.shape)} replayed, {tuple(recorded.shape)} recorded",
        )
    if recorded.size == 0:
        return Comparison(True, "values", 0.0, 0.0)
    if exact or tol == 0.0:
        a = np.asarray(replayed).astype(recorded.dtype, copy=False)
        same = a == recorded
        if recorded.dtype.kind in "fc" or DTYPE_INFO[dtype].logical.kind == "f":
            fa, fb = _as_float(a), _as_float(recorded)
            same = same | (np.isnan(fa) & np.isnan(fb))
        if bool(np.all(same)):
            return Comparison(True, "values", 0.0, 0.0)
        diff = int(np.count_nonzero(~same))
        return Comparison(
            False, "values", detail=f"{diff} of {recorded.size} elements differ (the op is exact)"
        )
    a, b = _as_float(replayed), _as_float(recorded)
    finite = np.isfinite(b)
    if not finite.all():
        mismatch = (~finite) & ~((a == b) | (np.isnan(a) & np.isnan(b)))
        if mismatch.any():
            return Comparison(
                False, "values", detail=f"{int(mismatch.sum())} non-finite recorded elements differ"
            )
    fa, fb = a[finite], b[finite]
    if fb.size == 0:
        return Comparison(True, "values", 0.0, 0.0)
    if not np.isfinite(fa).all():
        return Comparison(
            False,
            "values",
            detail=f"{int((~np.isfinite(fa)).sum())} replayed "
            "elements are not finite where the record is",
        )
    err = np.abs(fa - fb)
    scale: float | np.ndarray = max(float(np.sqrt(np.mean(fb * fb))), floor)
    if magnitude is not None:
        scale = np.maximum(scale, np.broadcast_to(magnitude, b.shape)[finite])
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(err > 0, err / (np.abs(fb) + scale), 0.0)
    max_abs, max_rel = float(err.max()), float(rel.max())
    ok = max_rel <= tol
    detail = "" if ok else f"max relative error {max_rel:.3g} > tolerance {tol:.3g}"
    return Comparison(ok, "values", max_abs, max_rel, detail)


def _variants(x: np.ndarray) -> list[dict[str, float]]:
    """The moments of ``x`` under both definitions in use (spec: finite values, population std;
    recorder: all values, Bessel's std)."""
    out = []
    finite = x[np.isfinite(x)]
    for data, ddof in ((finite, 0), (x, 1)):
        if data.size == 0:
            out.append(dict.fromkeys(("min", "max", "mean", "std", "norm"), math.nan))
            continue
        with np.errstate(invalid="ignore", over="ignore"):
            mean = float(data.mean())
            std = float(data.std(ddof=ddof)) if data.size > ddof else 0.0
            out.append(
                {
                    "min": float(data.min()),
                    "max": float(data.max()),
                    "mean": mean,
                    "std": std,
                    "norm": float(np.sqrt(np.square(data).sum())),
                }
            )
    return out


def _close(replayed: float, recorded: float, bound: float) -> bool:
    if math.isnan(recorded) or math.isnan(replayed):
        return math.isnan(recorded) and math.isnan(replayed)
    if math.isinf(recorded) or math.isinf(replayed):
        return replayed == recorded
    return abs(replayed - recorded) <= bound


def compare_stats(
    replayed: np.ndarray,
    stats: TensorStats,
    dtype: DType,
    tol: float,
    bit_exact: bool,
    magnitude: np.ndarray | None = None,
) -> Comparison:
    """Compare with recorded statistics: moments within tolerance, NaN/Inf counts equal, and
    (when ``bit_exact``: the op and its inputs are exact) zero count and fingerprint equal.

    ``magnitude`` (per element, as in :func:`compare_values`) bounds how far each moment may move
    when every element is off by its rounding: the mean by the mean magnitude, ``std`` by its
    RMS, ``min`` and ``max`` by its largest, the norm by its norm."""
    problems: list[str] = []
    max_abs = max_rel = 0.0
    x = _as_float(replayed).reshape(-1)
    terms = _moment_terms(magnitude)
    if stats.mean is not None and DTYPE_INFO[dtype].per_element == 1:
        variants = _variants(x)
        mean, std = stats.mean, stats.std if stats.std is not None else 0.0
        scale = (
            math.sqrt(mean * mean + std * std)
            if math.isfinite(mean) and math.isfinite(std)
            else float(np.sqrt(np.mean(np.square(x[np.isfinite(x)]))))
            if x.size
            else 0.0
        )
        scale = max(scale, 1e-300)
        for key in ("min", "max", "mean", "std", "norm"):
            want = getattr(stats, key)
            if want is None:
                continue
            ref = abs(want) if key in ("min", "max", "norm") and math.isfinite(want) else 0.0
            key_scale = max(scale, terms.get(key, 0.0))
            bound = tol * (ref + key_scale)
            if not any(_close(v[key], want, bound) for v in variants):
                problems.append(f"{key} {variants[0][key]:.6g} replayed, {want:.6g} recorded")
            best = min(abs(v[key] - want) for v in variants) if math.isfinite(want) else 0.0
            if math.isfinite(best):
                max_abs = max(max_abs, best)
                max_rel = max(max_rel, best / (ref + key_scale))
    if stats.nan is not None and stats.inf is not None:
        nan, inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
        if (nan, inf) != (stats.nan, stats.inf):
            problems.append(f"{nan} NaN / {inf} Inf replayed, {stats.nan} / {stats.inf} recorded")
    if bit_exact:
        if stats.zero is not None and int((x == 0).sum()) != stats.zero:
            problems.append(f"{int((x == 0).sum())} zeros replayed, {stats.zero} recorded")
        if stats.fingerprint is not None and tensor_fingerprint(replayed, dtype) != stats.fingerprint:
            problems.append("fingerprint differs (the op and its inputs are exact)")
    return Comparison(not problems, "stats", max_abs, max_rel, "; ".join(problems))


def _moment_terms(magnitude: np.ndarray | None) -> dict[str, float]:
    """The scale of each moment's rounding, from the per-element magnitudes of the terms."""
    if magnitude is None or magnitude.size == 0:
        return {}
    m = np.asarray(magnitude, dtype=np.float64).reshape(-1)
    rms = float(np.sqrt(np.mean(m * m)))
    top = float(m.max())
    return {"min": top, "max": top, "mean": float(m.mean()), "std": rms, "norm": rms * math.sqrt(m.size)}


def tensor_fingerprint(array: np.ndarray, dtype: DType) -> int:
    """The tracefmt fingerprint of ``array`` stored as ``dtype``."""
    info = DTYPE_INFO[dtype]
    data = np.ascontiguousarray(np.asarray(array).astype(info.logical, copy=False))
    return fingerprint(data.reshape(-1).view(np.uint8))


def has_stats(stats: TensorStats | None) -> bool:
    return stats is not None and (stats.mean is not None or stats.fingerprint is not None)


def cast_to(array: Any, dtype: DType) -> np.ndarray:
    """``array`` as the logical numpy dtype of ``dtype``."""
    return np.asarray(array).astype(DTYPE_INFO[dtype].logical, copy=False)
