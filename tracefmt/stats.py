"""Reference statistics in numpy: what the recorder computes on device, for tests, demos and tools.

:func:`tensor_stats` fills one ``STATS_DTYPE`` row from an array the same way the recorder does
(float64 accumulation; NaN and Inf excluded from min/max/mean/std/norm; fingerprint over the raw
bytes), so a trace written from numpy data and one written from torch agree.
"""

from __future__ import annotations

import numpy as np

from tracefmt import _layout as L
from tracefmt.dtypes import DTYPE_INFO, DType, fingerprint


def tensor_stats(values: np.ndarray, dtype: DType) -> np.ndarray:
    """One ``STATS_DTYPE`` row (a 0-d structured array) for ``values`` of logical ``dtype``."""
    row = np.zeros((), dtype=L.STATS_DTYPE)
    info = DTYPE_INFO[dtype]
    flat = np.ascontiguousarray(values).reshape(-1)
    row["fingerprint"] = fingerprint(flat.view(np.uint8))
    flags = L.STAT_FINGERPRINT
    if dtype not in (DType.FLOAT4_E2M1FN_X2,):
        x = flat.astype(np.complex128 if info.per_element == 2 else np.float64)
        x = np.abs(x) if info.per_element == 2 else x
        finite = np.isfinite(x)
        row["nan"] = int(np.isnan(x).sum())
        row["inf"] = int(np.isinf(x).sum())
        row["zero"] = int((x == 0).sum())
        flags |= L.STAT_COUNTS
        good = x[finite].real
        if good.size:
            row["min"], row["max"] = good.min(), good.max()
            row["mean"], row["std"] = good.mean(), good.std()
            row["norm"] = float(np.sqrt(np.square(good).sum()))
            flags |= L.STAT_MOMENTS
        else:
            for name in ("min", "max", "mean", "std", "norm"):
                row[name] = np.nan
    row["flags"] = flags
    return row


def histogram(values: np.ndarray, bins: int) -> tuple[float, float, np.ndarray]:
    """``(lo, hi, counts)`` over the finite values, equal-width bins between their min and max."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return 0.0, 0.0, np.zeros(bins, dtype=np.uint64)
    lo, hi = float(x.min()), float(x.max())
    counts, _ = np.histogram(x, bins=bins, range=(lo, hi if hi > lo else lo + 1.0))
    return lo, hi, counts.astype(np.uint64)
