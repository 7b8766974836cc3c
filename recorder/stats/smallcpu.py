"""The small CPU tensors of a step (at most ``SMALL_NUMEL`` elements) that
:class:`~recorder.stats.cpu.StatsCollector` copies rather than reduces at once: most of a step's
tensors, little of its bytes, so they cost per call, not per byte.  They are reduced together on
the writer thread, in float64 with numpy segment reductions (``reduceat``); their histograms come
from the one-pass kernel where it reads the copy (float32, bfloat16), from numpy otherwise.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from recorder.convert import to_numpy
from recorder.stats.common import _FP_ONLY, ALL_FLAGS, FINGERPRINT, fill_rows
from recorder.stats.native import fused_histogram
from tracefmt.dtypes import fingerprint as bytes_fingerprint

__all__ = ["segment_histograms", "signed", "small_rows"]


def signed(fp: int) -> int:
    """The int64 bits of an unsigned 64-bit fingerprint (what a stats row's column holds)."""
    return fp - (1 << 64) if fp >= 1 << 63 else fp


def small_rows(
    rows: np.ndarray, items: list[tuple[int, torch.Tensor]], hist_bins: int
) -> dict[int, tuple[float, float, np.ndarray]]:
    """Statistics of small CPU tensors, all at once with numpy segment reductions."""
    indices = [i for i, _ in items]
    numels = [c.numel() for _, c in items]
    fps = [signed(bytes_fingerprint(to_numpy(c))) for _, c in items]
    numeric = [pos for pos, (_, c) in enumerate(items) if c.dtype not in _FP_ONLY and c.numel()]
    k = len(items)
    floats = np.zeros((k, 5))
    ints = np.zeros((k, 4), dtype=np.int64)
    ints[:, 3] = fps
    flags = np.full(k, FINGERPRINT, dtype=np.uint8)
    hists: dict[int, tuple[float, float, np.ndarray]] = {}
    if numeric:
        vals = np.concatenate([items[p][1].reshape(-1).to(torch.float64).numpy() for p in numeric])
        lens = np.array([numels[p] for p in numeric], dtype=np.int64)
        starts = np.cumsum(lens) - lens
        seg = np.repeat(np.arange(len(numeric)), lens)
        is_nan = np.isnan(vals)
        is_inf = np.isinf(vals)
        finite = ~(is_nan | is_inf)
        good = np.where(finite, vals, 0.0)  # moments over the finite values
        n_finite = np.maximum(np.add.reduceat(finite.astype(np.int64), starts), 1)
        with np.errstate(invalid="ignore", over="ignore"):
            lo = np.minimum.reduceat(np.where(finite, vals, np.inf), starts)
            hi = np.maximum.reduceat(np.where(finite, vals, -np.inf), starts)
            total = np.add.reduceat(good, starts)
            norm = np.sqrt(np.add.reduceat(good * good, starts))
            centred = np.where(finite, good - (total / n_finite)[seg], 0.0)
            std = np.sqrt(np.add.reduceat(centred * centred, starts) / n_finite)  # two-pass
        pos = np.asarray(numeric)
        floats[pos] = np.stack([lo, hi, total, norm, std], axis=1)
        ints[pos, 0] = np.add.reduceat((vals != 0).astype(np.int64), starts)
        ints[pos, 1] = np.add.reduceat(is_nan.astype(np.int64), starts)
        ints[pos, 2] = np.add.reduceat(is_inf.astype(np.int64), starts)
        flags[pos] = ALL_FLAGS
        if hist_bins:
            hists = _small_histograms(items, numeric, (lo, hi), vals, finite, hist_bins)
    fill_rows(rows, indices, numels, flags, floats, ints)
    return hists


def _small_histograms(
    items: list[tuple[int, torch.Tensor]],
    numeric: list[int],
    bounds: tuple[np.ndarray, np.ndarray],
    vals: np.ndarray,
    finite: np.ndarray,
    bins: int,
) -> dict[int, tuple[float, float, np.ndarray]]:
    """Histograms of the copies ``items[numeric]`` (their float64 values one after the other in
    ``vals``, their finite min and max in ``bounds``): the kernel's for float32 and bfloat16
    copies (some 30x faster than numpy's segment reduction), numpy's for the others."""
    out: dict[int, tuple[float, float, np.ndarray]] = {}
    rest = []
    for j, p in enumerate(numeric):
        index, copy = items[p]
        lo, hi = float(bounds[0][j]), float(bounds[1][j])
        counts = fused_histogram(copy, lo, hi, bins) if math.isfinite(lo) else None
        if counts is None:
            rest.append(j)
        else:
            out[index] = (lo, hi, counts)
    if rest:
        lens = np.array([items[numeric[j]][1].numel() for j in rest], dtype=np.int64)
        ends = np.cumsum(np.array([items[p][1].numel() for p in numeric], dtype=np.int64))
        take = np.concatenate([np.arange(ends[j] - n, ends[j]) for j, n in zip(rest, lens, strict=True)])
        indices = [items[numeric[j]][0] for j in rest]
        out.update(
            segment_histograms(indices, vals[take], lens, np.cumsum(lens) - lens, finite[take], bins)
        )
    return out


def segment_histograms(
    indices: list[int],
    vals: np.ndarray,
    lens: np.ndarray,
    starts: np.ndarray,
    finite: np.ndarray,
    bins: int,
) -> dict[int, tuple[float, float, np.ndarray]]:
    """Equal-width histograms over each segment's finite values (``hi`` in the last bin)."""
    k = len(indices)
    seg = np.repeat(np.arange(k), lens)
    lo = np.minimum.reduceat(np.where(finite, vals, np.inf), starts)
    hi = np.maximum.reduceat(np.where(finite, vals, -np.inf), starts)
    width = (hi - lo)[seg]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        scaled = np.where(width > 0, (vals - lo[seg]) / np.where(width > 0, width, 1.0) * bins, 0.0)
    b = np.clip(np.floor(np.nan_to_num(scaled, nan=0.0, posinf=0.0, neginf=0.0)), 0, bins - 1)
    slot = seg * bins + b.astype(np.int64)
    counts = np.bincount(slot[finite], minlength=k * bins).reshape(k, bins).astype(np.uint64)
    return {i: (float(lo[j]), float(hi[j]), counts[j]) for j, i in enumerate(indices)}
