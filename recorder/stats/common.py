"""What the CPU and device statistics paths share: dtype classes, the fingerprint, histograms,
and the assembly of a step's stats table from per-tensor results.

Definitions (the trace's, spec section 5.7; ``tracefmt.stats.tensor_stats`` is the reference): min,
max, mean, population std and L2 norm over the *finite* values, defined in float64 (16- and 32-bit
floats may accumulate in float32 within a relative 1e-6; no moments when there is no finite
value); counts of NaN, +-Inf and zeros; and the fingerprint of
:func:`tracefmt.dtypes.fingerprint`: the wrapping 64-bit sum of the C-contiguous bytes read as
little-endian words, the last word zero-padded.  Integer and bool tensors have moments of their
values; complex and packed float4 tensors get the fingerprint only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from tracefmt.model import StatFlags

__all__ = [
    "ALL_FLAGS",
    "COUNTS",
    "FINGERPRINT",
    "FLOAT_COLUMNS",
    "INT_COLUMNS",
    "MOMENTS",
    "SMALL_NUMEL",
    "Hist",
    "NativeRows",
    "bin_of",
    "fill_rows",
    "fingerprint",
    "histogram",
    "segment_ids",
]

#: Tensors with at most this many elements are batched (copied, then reduced together).
SMALL_NUMEL = 1 << 14

#: The flags of a row, as plain ints: they go into lists per tensor, and numpy converts plain
#: ints at C speed (an ``IntFlag`` member costs a Python call each).
MOMENTS = int(StatFlags.MOMENTS)
COUNTS = int(StatFlags.COUNTS)
FINGERPRINT = int(StatFlags.FINGERPRINT)
ALL_FLAGS = MOMENTS | COUNTS | FINGERPRINT

#: Per-tensor results before they become a stats row (:func:`fill_rows`): the float columns and
#: the integer columns, in this order (``fingerprint`` holds the unsigned value's int64 bits).
FLOAT_COLUMNS = ("min", "max", "sum", "norm", "std")
INT_COLUMNS = ("nonzero", "nan", "inf", "fingerprint")


class Hist(NamedTuple):
    """The histogram of graph tensor ``tensor``: range and counts, as 0-d/1-d tensors."""

    tensor: int
    lo: torch.Tensor
    hi: torch.Tensor
    counts: torch.Tensor


_FP_ONLY = {torch.complex64, torch.complex128, torch.complex32}
for _name in ("float4_e2m1fn_x2",):
    if hasattr(torch, _name):
        _FP_ONLY.add(getattr(torch, _name))
_NEEDS_UPCAST = {
    d
    for d in (
        getattr(torch, n, None)
        for n in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu")
    )
    if d is not None
}
_FLOATS = {torch.float16, torch.bfloat16, torch.float32, torch.float64}


def _word_sum(flat_bytes: torch.Tensor) -> torch.Tensor:
    """Wrapping int64 sum of 1-D uint8 bytes as little-endian 64-bit words, last one zero-padded."""
    nbytes = flat_bytes.numel()
    whole = nbytes - nbytes % 8
    if whole:
        head = flat_bytes[:whole]
        try:
            words = head.view(torch.int64)
        except RuntimeError:  # storage offset not 8-byte aligned
            words = head.clone().view(torch.int64)
        total = words.sum()
    else:
        total = torch.zeros((), dtype=torch.int64, device=flat_bytes.device)
    if whole != nbytes:
        shifts = torch.arange(0, 8 * (nbytes - whole), 8, device=flat_bytes.device)
        total = total + (flat_bytes[whole:].to(torch.int64) << shifts).sum()
    return total


def fingerprint(t: torch.Tensor) -> torch.Tensor:
    """The tracefmt fingerprint of ``t`` as a 0-d int64 tensor on ``t``'s device (no sync).

    Convert with ``int(x) % 2**64`` to get the unsigned value that
    :func:`tracefmt.dtypes.fingerprint` computes from the same bytes.
    """
    return _word_sum(t.detach().contiguous().reshape(-1).view(torch.uint8))


def segment_ids(lens: torch.Tensor, k: int) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(k, device=lens.device), lens)


def bin_of(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bins: int) -> torch.Tensor:
    """Equal-width bin of each finite ``x`` over ``[lo, hi]``, ``hi`` in the last bin."""
    width = hi - lo
    scaled = torch.where(width > 0, (x - lo) / torch.where(width > 0, width, 1.0) * bins, 0.0)
    return scaled.nan_to_num(0.0, 0.0, 0.0).floor().clamp(0, bins - 1).to(torch.int64)


def histogram(x: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """lo, hi and bin counts over the finite values of a 1-D tensor, without syncing."""
    xd = x.to(torch.float64)
    finite = torch.isfinite(xd)
    lo = torch.where(finite, xd, math.inf).amin()
    hi = torch.where(finite, xd, -math.inf).amax()
    slot = torch.where(finite, bin_of(xd, lo, hi, bins), bins)
    counts = torch.zeros(bins + 1, dtype=torch.int64, device=x.device).index_add_(
        0, slot, torch.ones_like(slot)
    )[:-1]
    return lo, hi, counts


class NativeRows(NamedTuple):
    """Rows the native engine computed (:mod:`recorder.engine`), in :func:`fill_rows`'s order."""

    tensors: np.ndarray  #: graph tensor indices
    numel: np.ndarray
    flags: np.ndarray
    floats: np.ndarray  #: ``FLOAT_COLUMNS``
    ints: np.ndarray  #: ``INT_COLUMNS``


def fill_rows(
    rows: np.ndarray,
    indices: Sequence[int] | np.ndarray,
    numels: Sequence[int] | np.ndarray,
    flags: Sequence[int] | np.ndarray,
    floats: np.ndarray,
    ints: np.ndarray,
) -> None:
    """Write per-tensor results into the stats table ``rows``.

    ``floats`` has the columns :data:`FLOAT_COLUMNS` (min, max, sum, norm, std over the finite
    values; std < 0: derive it from sum and norm), ``ints`` the columns :data:`INT_COLUMNS`.  A
    row with no finite value loses its ``StatFlags.MOMENTS`` flag.
    """
    if not len(indices):
        return
    idx = np.asarray(indices, dtype=np.int64)
    n = np.asarray(numels, dtype=np.float64)
    fl = np.asarray(flags, dtype=np.uint8)
    f = dict(
        zip(FLOAT_COLUMNS, np.asarray(floats, dtype=np.float64).reshape(len(idx), -1).T, strict=True)
    )
    i = dict(zip(INT_COLUMNS, np.asarray(ints, dtype=np.int64).reshape(len(idx), -1).T, strict=True))
    n_finite = n - i["nan"] - i["inf"]  # moments are over the finite values (spec 5.7)
    moments = ((fl & MOMENTS) != 0) & (n_finite > 0)
    fl = np.where(moments, fl, fl & ~np.uint8(MOMENTS)).astype(np.uint8)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        mean = f["sum"] / n_finite
        var = (f["norm"] ** 2 - f["sum"] * mean) / n_finite  # population variance
        std = np.where(n_finite > 1, np.sqrt(np.maximum(var, 0.0)), 0.0)
        std = np.where(f["std"] >= 0, f["std"], std)
    rows["min"][idx] = np.where(moments, f["min"], np.nan)
    rows["max"][idx] = np.where(moments, f["max"], np.nan)
    rows["mean"][idx] = np.where(moments, mean, np.nan)
    rows["std"][idx] = np.where(moments, std, np.nan)
    rows["norm"][idx] = np.where(moments, f["norm"], np.nan)
    counts = (fl & COUNTS) != 0
    rows["nan"][idx] = np.where(counts, i["nan"], 0)
    rows["inf"][idx] = np.where(counts, i["inf"], 0)
    rows["zero"][idx] = np.where(counts, n.astype(np.int64) - i["nonzero"], 0)
    rows["fingerprint"][idx] = i["fingerprint"].view(np.uint64)
    rows["flags"][idx] = fl
