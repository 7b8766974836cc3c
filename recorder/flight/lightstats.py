"""The measuring half of light capture: a step's rows while they are measured, then a table.

:class:`StepRows` holds the rows of the step under way (:mod:`recorder.flight.lightcapture` says
what to measure).  Two paths, chosen per tensor:

* **native** (contiguous float32/bfloat16 CPU tensors): the one-pass C kernel of
  :mod:`recorder.stats.native`, called through its public entry point ``kernel_address`` and
  writing into a slot of a preallocated array: about 1 us plus the pass, half the cost of the
  ``fused_stats`` wrapper, no Python object per tensor.  Its sums (float32 blocks added in
  float64) would cancel in std where the mean dominates the spread (a LayerNorm weight near 1):
  such a row gets its centred sum of squares from a second pass over a shifted copy.
* **torch** (other dtypes and devices, tensor subclasses, everything when the kernel could not be
  built): reductions whose ``[k, 8]`` float64 results (:data:`TORCH_COLUMNS`) stay on the
  device until :meth:`StepRows.table` copies them, once per device; nothing synchronises
  unless asked.  On a device, an optimizer's tensors are reduced by segment in chunks of
  :data:`CHUNK` elements (a few dozen kernels for all; on CPU, ``segment_reduce`` is slow).

Definitions are the trace's (spec section 5.7): min, max, mean, population std and L2 norm
over the finite values; NaN and +-Inf counted.
"""

from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from recorder.stats.native import fused_stats, kernel_address
from tracefmt.light import LightFlags, empty_light_rows

__all__ = ["CHUNK", "TORCH_COLUMNS", "Plan", "StepRows", "address", "native_kernel"]
__all__ += ["plan", "torch_stats"]

#: Columns of a torch row: sums and extremes over the finite values, counts, the centred sum of
#: squares, and the module's inputs' float64 sum (non-finite: they held NaN or Inf; 0: unchecked).
TORCH_COLUMNS = ("sum", "sumsq", "min", "max", "nan", "inf", "centred", "inputs")
#: Elements reduced together by segment in one torch call (bounds its temporary copies).
CHUNK = 1 << 22
#: Derive std from the kernel's sums only while variance / mean square >= this (as stats.cpu).
_CANCEL = 0.1
#: The kernel's result (``tf_stats`` in recorder/stats/fused_stats.c), as float64 and int64
#: columns of one 9-word slot: sum, sumsq, min, max; nonzero, negzero, nan, inf, fingerprint.
_WORDS = 9
_NAN_WORD, _INF_WORD = 6, 7
_NATIVE_DTYPES = {torch.float32: 0, torch.bfloat16: 1}
_PROTOTYPE = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_void_p
)
#: ``kernel(data, n, bf16, threads, slot) -> 0`` (nonzero: refused)
Kernel = Callable[[int, int, int, int, int], int]


@functools.cache
def native_kernel() -> Kernel | None:
    """The kernel's C entry point as a ctypes function, or None (no kernel, or its result does
    not have the layout this module reads: checked once against ``fused_stats``)."""
    entry = kernel_address()
    if not entry:
        return None
    fn: Kernel = _PROTOTYPE(entry)
    x = torch.tensor([1.5, -2.0, 0.0, math.nan, math.inf, 4.0, -math.inf])
    slot = np.zeros(_WORDS, dtype=np.float64)
    if fn(x.data_ptr(), x.numel(), 0, 1, slot.ctypes.data) != 0:
        return None
    ref = fused_stats(x)
    ints = slot.view(np.int64)
    ok = ref is not None and (
        (slot[0], slot[1], slot[2], slot[3]) == (ref.sum, ref.sumsq, ref.min, ref.max)
        and (int(ints[_NAN_WORD]), int(ints[_INF_WORD])) == (ref.nan, ref.inf) == (1, 2)
    )
    return fn if ok else None


def _flat(t: torch.Tensor) -> torch.Tensor:
    x = t.detach().reshape(-1)
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


#: Segment lengths on devices, made once (a host-to-device copy may wait for the device).
Lengths = dict[tuple[torch.device, tuple[int, ...]], torch.Tensor]


def torch_stats(
    tensors: Sequence[torch.Tensor],
    *,
    together: bool = False,
    lengths: Lengths | None = None,
    segments: bool | None = None,
) -> torch.Tensor:
    """``[k, 8]`` float64 statistics (:data:`TORCH_COLUMNS`, ``inputs`` 0) of ``tensors``, one
    row each (``together``: one row for all), on their one device, without a sync.  Several
    tensors are reduced by ``segments`` (default: off CPU, where ``segment_reduce`` is slow)."""
    flats = [_flat(t) for t in tensors]
    device = flats[0].device if flats else torch.device("cpu")
    with torch.no_grad():
        if together:
            return _rows_of([x for x in flats if x.numel()], None, device)
        parts: list[torch.Tensor] = []
        group: list[torch.Tensor] = []
        chunk = CHUNK if (device.type != "cpu" if segments is None else segments) else 0
        for x in [*flats, None]:
            if group and (x is None or sum(g.numel() for g in group) + x.numel() > chunk):
                sizes = tuple(g.numel() for g in group)
                on = None
                if len(group) > 1:
                    cache = {} if lengths is None else lengths
                    on = cache.get((device, sizes))
                    if on is None:
                        on = cache[device, sizes] = torch.tensor(sizes).to(device, non_blocking=True)
                parts.append(_rows_of(group, on, device))
                group = []
            if x is not None:
                group.append(x)
        return torch.cat(parts) if parts else torch.zeros((0, 8), dtype=torch.float64)


def _rows_of(
    group: list[torch.Tensor], lengths: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """One row per tensor of ``group`` (``lengths``: by segment), or one over all of it (plain
    reductions: int64 counts, float64 sums without a float64 copy)."""
    n = sum(g.numel() for g in group)
    if not n:
        empty = [[0.0, 0.0, math.nan, math.nan, 0.0, 0.0, 0.0, 0.0]] * len(group or [0])
        return torch.tensor(empty, dtype=torch.float64).to(device, non_blocking=True)
    dtype = torch.float64 if any(g.dtype == torch.float64 for g in group) else torch.float32
    x = torch.cat([g.to(dtype) for g in group]) if len(group) > 1 else group[0]
    if lengths is None and x.device.type == "cpu":  # may look at values: no masks when finite
        a, b = (float(v) for v in torch.aminmax(x))
        if math.isfinite(a) and math.isfinite(b):
            v, u = (float(r) for r in torch.var_mean(x, correction=0))
            q = float(torch.linalg.vector_norm(x, dtype=torch.float64)) ** 2
            return torch.tensor([[u * n, q, a, b, 0.0, 0.0, v * n, 0.0]], dtype=torch.float64)

    def red(v: torch.Tensor, how: str = "sum") -> torch.Tensor:
        if lengths is None:
            r = v.sum(dtype=torch.float64) if how == "sum" else getattr(v, "a" + how)()
            return r.double().reshape(1)
        return torch.segment_reduce(v.double() if how == "sum" else v, how, lengths=lengths).double()

    finite = torch.isfinite(x)
    nan, m = red(x != x), red(finite)
    kept = torch.where(finite, x, 0.0)
    total = red(kept)
    lo, hi = red(torch.where(finite, x, math.inf), "min"), red(torch.where(finite, x, -math.inf), "max")
    mean = (total / m.clamp(min=1)).to(dtype)
    if lengths is not None:
        mean = torch.repeat_interleave(mean, lengths, output_size=x.numel())
    d = torch.where(finite, x - mean, 0.0)
    centred = red(d * d) - red(d).square() / m.clamp(min=1)  # Sum (x - mean)^2, mean's rounding removed
    inf: torch.Tensor = (x.numel() if lengths is None else lengths) - m - nan
    cols = [total, red(kept * kept), lo, hi, nan, inf, centred, torch.zeros_like(total)]
    return torch.stack(cols, dim=1)


_PLAIN = (torch.Tensor, torch.nn.Parameter)
#: Per tensor: data pointer, elements, and the kernel's dtype code (-1: the torch path).
Plan = list[tuple[int, int, int]]


def plan(tensors: Sequence[torch.Tensor], native: bool) -> Plan:
    """How :meth:`StepRows.tensors` reads each of ``tensors``; valid while their data pointers
    stay (a parameter's do: the capture keeps an optimizer's plans from step to step)."""
    out: Plan = []
    for t in tensors:
        ok = native and t.numel() and type(t) in _PLAIN and t.is_cpu and t.is_contiguous()
        out.append((address(t), t.numel(), _NATIVE_DTYPES.get(t.dtype, -1) if ok else -1))
    return out


def address(t: torch.Tensor) -> int:
    """``t``'s data pointer; 0 for a tensor subclass (which may have none)."""
    return t.data_ptr() if type(t) in _PLAIN else 0


def _odd(s: float, q: float, m: int) -> bool:
    """Whether kernel sums ``s``, ``q`` over ``m`` finite elements cannot give a row alone:
    they overflowed float, or the mean dominates the spread (std from them would cancel)."""
    finite = q < math.inf and -math.inf < s < math.inf
    return not finite or (m > 1 and q > 0 and s * s >= (1 - _CANCEL) * q * m)


class StepRows:
    """The rows of one step while it is measured; :meth:`table` turns them into light rows.

    A row is ``(name, kind, numel, negate, start, count, src)``: native rows combine kernel slots
    ``[start, start + count)``; torch rows (``src >= 0``) are row ``src`` of the torch results."""

    def __init__(self, *, native: bool = True) -> None:
        self.kernel = native_kernel() if native else None
        self.lengths: Lengths = {}  #: kept from step to step; the capture empties it at the end
        self._slots = np.zeros((0, _WORDS), dtype=np.float64)
        self.clear()
        self._room(256)

    def _room(self, more: int) -> None:
        """Make room for ``more`` slots after the used ones, and one scratch slot."""
        size = len(self._slots)
        if self.n_slots + more < size:
            return
        old, size = self._slots, max(2 * size, self.n_slots + more + 1)
        self._slots = np.zeros((size, _WORDS), dtype=np.float64)
        self._slots[: len(old)] = old
        self._ints = self._slots.view(np.int64)
        self._base = self._slots.ctypes.data
        self._scratch = size - 1

    def clear(self) -> None:
        self.n_slots = 0
        self.rows: list[tuple[object, int, int, bool, int, int, int]] = []
        #: per row, when set: extra flags (INPUTS_NONFINITE) and the centred sum of squares
        self.flags: dict[int, int] = {}
        self.centred: dict[int, float] = {}
        self._torch: list[torch.Tensor] = []
        self._n_torch = 0

    def __len__(self) -> int:
        return len(self.rows)

    # -- measuring ------------------------------------------------------------------------------

    def _settle(
        self, row: int, tensors: Sequence[torch.Tensor], slots: slice, s: float, q: float, m: int
    ) -> bool:
        """For kernel ``slots`` that :func:`_odd` flags: False if their sums overflowed; else the
        centred sum of squares of ``row`` from shifted float32 copies (0: all values equal)."""
        if not (q < math.inf and -math.inf < s < math.inf):
            return False
        if self._slots[slots, 2].min() == self._slots[slots, 3].max():
            self.centred[row] = 0.0
            return True
        kernel = self.kernel
        if kernel is None:  # only kernel rows come here; without one, the torch path measures
            return False
        mean, s2, q2, at = s / m, 0.0, 0.0, self._base + 72 * self._scratch
        for t in tensors:
            x = t.detach().float() - mean
            if kernel(x.data_ptr(), x.numel(), 0, torch.get_num_threads(), at):
                return False
            s2 += self._slots.item(self._scratch, 0)
            q2 += self._slots.item(self._scratch, 1)
        self.centred[row] = max(q2 - s2 * s2 / m, 0.0)
        return True

    def output(self, name: object, kind: int, tensors: Sequence[torch.Tensor]) -> int:
        """Add one row over all of ``tensors`` (floating point).  Returns how many NaN and Inf
        they held when that is known now (a native row), else -1."""
        kernel, start = self.kernel, self.n_slots
        if kernel is not None:
            if start + len(tensors) >= len(self._slots):
                self._room(len(tensors))
            k, n, bad, s, q = start, 0, 0, 0.0, 0.0
            f, i, threads = self._slots, self._ints, torch.get_num_threads()
            for t in tensors:
                size, code = t.numel(), _NATIVE_DTYPES.get(t.dtype)
                n += size
                if code is None or not (t.is_cpu and type(t) in _PLAIN and t.is_contiguous()):
                    break
                if size:
                    if kernel(t.data_ptr(), size, code, threads, self._base + 72 * k):
                        break
                    s, q = s + f.item(k, 0), q + f.item(k, 1)
                    bad += i.item(k, _NAN_WORD) + i.item(k, _INF_WORD)
                    k += 1
            else:
                m = n - bad
                if not _odd(s, q, m) or self._settle(len(self.rows), tensors, slice(start, k), s, q, m):
                    self.rows.append((name, kind, n, False, start, k - start, -1))
                    self.n_slots = k
                    return bad
        src = self._keep(torch_stats(tensors, together=True))
        self.rows.append((name, kind, sum(t.numel() for t in tensors), False, 0, 0, src))
        return -1

    def tensors(
        self,
        names: Sequence[object],
        kind: int,
        tensors: Sequence[torch.Tensor],
        how: Plan,
        *,
        negate: bool = False,
    ) -> None:
        """Add one row per tensor, read as :func:`plan` says (``negate``: the row of ``-t``)."""
        self._room(len(tensors))
        first_row, first = len(self.rows), self.n_slots
        k, base, kernel, threads = first, self._base, self.kernel, torch.get_num_threads()
        rows: list[tuple[object, int, int, bool, int, int, int]] = []
        later: list[int] = []
        for j, (ptr, n, code) in enumerate(how):
            if code >= 0 and kernel is not None and not kernel(ptr, n, code, threads, base + 72 * k):
                rows.append((names[j], kind, n, negate, k, 1, -1))
                k += 1
            else:
                later.append(j)
                rows.append((names[j], kind, n, negate, 0, 0, -1))
        self.n_slots = k
        if k > first:  # which kernel rows need more than the kernel's sums
            sums, bad = self._slots[first:k, :2].tolist(), self._ints[first:k, _NAN_WORD:].tolist()
            x = first
            for j, row in enumerate(rows):
                if row[5]:
                    (s, q), (nan, inf, _) = sums[x - first], bad[x - first]
                    m = row[2] - nan - inf
                    if _odd(s, q, m) and not self._settle(
                        first_row + j, [tensors[j]], slice(x, x + 1), s, q, m
                    ):
                        later.append(j)
                    x += 1
        by_device: dict[torch.device, list[int]] = {}
        for j in sorted(later):
            by_device.setdefault(tensors[j].device, []).append(j)
        for js in by_device.values():
            src = self._keep(torch_stats([tensors[j] for j in js], lengths=self.lengths))
            for offset, j in enumerate(js):
                rows[j] = (names[j], kind, how[j][1], negate, 0, 0, src + offset)
        self.rows.extend(rows)

    def _keep(self, rows: torch.Tensor) -> int:
        self._torch.append(rows)
        self._n_torch += rows.shape[0]
        return self._n_torch - rows.shape[0]

    def last_nonfinite(self) -> bool:
        """Whether the torch row :meth:`output` just added held NaN or Inf (a device syncs)."""
        return bool((self._torch[-1][0, 4] + self._torch[-1][0, 5]) > 0)

    def last_inputs(self, total: torch.Tensor) -> None:
        """Put the inputs' float64 sum on the torch row :meth:`output` just added."""
        self._torch[-1][0, 7] = total

    # -- the table ------------------------------------------------------------------------------

    def table(self, index: Sequence[int]) -> np.ndarray:
        """The light rows (``LIGHT_ROW_DTYPE``); ``index[i]`` is the name of row ``i``."""
        k = len(self.rows)
        out = empty_light_rows(k)
        if not k:
            return out
        _, kind, numel, negate, start, count, src_ = zip(*self.rows, strict=True)
        cols = np.empty((k, 8), dtype=np.float64)
        cols[:] = (0.0, 0.0, math.inf, -math.inf, 0.0, 0.0, math.nan, 0.0)
        src = np.array(src_, dtype=np.int64)
        slotted = np.flatnonzero(np.array(count) > 0)
        if len(slotted):
            at = np.array(start, dtype=np.int64)[slotted]
            f, i = self._slots[: self.n_slots], self._ints[: self.n_slots]
            cols[slotted, 0:2] = np.add.reduceat(f[:, 0:2], at)
            cols[slotted, 2] = np.minimum.reduceat(f[:, 2], at)
            cols[slotted, 3] = np.maximum.reduceat(f[:, 3], at)
            cols[slotted, 4:6] = np.add.reduceat(i[:, _NAN_WORD : _INF_WORD + 1], at)
        if self._torch:
            cols[src >= 0] = self._torch_host()[src[src >= 0]]
        for row, c2 in self.centred.items():
            cols[row, 6] = c2
        flags = np.full(k, int(LightFlags.COUNTS), dtype=np.uint8)
        for row, extra in self.flags.items():
            flags[row] |= extra
        out["name"], out["kind"], out["numel"] = index, kind, numel
        _fill(out, cols, np.array(negate, dtype=bool), flags)
        return out

    def _torch_host(self) -> np.ndarray:
        """All torch rows on the host, in order, with one copy per device."""
        host = list(self._torch)
        for device in {r.device for r in self._torch}:
            js = [j for j, r in enumerate(self._torch) if r.device == device]
            together = torch.cat([self._torch[j] for j in js]).cpu()
            sizes = [len(self._torch[j]) for j in js]
            for j, part in zip(js, torch.split(together, sizes), strict=True):
                host[j] = part
        return torch.cat(host).numpy()


def _fill(out: np.ndarray, cols: np.ndarray, neg: np.ndarray, flags: np.ndarray) -> None:
    """Moments and flags of ``out`` from the columns of :data:`TORCH_COLUMNS` (``centred`` NaN:
    derive std from the sums); ``neg`` rows describe the negated tensor."""
    total, sumsq, nan, inf, centred = cols[:, 0], cols[:, 1], cols[:, 4], cols[:, 5], cols[:, 6]
    m = out["numel"] - nan - inf
    has = m > 0
    mm = np.where(has, m, 1.0)
    mean = total / mm
    centred = np.where(np.isnan(centred), sumsq - total * mean, centred)
    flags[has] |= np.uint8(LightFlags.MOMENTS)
    flags[~np.isfinite(cols[:, 7])] |= np.uint8(LightFlags.INPUTS_NONFINITE)
    out["flags"], out["nan"], out["inf"] = flags, nan, inf
    out["min"] = np.where(has, np.where(neg, -cols[:, 3], cols[:, 2]), np.nan)
    out["max"] = np.where(has, np.where(neg, -cols[:, 2], cols[:, 3]), np.nan)
    out["mean"] = np.where(has, np.where(neg, -mean, mean), np.nan)
    out["std"] = np.where(has, np.sqrt(np.maximum(centred, 0.0) / mm), np.nan)
    out["norm"] = np.where(has, np.sqrt(np.maximum(sumsq, 0.0)), np.nan)
    # a diverging run's huge values overflow the sums: no moments then, never infinite ones
    lost = has & ~(np.isfinite(out["mean"]) & np.isfinite(out["std"]) & np.isfinite(out["norm"]))
    out["flags"][lost] &= np.uint8(~LightFlags.MOMENTS & 0xFF)
    for name in ("min", "max", "mean", "std", "norm"):
        out[name][lost] = np.nan
