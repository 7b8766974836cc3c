"""Statistics of tensors on accelerators (CUDA and others): reductions that stay on the device.

Nothing here looks at a value on the host, since that would synchronise the device: each tensor
is read by a few reductions whose 0-d results stay on the device, NaN and Inf are always counted
(moments are over the finite values), and std is computed exactly, in two passes.  Small tensors
are copied into a batch and reduced together by segment.  The results of a step are stacked and
copied to pinned host memory once, at the end of the step; :class:`recorder.stats.PendingStats`
waits for the copy on the writer thread.

CPU tensors take the cheaper path in :mod:`recorder.stats.cpu`, which may look at values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from recorder.convert import CudaEvent, DeviceEvent
from recorder.stats.common import (
    _FLOATS,
    _FP_ONLY,
    _NEEDS_UPCAST,
    ALL_FLAGS,
    COUNTS,
    FINGERPRINT,
    MOMENTS,
    SMALL_NUMEL,
    Hist,
    bin_of,
    fingerprint,
    histogram,
    segment_ids,
)

__all__ = ["DeviceStats", "Part"]


class Part(NamedTuple):
    """One device's results for :func:`recorder.stats.common.fill_rows`; ``floats`` and ``ints``
    (``FLOAT_COLUMNS`` and ``INT_COLUMNS`` per tensor, flat) are host tensors, valid once the
    step's events have completed."""

    indices: list[int]
    numels: list[int]
    flags: list[int]
    floats: torch.Tensor
    ints: torch.Tensor


class _Segments(NamedTuple):
    """Per segment: the moments and counts of :func:`_segment_moments`, and the histogram when
    asked for (``counts`` None otherwise)."""

    lo: torch.Tensor
    hi: torch.Tensor
    sum: torch.Tensor
    norm: torch.Tensor
    std: torch.Tensor
    nonzero: torch.Tensor
    nan: torch.Tensor
    inf: torch.Tensor
    counts: torch.Tensor | None


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
    hists: list[Hist] = field(default_factory=list)


class DeviceStats:
    """Statistics of one step's tensors on non-CPU devices, batched per device."""

    def __init__(self, *, hist_bins: int = 0, small_numel: int = SMALL_NUMEL) -> None:
        self._hist_bins = hist_bins
        self._small_numel = small_numel
        self._devices: dict[torch.device, _DeviceBatch] = {}

    def _batch(self, device: torch.device) -> _DeviceBatch:
        batch = self._devices.get(device)
        if batch is None:
            batch = _DeviceBatch(
                torch.zeros((), dtype=torch.float64, device=device),
                torch.zeros((), dtype=torch.int64, device=device),
                torch.full((), -1.0, dtype=torch.float64, device=device),
            )
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
            batch.flags.append(FINGERPRINT)
            z = batch.zero_f
            batch.floats.extend((z, z, z, z, z))
            batch.ints.extend((batch.zero_i, batch.zero_i, batch.zero_i, fp))
            return
        if dtype not in _FLOATS:
            x = x.to(torch.float64) if dtype not in _NEEDS_UPCAST else x.float()
        nonzero = torch.count_nonzero(x)
        nan = inf = batch.zero_i
        if dtype.is_floating_point:  # looking at min and max would sync: always count
            finite = torch.isfinite(x)
            nan = (x != x).sum()
            inf = (x.abs() == math.inf).sum()
            lo = torch.where(finite, x, math.inf).amin()
            hi = torch.where(finite, x, -math.inf).amax()
            x = torch.where(finite, x, 0.0)  # moments over the finite values (spec 5.7)
            n_finite = finite.sum()
        else:
            lo, hi = torch.aminmax(x)
            n_finite = batch.zero_i + n
        total = x.sum(dtype=torch.float64)
        norm = torch.linalg.vector_norm(x, dtype=torch.float64)
        mean = total / n_finite.clamp(min=1)
        centred = x.to(torch.float64) - mean
        if dtype.is_floating_point:
            centred = torch.where(finite, centred, 0.0)
        std = (centred.square().sum() / n_finite.clamp(min=1)).sqrt()  # population, two-pass
        batch.flags.append(ALL_FLAGS)
        batch.floats.extend((lo, hi, total, norm, std))
        batch.ints.extend((nonzero, nan, inf, fp))
        if self._hist_bins:
            batch.hists.append(Hist(index, *histogram(x.reshape(-1), self._hist_bins)))

    def finish(self) -> tuple[list[Part], list[Hist], list[DeviceEvent]]:
        """Launch the batched reductions, start the copies to the host and return the pending
        result; the collector is empty afterwards."""
        parts: list[Part] = []
        hists: list[Hist] = []
        events: list[DeviceEvent] = []
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
                hist_items = [
                    Hist(h.tensor, _to_host(h.lo), _to_host(h.hi), _to_host(h.counts))
                    for h in hist_items
                ]
                event = CudaEvent()
                event.record()
                events.append(event)
            else:
                floats_t, ints_t = floats_t.cpu(), ints_t.cpu()
            parts.append(Part(batch.indices, batch.numels, batch.flags, floats_t, ints_t))
            hists.extend(hist_items)
        self._devices = {}
        return parts, hists, events

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
        moments: dict[int, int] = {}  # graph tensor -> its position in ``stats``
        stats: _Segments | None = None
        if numeric:
            groups: dict[torch.dtype, list[torch.Tensor]] = {}
            for _, c in numeric:
                groups.setdefault(c.dtype, []).append(c.reshape(-1))
            order = [i for d in groups for i, c in numeric if c.dtype == d]
            parts = []
            for d, ts in groups.items():
                joined = torch.cat(ts) if d not in _NEEDS_UPCAST else torch.cat([x.float() for x in ts])
                parts.append(joined.to(torch.float64))
            vals = torch.cat(parts)
            numel_of = {i: c.numel() for i, c in numeric}
            lens = torch.tensor([numel_of[i] for i in order], dtype=torch.int64, device=device)
            stats = _segment_moments(vals, lens, len(order), self._hist_bins)
            moments = {i: pos for pos, i in enumerate(order)}
            if stats.counts is not None:
                for pos, i in enumerate(order):
                    batch.hists.append(Hist(i, stats.lo[pos], stats.hi[pos], stats.counts[pos]))
        z_f, z_i = batch.zero_f, batch.zero_i
        for pos, (index, c) in enumerate(items):
            batch.indices.append(index)
            batch.numels.append(c.numel())
            at = moments.get(index)
            if stats is None or at is None:
                batch.flags.append(FINGERPRINT)
                batch.floats.extend((z_f, z_f, z_f, z_f, z_f))
                batch.ints.extend((z_i, z_i, z_i, fps[pos]))
                continue
            batch.flags.append(COUNTS | FINGERPRINT | (MOMENTS if c.numel() else 0))
            s = stats
            batch.floats.extend((s.lo[at], s.hi[at], s.sum[at], s.norm[at], s.std[at]))
            batch.ints.extend((s.nonzero[at], s.nan[at], s.inf[at], fps[pos]))


def _segment_word_sums(flat_bytes: torch.Tensor, byte_lens: torch.Tensor, k: int) -> torch.Tensor:
    """Fingerprints of ``k`` byte strings laid end to end (each padded to whole words)."""
    seg = segment_ids(byte_lens, k)
    starts = torch.cumsum(byte_lens, 0) - byte_lens
    pos = torch.arange(flat_bytes.numel(), device=flat_bytes.device) - starts[seg]
    words = flat_bytes.to(torch.int64) << ((pos & 7) * 8)
    return torch.zeros(k, dtype=torch.int64, device=flat_bytes.device).index_add_(0, seg, words)


def _segment_moments(vals: torch.Tensor, lens: torch.Tensor, k: int, hist_bins: int) -> _Segments:
    """min, max, sum, norm, std, nonzero, nan, inf (and with ``hist_bins`` the histogram counts
    over ``[min, max]``) of ``k`` float64 segments laid end to end; moments over the finite
    values, std two-pass."""
    seg = segment_ids(lens, k)
    dev = vals.device
    is_nan = vals != vals
    is_inf = vals.abs() == math.inf
    finite = ~(is_nan | is_inf)
    zeros_f = torch.zeros(k, dtype=torch.float64, device=dev)
    zeros_i = torch.zeros(k, dtype=torch.int64, device=dev)
    nonzero = zeros_i.index_add(0, seg, (vals != 0).to(torch.int64))
    nan = zeros_i.index_add(0, seg, is_nan.to(torch.int64))
    inf = zeros_i.index_add(0, seg, is_inf.to(torch.int64))
    n = (lens - nan - inf).to(torch.float64).clamp(min=1)  # moments over the finite values
    lo = torch.full((k,), math.inf, dtype=torch.float64, device=dev).scatter_reduce_(
        0, seg, torch.where(finite, vals, math.inf), "amin"
    )
    hi = torch.full((k,), -math.inf, dtype=torch.float64, device=dev).scatter_reduce_(
        0, seg, torch.where(finite, vals, -math.inf), "amax"
    )
    good = torch.where(finite, vals, 0.0)
    total = zeros_f.index_add(0, seg, good)
    norm = zeros_f.index_add(0, seg, good * good).sqrt()
    centred = torch.where(finite, good - (total / n)[seg], 0.0)
    std = (zeros_f.index_add(0, seg, centred * centred) / n).sqrt()  # population, two-pass
    if not hist_bins:
        return _Segments(lo, hi, total, norm, std, nonzero, nan, inf, None)
    bins = bin_of(vals, lo[seg], hi[seg], hist_bins)
    slot = torch.where(finite, seg * hist_bins + bins, k * hist_bins)
    counts = (
        torch.zeros(k * hist_bins + 1, dtype=torch.int64, device=dev)
        .index_add_(0, slot, torch.ones_like(slot))[:-1]
        .reshape(k, hist_bins)
    )
    return _Segments(lo, hi, total, norm, std, nonzero, nan, inf, counts)


def _to_host(t: torch.Tensor) -> torch.Tensor:
    """Start a non-blocking copy into pinned host memory (CUDA); valid after an event syncs."""
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    return host
