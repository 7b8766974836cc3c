"""Per-tensor statistics and fingerprints, computed on the tensor's own device without syncing.

Why this shape: statistics are the expensive part of recording (every op output is read once more).
So each tensor is read by a few fused-ish reductions whose 0-d results stay on the device; the
results of a whole step are stacked and copied to the host once, at the end of the step.  Small
tensors (most of a step's tensors, little of its bytes) are copied into a batch and reduced together
by segment, because per-call overhead, not memory bandwidth, is their cost.

Definitions (the trace's, see ``tracefmt._layout.STATS_DTYPE``): min and max over all elements
(NaN when any element is NaN); mean; std with Bessel's correction (0 for one element); L2 norm;
counts of NaN, +-Inf and zeros; and the fingerprint of :func:`tracefmt.dtypes.fingerprint`: the
wrapping 64-bit sum of the C-contiguous bytes read as little-endian words, the last word zero-padded.
Integer and bool tensors have moments of their values; complex and packed float4 tensors get the
fingerprint only.  On CPU, NaN and Inf are counted only when min or max is not finite (one pass
fewer); on other devices they are always counted, since looking would need a sync.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from recorder._convert import CudaEvent
from tracefmt._layout import STAT_COUNTS, STAT_FINGERPRINT, STAT_MOMENTS
from tracefmt.records import empty_stats

__all__ = ["PendingStats", "StatsCollector", "fingerprint"]

#: Tensors with at most this many elements are batched (copied, then reduced together).
SMALL_NUMEL = 1 << 14

_FP_ONLY = {torch.complex64, torch.complex128, torch.complex32}
for _name in ("float4_e2m1fn_x2",):
    if hasattr(torch, _name):
        _FP_ONLY.add(getattr(torch, _name))
_NEEDS_UPCAST = {d for d in (getattr(torch, n, None) for n in (
    "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu"))
    if d is not None}
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


@dataclass
class _DeviceBatch:
    """What one device contributes to a step's statistics."""

    zero_f: torch.Tensor
    zero_i: torch.Tensor
    derive: torch.Tensor  # -1.0: "derive std from sum and norm"
    indices: list[int] = field(default_factory=list)
    numels: list[int] = field(default_factory=list)
    flags: list[int] = field(default_factory=list)
    floats: list[torch.Tensor] = field(default_factory=list)  # min, max, sum, norm, std
    ints: list[torch.Tensor] = field(default_factory=list)  # nonzero, nan, inf, fingerprint
    small: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    hists: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)


@dataclass
class PendingStats:
    """A step's statistics on their way to the host; :meth:`resolve` waits and builds the table.

    It holds only small result tensors (and, on CUDA, an event), never the step's tensors.
    """

    n_tensors: int
    parts: list[tuple[list[int], list[int], list[int], torch.Tensor, torch.Tensor]]
    hists: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]
    events: list[Any]

    def resolve(self) -> tuple[np.ndarray, dict[int, tuple[float, float, np.ndarray]]]:
        """Return the ``STATS_DTYPE`` table (one row per tensor) and the histograms."""
        for event in self.events:
            event.synchronize()
        rows = empty_stats(self.n_tensors)
        for indices, numels, flags, floats_t, ints_t in self.parts:
            if not indices:
                continue
            idx = np.asarray(indices, dtype=np.int64)
            n = np.asarray(numels, dtype=np.float64)
            fl = np.asarray(flags, dtype=np.uint8)
            f = floats_t.numpy().reshape(-1, 5)
            i = ints_t.numpy().reshape(-1, 4)
            moments = (fl & STAT_MOMENTS) != 0
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = f[:, 2] / n
                var = (f[:, 3] ** 2 - f[:, 2] * mean) / np.maximum(n - 1, 1)
                std = np.where(n > 1, np.sqrt(np.maximum(var, 0.0)), 0.0)
                std = np.where(np.isfinite(f[:, 2]) & np.isfinite(f[:, 3]), std, np.nan)
                std = np.where(f[:, 4] >= 0, f[:, 4], std)
            has_nan = i[:, 1] > 0
            rows["min"][idx] = np.where(moments, np.where(has_nan, np.nan, f[:, 0]), np.nan)
            rows["max"][idx] = np.where(moments, np.where(has_nan, np.nan, f[:, 1]), np.nan)
            rows["mean"][idx] = np.where(moments, mean, np.nan)
            rows["std"][idx] = np.where(moments, std, np.nan)
            rows["norm"][idx] = np.where(moments, f[:, 3], np.nan)
            counts = (fl & STAT_COUNTS) != 0
            rows["nan"][idx] = np.where(counts, i[:, 1], 0)
            rows["inf"][idx] = np.where(counts, i[:, 2], 0)
            rows["zero"][idx] = np.where(counts, n.astype(np.int64) - i[:, 0], 0)
            rows["fingerprint"][idx] = i[:, 3].astype(np.int64).view(np.uint64)
            rows["flags"][idx] = fl
        hists = {}
        for index, lo, hi, counts_t in self.hists:
            hists[index] = (float(lo), float(hi), counts_t.cpu().numpy().astype(np.uint64))
        return rows, hists


class StatsCollector:
    """Gathers the statistics of one step's tensors; one instance per captured step."""

    def __init__(self, *, hist_bins: int = 0, small_numel: int = SMALL_NUMEL) -> None:
        self._hist_bins = hist_bins
        self._small_numel = small_numel
        self._devices: dict[torch.device, _DeviceBatch] = {}

    def _batch(self, device: torch.device) -> _DeviceBatch:
        batch = self._devices.get(device)
        if batch is None:
            batch = _DeviceBatch(torch.zeros((), dtype=torch.float64, device=device),
                                 torch.zeros((), dtype=torch.int64, device=device),
                                 torch.full((), -1.0, dtype=torch.float64, device=device))
            self._devices[device] = batch
        return batch

    def add(self, index: int, t: torch.Tensor) -> None:
        """Compute (or queue) the statistics of graph tensor ``index``, whose value is ``t`` now.

        Call it before anything can overwrite ``t``: small tensors are copied here.
        """
        if t.layout is not torch.strided or t.device.type == "meta":
            return
        batch = self._batch(t.device)
        n = t.numel()
        if n <= self._small_numel:
            batch.small.append((index, t.detach().clone(memory_format=torch.contiguous_format)))
            return
        x = t.detach()
        batch.indices.append(index)
        batch.numels.append(n)
        dtype = x.dtype
        fp = fingerprint(x)
        if dtype in _FP_ONLY:
            batch.flags.append(STAT_FINGERPRINT)
            z = batch.zero_f
            batch.floats.extend((z, z, z, z, z))
            batch.ints.extend((batch.zero_i, batch.zero_i, batch.zero_i, fp))
            return
        if dtype not in _FLOATS:
            x = x.to(torch.float64) if dtype not in _NEEDS_UPCAST else x.float()
        lo, hi = torch.aminmax(x)
        total = x.sum(dtype=torch.float64)
        norm = torch.linalg.vector_norm(x, dtype=torch.float64)
        nonzero = torch.count_nonzero(x)
        nan = inf = batch.zero_i
        std = batch.derive
        if t.device.type == "cpu":
            if dtype.is_floating_point and not (math.isfinite(lo.item())
                                                and math.isfinite(hi.item())):
                nan = (x != x).sum()
                inf = (x.abs() == math.inf).sum()
            s, q = total.item(), norm.item() ** 2
            if q > 0 and q - s * s / n <= 1e-8 * q:  # mean >> spread: the sums cancel
                std = torch.std(x.to(torch.float64))
        else:  # looking at the values would sync; count and compute std exactly, always
            if dtype.is_floating_point:
                nan = (x != x).sum()
                inf = (x.abs() == math.inf).sum()
            std = torch.std(x.to(torch.float64))
        batch.flags.append(STAT_MOMENTS | STAT_COUNTS | STAT_FINGERPRINT)
        batch.floats.extend((lo, hi, total, norm, std))
        batch.ints.extend((nonzero, nan, inf, fp))
        if self._hist_bins:
            batch.hists.append((index, *_histogram(x.reshape(-1), self._hist_bins)))

    def finish(self, n_tensors: int) -> PendingStats:
        """Launch the batched reductions, start the copies to the host and return the pending
        result; the collector is empty afterwards."""
        parts = []
        hists: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        events = []
        for device, batch in self._devices.items():
            if batch.small:
                self._reduce_small(batch)
            if not batch.indices:
                continue
            floats_t = torch.stack(batch.floats).to(torch.float64)
            ints_t = torch.stack(batch.ints)
            hist_items = batch.hists
            if device.type == "cuda":
                floats_t = _to_host(floats_t)
                ints_t = _to_host(ints_t)
                hist_items = [(i, _to_host(lo), _to_host(hi), _to_host(c))
                              for i, lo, hi, c in hist_items]
                event = CudaEvent()
                event.record()
                events.append(event)
            elif device.type != "cpu":
                floats_t, ints_t = floats_t.cpu(), ints_t.cpu()
            parts.append((batch.indices, batch.numels, batch.flags, floats_t, ints_t))
            hists.extend(hist_items)
        self._devices = {}
        return PendingStats(n_tensors, parts, hists, events)

    def _reduce_small(self, batch: _DeviceBatch) -> None:
        """Reduce the batched small tensors of one device by segment: a fixed number of ops."""
        device = batch.zero_f.device
        items = batch.small
        batch.small = []
        numeric = [(i, c) for i, c in items if c.dtype not in _FP_ONLY]
        # Fingerprints of all of them, from their bytes.
        raw = [c.reshape(-1).view(torch.uint8) for _, c in items]
        byte_lens = torch.tensor([r.numel() for r in raw], dtype=torch.int64, device=device)
        k = len(items)
        fps = _segment_word_sums(torch.cat(raw), byte_lens, k)
        moments: dict[int, tuple[torch.Tensor, ...]] = {}
        if numeric:
            groups: dict[torch.dtype, list[torch.Tensor]] = {}
            for _, c in numeric:
                groups.setdefault(c.dtype, []).append(c.reshape(-1))
            order = [i for d in groups for i, c in numeric if c.dtype == d]
            parts = []
            for d, ts in groups.items():
                joined = torch.cat(ts) if d not in _NEEDS_UPCAST else torch.cat(
                    [x.float() for x in ts])
                parts.append(joined.to(torch.float64))
            vals = torch.cat(parts)
            numel_of = {i: c.numel() for i, c in numeric}
            lens = torch.tensor([numel_of[i] for i in order], dtype=torch.int64, device=device)
            stats = _segment_moments(vals, lens, len(order), self._hist_bins)
            for pos, i in enumerate(order):
                moments[i] = tuple(s[pos] for s in stats[:8])
            if self._hist_bins:
                lo, hi, counts = stats[8:]
                for pos, i in enumerate(order):
                    batch.hists.append((i, lo[pos], hi[pos], counts[pos]))
        z_f, z_i = batch.zero_f, batch.zero_i
        for pos, (index, c) in enumerate(items):
            batch.indices.append(index)
            batch.numels.append(c.numel())
            got = moments.get(index)
            if got is None:
                batch.flags.append(STAT_FINGERPRINT)
                batch.floats.extend((z_f, z_f, z_f, z_f, z_f))
                batch.ints.extend((z_i, z_i, z_i, fps[pos]))
                continue
            lo, hi, total, norm, std, nonzero, nan, inf = got
            flags = STAT_COUNTS | STAT_FINGERPRINT | (STAT_MOMENTS if c.numel() else 0)
            batch.flags.append(flags)
            batch.floats.extend((lo, hi, total, norm, std))
            batch.ints.extend((nonzero, nan, inf, fps[pos]))


def _segment_ids(lens: torch.Tensor, k: int) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(k, device=lens.device), lens)


def _segment_word_sums(flat_bytes: torch.Tensor, byte_lens: torch.Tensor, k: int) -> torch.Tensor:
    """Fingerprints of ``k`` byte strings laid end to end (each padded to whole words)."""
    seg = _segment_ids(byte_lens, k)
    starts = torch.cumsum(byte_lens, 0) - byte_lens
    pos = torch.arange(flat_bytes.numel(), device=flat_bytes.device) - starts[seg]
    words = flat_bytes.to(torch.int64) << ((pos & 7) * 8)
    return torch.zeros(k, dtype=torch.int64, device=flat_bytes.device).index_add_(0, seg, words)


def _segment_moments(vals: torch.Tensor, lens: torch.Tensor, k: int,
                     hist_bins: int) -> tuple[torch.Tensor, ...]:
    """min, max, sum, norm, std, nonzero, nan, inf (and with ``hist_bins`` lo, hi, counts) of
    ``k`` float64 segments laid end to end.  std uses sums shifted by each segment's first value,
    so a large mean does not cancel a small spread."""
    seg = _segment_ids(lens, k)
    dev = vals.device
    lo = torch.full((k,), math.inf, dtype=torch.float64, device=dev).scatter_reduce_(
        0, seg, vals, "amin")
    hi = torch.full((k,), -math.inf, dtype=torch.float64, device=dev).scatter_reduce_(
        0, seg, vals, "amax")
    zeros_f = torch.zeros(k, dtype=torch.float64, device=dev)
    zeros_i = torch.zeros(k, dtype=torch.int64, device=dev)
    total = zeros_f.index_add(0, seg, vals)
    norm = zeros_f.index_add(0, seg, vals * vals).sqrt()
    starts = torch.cumsum(lens, 0) - lens
    shifted = vals - vals[starts.clamp(max=vals.numel() - 1)][seg] if vals.numel() else vals
    n = lens.to(torch.float64)
    d_sum = zeros_f.index_add(0, seg, shifted)
    d_sq = zeros_f.index_add(0, seg, shifted * shifted)
    var = ((d_sq - d_sum * d_sum / n.clamp(min=1)) / (n - 1).clamp(min=1)).clamp(min=0)
    std = torch.where(n > 1, var.sqrt(), 0.0)
    nonzero = zeros_i.index_add(0, seg, (vals != 0).to(torch.int64))
    is_nan = vals != vals
    nan = zeros_i.index_add(0, seg, is_nan.to(torch.int64))
    is_inf = vals.abs() == math.inf
    inf = zeros_i.index_add(0, seg, is_inf.to(torch.int64))
    if not hist_bins:
        return lo, hi, total, norm, std, nonzero, nan, inf
    finite = ~(is_nan | is_inf)
    flo = torch.full((k,), math.inf, dtype=torch.float64, device=dev).scatter_reduce_(
        0, seg, torch.where(finite, vals, math.inf), "amin")
    fhi = torch.full((k,), -math.inf, dtype=torch.float64, device=dev).scatter_reduce_(
        0, seg, torch.where(finite, vals, -math.inf), "amax")
    bins = _bin_of(vals, flo[seg], fhi[seg], hist_bins)
    slot = torch.where(finite, seg * hist_bins + bins, k * hist_bins)
    counts = torch.zeros(k * hist_bins + 1, dtype=torch.int64, device=dev).index_add_(
        0, slot, torch.ones_like(slot))[:-1].reshape(k, hist_bins)
    return lo, hi, total, norm, std, nonzero, nan, inf, flo, fhi, counts


def _bin_of(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bins: int) -> torch.Tensor:
    """Equal-width bin of each finite ``x`` over ``[lo, hi]``, ``hi`` in the last bin."""
    width = hi - lo
    scaled = torch.where(width > 0, (x - lo) / torch.where(width > 0, width, 1.0) * bins, 0.0)
    return scaled.nan_to_num(0.0, 0.0, 0.0).floor().clamp(0, bins - 1).to(torch.int64)


def _histogram(x: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """lo, hi and bin counts over the finite values of a 1-D tensor, without syncing."""
    xd = x.to(torch.float64)
    finite = torch.isfinite(xd)
    lo = torch.where(finite, xd, math.inf).amin()
    hi = torch.where(finite, xd, -math.inf).amax()
    slot = torch.where(finite, _bin_of(xd, lo, hi, bins), bins)
    counts = torch.zeros(bins + 1, dtype=torch.int64, device=x.device).index_add_(
        0, slot, torch.ones_like(slot))[:-1]
    return lo, hi, counts


def _to_host(t: torch.Tensor) -> torch.Tensor:
    """Start a non-blocking copy into pinned host memory (CUDA); valid after an event syncs."""
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    return host
