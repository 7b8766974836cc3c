"""The measuring half of light capture: a step's rows while they are measured, then a table.

:class:`StepRows` holds the rows of the step under way (:mod:`recorder.flight.lightcapture` says
what to measure).  Two paths, chosen per tensor:

* **native** (contiguous float32/bfloat16 CPU tensors): the C entry points of
  :mod:`recorder.flight.lightnative`, writing into slots of a preallocated array: one call per
  module output (about 1 us plus the pass), one per optimizer hook for all its tensors, and the
  update rows read with their parameters in one pass (no subtraction written to memory).  The
  kernel's sums (float32 blocks added in float64) would cancel in std where the mean dominates
  the spread (a LayerNorm weight near 1): the kernel then adds the centred sum of squares from
  a second pass, in float64.  When every row is one slot, the table is built by one C call too.
* **torch** (other dtypes and devices, tensor subclasses, everything when the kernel could not be
  built, a row whose sums overflowed float): :mod:`recorder.flight.lighttorch`, whose results
  stay on the device until :meth:`StepRows.table` copies them, once per device; nothing
  synchronises unless asked.

Definitions are the trace's (spec section 5.7): min, max, mean, population std and L2 norm
over the finite values; NaN and +-Inf counted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import chain

import numpy as np
import torch

from recorder.flight.lightnative import (
    CENTRED_WORD,
    CODES,
    INF_WORD,
    NAN_WORD,
    WORDS,
    Kernels,
    Plan,
    native_kernels,
    row_offsets,
)
from recorder.flight.lighttorch import CHUNK, TORCH_COLUMNS, Lengths, fill_rows, host_rows, torch_stats
from tracefmt.light import LIGHT_ROW_DTYPE, LightFlags, LightKind, empty_light_rows

__all__ = ["CHUNK", "TORCH_COLUMNS", "StepRows", "native_kernel", "torch_stats"]

#: Derive std from the kernel's sums only while variance / mean square >= this (as stats.cpu
#: and LIGHT_CANCEL in fused_stats.c).
_CANCEL = 0.1
_STRIDE = 8 * WORDS
_UPDATE, _PARAMETER = int(LightKind.UPDATE), int(LightKind.PARAMETER)
_COUNTS, _MOMENTS_FLAG = int(LightFlags.COUNTS), int(LightFlags.MOMENTS)
_OFFSETS = row_offsets(LIGHT_ROW_DTYPE)
_OFFSETS_AT = 0 if _OFFSETS is None else _OFFSETS.ctypes.data
#: A row: name, kind, numel, negate, first slot, slots, torch row (-1: none).
Row = tuple[object, int, int, bool, int, int, int]


#: The C entry points, or None: every row then takes the torch path.
native_kernel: Callable[[], Kernels | None] = native_kernels
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _no_kernel(*args: int) -> int:
    raise RuntimeError("StepRows.one needs the native kernel; this StepRows has none.")


def _odd(s: float, q: float, m: int) -> bool:
    """Whether kernel sums ``s``, ``q`` over ``m`` finite elements cannot give a row alone:
    they overflowed float, or the mean dominates the spread (std from them would cancel)."""
    finite = q < math.inf and -math.inf < s < math.inf
    return not finite or (m > 1 and q > 0 and s * s >= (1 - _CANCEL) * q * m)


class StepRows:
    """The rows of one step while it is measured; :meth:`table` turns them into light rows.

    Rows are kept as columns (:attr:`rows` reads them as :data:`Row` tuples): a kernel row
    combines slots ``[start, start + count)``; a torch row (``src >= 0``) is row ``src`` of the
    torch results.  The capture calls :meth:`one` for a module's single output tensor,
    :meth:`output` for anything else, :meth:`batch` for an optimizer's gradients or parameters,
    :meth:`copy` and :meth:`update` for its updates."""

    def __init__(self, *, native: bool = True) -> None:
        self.kernels = native_kernels() if native else None
        self._run = self.kernels.run if self.kernels is not None else _no_kernel
        self.lengths: Lengths = {}  #: kept from step to step; the capture empties it at the end
        self._slots = np.zeros((0, WORDS), dtype=np.float64)
        self.clear()
        self._room(256)

    def _room(self, more: int) -> None:
        """Make room for ``more`` slots after the used ones, and one scratch slot."""
        size = len(self._slots)
        if self.n_slots + more < size:
            return
        old, size = self._slots, max(2 * size, self.n_slots + more + 1)
        self._slots = np.zeros((size, WORDS), dtype=np.float64)
        self._slots[: len(old)] = old
        self._ints = self._slots.view(np.int64)
        self._base = self._slots.ctypes.data
        self._scratch = size - 1

    def clear(self) -> None:
        self.n_slots = 0
        # columns: list appends are the cheapest in a hook (numpy reads them at the end)
        self.names: list[int] = []
        self.kinds: list[int] = []
        self.numels: list[int] = []
        self.negate: list[bool] = []
        self.starts: list[int] = []
        self.counts: list[int] = []
        self.srcs: list[int] = []
        self.flags: dict[int, int] = {}  #: per row, when set: extra flags (INPUTS_NONFINITE)
        self._torch: list[torch.Tensor] = []
        self._n_torch = 0

    def __len__(self) -> int:
        return len(self.names)

    @property
    def rows(self) -> list[Row]:
        """The rows so far, one tuple each (for tests and debugging: the hooks never build it)."""
        cols = (self.names, self.kinds, self.numels, self.negate, self.starts, self.counts, self.srcs)
        return list(zip(*cols, strict=True))

    def _add(self, name: int, kind: int, numel: int, start: int, count: int, src: int) -> None:
        self.names.append(name)
        self.kinds.append(kind)
        self.numels.append(numel)
        self.negate.append(False)
        self.starts.append(start)
        self.counts.append(count)
        self.srcs.append(src)

    def one(self, name: int, kind: int, t: torch.Tensor, code: int) -> int:
        """Add the row of ``t``, a contiguous CPU tensor of the kernel's dtype ``code``, unless
        its sums overflowed float (-1: nothing added, :meth:`output` measures it in float64);
        else return its NaN and Inf count.  Needs the kernel."""
        k, n = self.n_slots, t.numel()
        if k + 2 > len(self._slots):
            self._room(1)
        threads = torch.get_num_threads()
        bad: int = self._run(t.data_ptr(), n, code, threads, self._base + _STRIDE * k)
        if bad >= 0:  # _add, inline: this is the hot path
            self.n_slots = k + 1
            self.names.append(name)
            self.kinds.append(kind)
            self.numels.append(n)
            self.negate.append(False)
            self.starts.append(k)
            self.counts.append(1)
            self.srcs.append(-1)
        return bad

    def repeat(self, name: int, kind: int, numel: int, slot: int) -> int:
        """Add the row of the tensor that slot ``slot`` of this step measured, unchanged since
        (a container module's output: its last submodule's); returns its NaN and Inf count."""
        k = self.n_slots
        if k + 2 > len(self._slots):
            self._room(1)
        self._slots[k] = self._slots[slot]
        self._add(name, kind, numel, k, 1, -1)
        self.n_slots = k + 1
        return int(self._ints[k, NAN_WORD] + self._ints[k, INF_WORD])

    def output(self, name: int, kind: int, tensors: Sequence[torch.Tensor]) -> int:
        """Add one row over all of ``tensors`` (floating point).  Returns how many NaN and Inf
        they held when that is known now (a native row), else -1."""
        kernels, start = self.kernels, self.n_slots
        if kernels is not None:
            self._room(len(tensors))
            k, n, bad, s, q = start, 0, 0, 0.0, 0.0
            f, i, threads = self._slots, self._ints, torch.get_num_threads()
            for t in tensors:
                size, code = t.numel(), CODES.get(t.dtype)
                n += size
                if code is None or not (t.is_cpu and type(t) in _PLAIN and t.is_contiguous()):
                    break
                if size:
                    if kernels.stats(t.data_ptr(), size, code, threads, self._base + _STRIDE * k):
                        break
                    s, q = s + f.item(k, 0), q + f.item(k, 1)
                    bad += i.item(k, NAN_WORD) + i.item(k, INF_WORD)
                    k += 1
            else:
                m = n - bad
                if k > start:
                    f[start, CENTRED_WORD] = math.nan
                if not _odd(s, q, m) or self._settle(tensors, slice(start, k), s, q, m):
                    self._add(name, kind, n, start, k - start, -1)
                    self.n_slots = k
                    return bad
        src = self._keep(torch_stats(tensors, together=True))
        self._add(name, kind, sum(t.numel() for t in tensors), 0, 0, src)
        return -1

    def _settle(self, tensors: Sequence[torch.Tensor], slots: slice, s: float, q: float, m: int) -> bool:
        """For kernel ``slots`` that :func:`_odd` flags: False if their sums overflowed; else the
        centred sum of squares of their row, into its first slot, from shifted float32 copies
        (0: all values equal)."""
        if not (q < math.inf and -math.inf < s < math.inf) or self.kernels is None:
            return False
        if self._slots[slots, 2].min() == self._slots[slots, 3].max():
            self._slots[slots.start, CENTRED_WORD] = 0.0
            return True
        mean, s2, q2, at = s / m, 0.0, 0.0, self._base + _STRIDE * self._scratch
        for t in tensors:
            x = t.detach().float() - mean
            if self.kernels.stats(x.data_ptr(), x.numel(), 0, torch.get_num_threads(), at):
                return False
            s2 += self._slots.item(self._scratch, 0)
            q2 += self._slots.item(self._scratch, 1)
        self._slots[slots.start, CENTRED_WORD] = max(q2 - s2 * s2 / m, 0.0)
        return True

    def batch(self, names: Sequence[int], kind: int, tensors: Sequence[torch.Tensor], how: Plan) -> None:
        """Add one row per tensor, read as ``how`` says: those of the kernel in one call."""
        k, first, row = len(how.numels), self.n_slots, len(self.names)
        self._room(k)
        lost = 0
        if self.kernels is not None and how.any_native:
            threads = torch.get_num_threads()
            at = self._base + _STRIDE * first
            lost = self.kernels.many(k, how.ptr_at, how.numel_at, how.code_at, threads, at)
        self._extend(names, kind, how, first)
        self.n_slots = first + k
        later = self._lost(how, first) if lost else how.torch
        if later:
            self._later(row, later, tensors)

    def copy(
        self, buffers: list[torch.Tensor], params: list[torch.Tensor], old: Plan, new: Plan
    ) -> None:
        """Copy ``params`` (read as ``new`` says) into ``buffers`` (``old``: their plan)."""
        k = len(new.numels)
        if self.kernels is not None and new.any_native:
            threads = torch.get_num_threads()
            self.kernels.copy(k, old.ptr_at, new.ptr_at, new.nbytes_at, new.code_at, threads)
        if new.torch:
            with torch.no_grad():
                torch._foreach_copy_([buffers[j] for j in new.torch], [params[j] for j in new.torch])

    def update(
        self,
        names: Sequence[int],
        buffers: list[torch.Tensor],
        params: list[torch.Tensor],
        old: Plan,
        new: Plan,
    ) -> None:
        """Add the ``UPDATE`` rows (new minus old: ``params`` less the ``buffers`` that
        :meth:`copy` filled, which this may overwrite), then the ``PARAMETER`` rows."""
        k, first, row = len(new.numels), self.n_slots, len(self.names)
        self._room(2 * k)
        lost = 0
        if self.kernels is not None and new.any_native:
            threads, at = torch.get_num_threads(), self._base + _STRIDE * first
            ptrs = (old.ptr_at, new.ptr_at, new.numel_at, new.code_at)
            lost = self.kernels.update(k, *ptrs, threads, at, at + _STRIDE * k)
        self._extend(names, _UPDATE, new, first)
        self._extend(names, _PARAMETER, new, first + k)
        self.n_slots = first + 2 * k
        later = self._lost(new, first) if lost else new.torch
        if later:  # old - new in the buffers, in their dtype, and its row negated
            with torch.no_grad():
                torch._foreach_sub_([buffers[j] for j in later], [params[j] for j in later])
            for j in later:
                self.negate[row + j] = True
            self._later(row, later, buffers)
        later = self._lost(new, first + k) if lost else new.torch
        if later:
            self._later(row + k, later, params)

    def _extend(self, names: Sequence[int], kind: int, how: Plan, first: int) -> None:
        k = len(how.numels)
        self.names.extend(names)
        self.kinds.extend([kind] * k)
        self.numels.extend(how.numels)
        self.negate.extend([False] * k)
        self.starts.extend(range(first, first + k))
        self.counts.extend(how.counts)
        self.srcs.extend([-1] * k)

    def _lost(self, how: Plan, first: int) -> list[int]:
        """The tensors of ``how`` the kernel did not read, or whose sums overflowed float."""
        sums = self._slots[first : first + len(how.numels), 0:2]
        overflowed = ~np.isfinite(sums).all(axis=1) & (how.code >= 0)
        return sorted({*how.torch, *np.flatnonzero(overflowed).tolist()})

    def _later(self, row: int, js: list[int], tensors: Sequence[torch.Tensor]) -> None:
        """Rows ``row + j`` for ``j`` in ``js``: the torch path's, by device."""
        by_device: dict[torch.device, list[int]] = {}
        for j in js:
            by_device.setdefault(tensors[j].device, []).append(j)
        for group in by_device.values():
            src = self._keep(torch_stats([tensors[j] for j in group], lengths=self.lengths))
            for offset, j in enumerate(group):
                self.counts[row + j] = 0
                self.srcs[row + j] = src + offset

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

    def table(self, pending: Sequence[int] = ()) -> np.ndarray:
        """The light rows (``LIGHT_ROW_DTYPE``); a row's name below 0 is ``pending[-1 - name]``."""
        k = len(self.names)
        if not k:
            return empty_light_rows(0)
        if self.n_slots == k and self.counts.count(1) == k and _OFFSETS is not None and self.kernels:
            return self._native_table(k, pending)  # the common case: row r is slot r
        out = np.empty(k, dtype=LIGHT_ROW_DTYPE)  # _fill sets every field
        name = _ints(self.names)
        if pending:
            unnamed = name < 0
            name[unnamed] = np.asarray(pending, dtype=np.int64)[-1 - name[unnamed]]
        out["name"], out["kind"] = name, _ints(self.kinds)
        out["numel"] = numel = _ints(self.numels)
        count = _ints(self.counts)
        if self.n_slots == k and (count == 1).all():  # the common case: row r is slot r
            f, i = self._slots[:k], self._ints[:k]
            cols = (
                f[:, 0],
                f[:, 1],
                f[:, 2],
                f[:, 3],
                i[:, NAN_WORD],
                i[:, INF_WORD],
                f[:, CENTRED_WORD],
            )
            inputs = None
        else:
            c = self._gather(count)
            cols, inputs = (c[:, 0], c[:, 1], c[:, 2], c[:, 3], c[:, 4], c[:, 5], c[:, 6]), c[:, 7]
        fill_rows(out, numel, cols, np.fromiter(self.negate, bool, k), inputs)
        for row, extra in self.flags.items():
            out["flags"][row] |= extra
        return out

    def _native_table(self, k: int, pending: Sequence[int]) -> np.ndarray:
        """:meth:`table` in one C call, for rows that are slots ``0..k-1``: one numpy call
        instead of fifty (each a few microseconds more when it runs cold, after the step)."""
        names = self.names if not pending else [n if n >= 0 else pending[-1 - n] for n in self.names]
        cols = np.fromiter(chain(names, self.kinds, self.numels, self.negate), np.int64, 4 * k)
        out = np.empty(k, dtype=LIGHT_ROW_DTYPE)
        at = (cols.ctypes.data, _OFFSETS_AT, LIGHT_ROW_DTYPE.itemsize, _COUNTS, _MOMENTS_FLAG)
        self.kernels.rows(k, self._base, *at, out.ctypes.data)  # type: ignore[union-attr]
        for row, extra in self.flags.items():
            out["flags"][row] |= extra
        return out

    def _gather(self, count: np.ndarray) -> np.ndarray:
        """:data:`TORCH_COLUMNS` of every row, from its slots or its torch row."""
        cols = np.empty((len(count), 8), dtype=np.float64)
        cols[:] = (0.0, 0.0, math.inf, -math.inf, 0.0, 0.0, math.nan, 0.0)
        start = _ints(self.starts)
        f, i = self._slots, self._ints
        one = np.flatnonzero(count == 1)
        if len(one):
            at = start[one]
            cols[one, 0:4] = f[at, 0:4]
            cols[one, 4:6] = i[at, NAN_WORD : INF_WORD + 1]
            cols[one, 6] = f[at, CENTRED_WORD]
        many = np.flatnonzero(count > 1)
        if len(many):  # reduce [start, start + count) of each, skipping what lies between
            at = np.empty(2 * len(many), dtype=np.int64)
            at[0::2], at[1::2] = start[many], start[many] + count[many]
            g, h = f[: self.n_slots + 1], i[: self.n_slots + 1]  # the scratch slot ends the last
            cols[many, 0:2] = np.add.reduceat(g[:, 0:2], at)[0::2]
            cols[many, 2] = np.minimum.reduceat(g[:, 2], at)[0::2]
            cols[many, 3] = np.maximum.reduceat(g[:, 3], at)[0::2]
            cols[many, 4:6] = np.add.reduceat(h[:, NAN_WORD : INF_WORD + 1], at)[0::2]
            cols[many, 6] = f[start[many], CENTRED_WORD]
        if self._torch:
            src = _ints(self.srcs)
            cols[src >= 0] = host_rows(self._torch)[src[src >= 0]]
        return cols


def _ints(values: list[int]) -> np.ndarray:
    return np.fromiter(values, np.int64, len(values))  # twice as fast as np.array
