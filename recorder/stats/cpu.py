"""Per-tensor statistics and fingerprints of a step, computed on the tensor's own device.

Why this shape: statistics are the expensive part of recording (every op output is read once more),
so each pass over the data must count.  Measured inside the FACTS nanoGPT step on 2 cores (440
float32 tensors above 16k elements, ~490 MB, per step): int64 word sum (fingerprint) 18 ms,
``aminmax`` 10, zero count 25 (``amin`` of the integer view, then ``count_nonzero``), and for sum
and norm 42 + 61 ms accumulated in float64 against 7 + 12 ms in float32 (pairwise sum; norms of
1024-element blocks combined in float64), which spec section 5.7 allows for 16- and 32-bit floats
(relative error within 1e-6); ``torch.std`` costs more than all of them together.

float32 and bfloat16 CPU tensors go through the one-pass C kernel of :mod:`recorder.stats.native`
(every field in one read).  Other CPU tensors, and all of them where the kernel could not be
built, take the torch path, which may look at values at no cost (no device to sync), so:

* std is derived from sum and norm, unless the mean dominates the spread (the difference would
  cancel), where it is computed in two passes;
* NaN and Inf are counted only when min or max is not finite (then the moments are taken again
  over the finite values, as the spec defines them); zeros only when ``min <= 0 <= max``, on the
  integer view of the bits (a ``-0.0``, found by ``amin`` of that view, sends the count back to
  the float kernel);
* results become Python numbers at once: nothing is stacked at the end of the step.

Small tensors (most of a step's tensors, little of its bytes) cost per call, not per byte: float32
and bfloat16 ones go through the one-pass kernel at once; others (and, with histograms, all of
them) are copied when seen and reduced together on the writer thread with numpy, by segment
(:mod:`recorder.stats.smallcpu`).  Histograms (``hist_bins``) of float32 and bfloat16 tensors
come from the kernel's second pass (:func:`~recorder.stats.native.fused_histogram`).  Tensors on
other devices go through :mod:`recorder.stats.device`, which never syncs.  A tensor that shares
bytes, shape and layout with one already measured (``detach``, ``_unsafe_view``) is an *alias*:
its row is copied, not computed.  Definitions: :mod:`recorder.stats.common`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from recorder.convert import DeviceEvent
from recorder.stats.common import (
    _FLOATS,
    _FP_ONLY,
    _NEEDS_UPCAST,
    ALL_FLAGS,
    FINGERPRINT,
    FLOAT_COLUMNS,
    INT_COLUMNS,
    SMALL_NUMEL,
    Hist,
    NativeRows,
    fill_rows,
    fingerprint,
    histogram,
)
from recorder.stats.device import DeviceStats, Part
from recorder.stats.native import FusedStats, fused_histogram, fused_stats
from recorder.stats.smallcpu import signed, small_rows
from tracefmt.records import empty_stats

__all__ = ["SMALL_NUMEL", "PendingStats", "StatsCollector", "fingerprint"]

#: Integer dtype of the same width, to count zeros on the bits.
_INT_VIEW = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}
#: Dtypes the one-pass kernel reads (recorder.stats.native).
_NATIVE_DTYPES = frozenset({torch.float32, torch.bfloat16})
_INT_MIN = {torch.int16: -(1 << 15), torch.int32: -(1 << 31), torch.int64: -(1 << 63)}
#: Derive std from the sums only while the variance is at least this share of the mean square
#: (below it, the sums' relative error of up to 1e-6 would show in std).
_CANCEL = 0.1
#: Elements per block of the float32 norm (see ``_sum_and_norm``).
_BLOCK = 1024


class CpuRow(NamedTuple):
    """The results for graph tensor ``tensor`` from the CPU path: ``FLOAT_COLUMNS`` and
    ``INT_COLUMNS`` by name (``fingerprint``: the int64 bits of the unsigned value)."""

    tensor: int
    numel: int
    flags: int
    min: float
    max: float
    sum: float
    norm: float
    std: float  #: < 0: derive it from sum and norm
    nonzero: int
    nan: int
    inf: int
    fingerprint: int


@dataclass
class PendingStats:
    """A step's statistics on their way to the trace; :meth:`resolve` (on the writer thread)
    finishes the small tensors, waits for device results and builds the table.

    It holds only copies of small tensors and small result tensors, never the step's tensors.
    """

    n_tensors: int
    cpu_rows: list[CpuRow] = field(default_factory=list)
    cpu_small: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    parts: list[Part] = field(default_factory=list)
    hists: list[Hist] = field(default_factory=list)
    #: histograms the one-pass kernels computed: tensor -> (lo, hi, counts)
    host_hists: dict[int, tuple[float, float, np.ndarray]] = field(default_factory=dict)
    events: list[DeviceEvent] = field(default_factory=list)
    aliases: list[tuple[int, int]] = field(default_factory=list)
    hist_bins: int = 0
    native_rows: NativeRows | None = None

    def resolve(self) -> tuple[np.ndarray, dict[int, tuple[float, float, np.ndarray]]]:
        """Return the ``STATS_DTYPE`` table (one row per tensor) and the histograms."""
        for event in self.events:
            event.synchronize()
        rows = empty_stats(self.n_tensors)
        hists: dict[int, tuple[float, float, np.ndarray]] = {}
        if self.cpu_rows:
            cols = dict(zip(CpuRow._fields, zip(*self.cpu_rows, strict=True), strict=True))
            floats = np.array([cols[c] for c in FLOAT_COLUMNS], dtype=np.float64).T
            ints = np.array([cols[c] for c in INT_COLUMNS], dtype=np.int64).T
            fill_rows(rows, cols["tensor"], cols["numel"], cols["flags"], floats, ints)
        if self.cpu_small:
            small_hists = small_rows(rows, self.cpu_small, self.hist_bins)
            hists.update(small_hists)
        if self.native_rows is not None:
            fill_rows(rows, *self.native_rows)
        for part in self.parts:
            floats, ints = part.floats.numpy(), part.ints.numpy()
            fill_rows(rows, part.indices, part.numels, part.flags, floats, ints)
        for h in self.hists:
            hists[h.tensor] = (float(h.lo), float(h.hi), h.counts.cpu().numpy().astype(np.uint64))
        hists.update(self.host_hists)
        # A tensor without a finite value has no range to bin (lo and hi would be +-inf, which
        # spec section 5.10 refuses): no histogram, as it has no moments.
        hists = {i: h for i, h in hists.items() if math.isfinite(h[0]) and math.isfinite(h[1])}
        for index, source in self.aliases:
            rows[index] = rows[source]
            if source in hists:
                hists[index] = hists[source]
        return rows, hists


class StatsCollector:
    """Gathers the statistics of one step's tensors; one instance per captured step."""

    def __init__(
        self, *, hist_bins: int = 0, small_numel: int = SMALL_NUMEL, native: bool = True
    ) -> None:
        self._hist_bins = hist_bins
        self._small_numel = small_numel
        self._native = native  # the one-pass kernel (recorder.stats.native) where it is available
        self._pending = PendingStats(0, hist_bins=hist_bins)
        self._device: DeviceStats | None = None

    def alias(self, index: int, source: int) -> None:
        """Graph tensor ``index`` holds exactly the bytes of ``source`` (already added): copy its
        row instead of reading the data again."""
        self._pending.aliases.append((index, source))

    def add(self, index: int, t: torch.Tensor) -> None:
        """Compute (or queue) the statistics of graph tensor ``index``, whose value is ``t`` now.

        Call it before anything can overwrite ``t``: small tensors are copied here.
        """
        if t.layout is not torch.strided or t.device.type == "meta":
            return
        if t.device.type != "cpu":
            if self._device is None:
                self._device = DeviceStats(hist_bins=self._hist_bins, small_numel=self._small_numel)
            self._device.add(index, t)
            return
        n = t.numel()
        if n <= self._small_numel:
            if self._native and n and t.dtype in _NATIVE_DTYPES:
                # The kernel costs about what the copy would, and leaves no numpy work for the
                # writer thread (which competes with training for the cores and the GIL); its
                # histogram bins the same elements in a second pass of the kernel.
                x = t.detach()  # so nothing below builds autograd nodes (or takes their numbers)
                if not x.is_contiguous():
                    x = x.contiguous()
                fused = fused_stats(x)
                if fused is not None and self._add_fused(index, x, fused):
                    return
            self._pending.cpu_small.append(
                (index, t.detach().clone(memory_format=torch.contiguous_format))
            )
            return
        self._add_cpu(index, t.detach())

    def _add_cpu(self, index: int, x: torch.Tensor) -> None:
        if not x.is_contiguous():
            x = x.contiguous()
        x = x.reshape(-1)
        fused = fused_stats(x) if self._native else None
        if fused is not None and self._add_fused(index, x, fused):
            return
        n = x.numel()
        fp = int(fingerprint(x))
        dtype = x.dtype
        if dtype in _FP_ONLY:
            self._pending.cpu_rows.append(
                CpuRow(index, n, FINGERPRINT, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0, 0, fp)
            )
            return
        if dtype in _FLOATS:
            v = x
        elif dtype in _NEEDS_UPCAST:
            v = x.float()
        else:  # integers and bool: moments of their values
            v = x.to(torch.float64)
        lo_t, hi_t = torch.aminmax(v)
        lo, hi = lo_t.item(), hi_t.item()
        nan = inf = 0
        nonzero = n if lo > 0 or hi < 0 else _count_nonzero(v if dtype in _NEEDS_UPCAST else x)
        good = v
        if not (math.isfinite(lo) and math.isfinite(hi)):  # moments over the finite values
            nan = int((v != v).sum())
            inf = int((v.abs() == math.inf).sum())
            good = v[torch.isfinite(v)]
            if good.numel():
                lo_t, hi_t = torch.aminmax(good)
                lo, hi = lo_t.item(), hi_t.item()
        m = good.numel()
        total, norm = _sum_and_norm(good)
        std = -1.0
        q = norm * norm
        if m > 1 and q > 0 and q - total * total / m <= _CANCEL * q:
            # mean >> spread: the sums cancel; two passes instead
            std = _centred_norm(good, total / m) / math.sqrt(m)
        row = CpuRow(index, n, ALL_FLAGS, lo, hi, total, norm, std, nonzero, nan, inf, fp)
        self._pending.cpu_rows.append(row)
        if self._hist_bins:
            self._pending.hists.append(Hist(index, *histogram(v, self._hist_bins)))

    def _add_fused(self, index: int, x: torch.Tensor, r: FusedStats) -> bool:
        """The row of a contiguous float32/bfloat16 tensor ``x`` (any shape: only the rare cases
        below read it again) from the one-pass kernel's results; False (and nothing added) for
        the rare tensor it cannot finish alone: sums that overflowed float (values above about
        1e19), no finite element, or non-finite elements together with what needs torch (a -0.0
        that may be the min or max, a mean far above the spread)."""
        n = x.numel()
        m = n - r.nan - r.inf
        if m == 0 or not (math.isfinite(r.sum) and math.isfinite(r.sumsq)):
            return False
        lo, hi = r.min, r.max
        if r.negzero and (lo == 0 or hi == 0):  # the kernel does not tell -0.0 from 0.0
            if m < n:
                return False
            lo_t, hi_t = torch.aminmax(x)
            lo, hi = lo_t.item(), hi_t.item()
        std = -1.0
        if m > 1 and r.sumsq > 0 and r.sumsq - r.sum * r.sum / m <= _CANCEL * r.sumsq:
            if m < n:
                return False
            std = _centred_norm(x.reshape(-1), r.sum / m) / math.sqrt(m)  # two passes
        norm, fp = math.sqrt(r.sumsq), signed(r.fingerprint)
        row = CpuRow(index, n, ALL_FLAGS, lo, hi, r.sum, norm, std, r.nonzero, r.nan, r.inf, fp)
        self._pending.cpu_rows.append(row)
        if self._hist_bins:
            # lo and hi are the finite min and max: the bins need no pass of their own to find them
            counts = fused_histogram(x, lo, hi, self._hist_bins, finite=m == n)
            if counts is not None:
                self._pending.host_hists[index] = (lo, hi, counts)
            else:
                self._pending.hists.append(Hist(index, *histogram(x.reshape(-1), self._hist_bins)))
        return True

    def finish(self, n_tensors: int) -> PendingStats:
        """Launch what is batched (device reductions and copies to the host) and return the
        pending result; the collector is empty afterwards."""
        pending, self._pending = self._pending, PendingStats(0, hist_bins=self._hist_bins)
        pending.n_tensors = n_tensors
        if self._device is not None:
            parts, hists, events = self._device.finish()
            pending.parts.extend(parts)
            pending.hists.extend(hists)
            pending.events.extend(events)
            self._device = None
        return pending


def _sum_and_norm(x: torch.Tensor) -> tuple[float, float]:
    """Sum and L2 norm of 1-D ``x`` as float64 numbers, without a float64 copy of ``x``.

    16- and 32-bit floats: the sum is torch's pairwise (cascade) float32 sum, the norm combines
    in float64 the float32 norms of blocks of ``_BLOCK`` elements.  Both are 2-4x faster than
    float64 accumulation (which read every tensor twice more, in the profile of the GPT step) and
    stay within 1e-6 of it, relative to the sum of magnitudes and to the norm: the accuracy spec
    section 5.7 allows (``tests/recorder/test_stats.py`` checks it).  float64 (and integers,
    converted to float64 before) accumulate in float64, and so does a tensor whose float32 sums
    overflow.
    """
    if x.dtype == torch.float64:
        return x.sum().item(), torch.linalg.vector_norm(x).item()
    total = x.sum(dtype=torch.float32).item()
    n = x.numel()
    whole = n - n % _BLOCK
    squares = (
        torch.linalg.vector_norm(x[:whole].view(-1, _BLOCK), dim=1, dtype=torch.float32)
        .double()
        .square()
        .sum()
        .item()
    )
    if whole != n:
        squares += x[whole:].double().square().sum().item()
    if not (math.isfinite(total) and math.isfinite(squares)):  # float overflowed: |x| > ~1e19
        return _sum_and_norm(x.double())
    return total, math.sqrt(squares)


def _centred_norm(x: torch.Tensor, mean: float) -> float:
    """L2 norm of ``x - mean`` (16-bit floats are widened first: the difference needs float32)."""
    wide = x if x.dtype in (torch.float32, torch.float64) else x.float()
    return _sum_and_norm(wide - mean)[1]


def _count_nonzero(x: torch.Tensor) -> int:
    """Elements of ``x`` that are not zero, counting on the integer view of floats when no
    ``-0.0`` is there (about 2.5x faster than the float kernel)."""
    view = _INT_VIEW.get(x.dtype)
    if view is None:
        return int(torch.count_nonzero(x))
    bits = x.view(view)
    if int(bits.amin()) == _INT_MIN[view]:  # a -0.0 (the smallest signed pattern) is present
        return int(torch.count_nonzero(x))
    return int(torch.count_nonzero(bits))
