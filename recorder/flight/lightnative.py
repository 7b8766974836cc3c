"""Light capture's C entry points (``tf_light_*`` and ``tf_copy_many`` in
recorder/stats/fused_stats.c) and the plans that feed them.

Why: a light row measured through the one-pass kernel costs a few microseconds of Python around
a pass of a few microseconds; the hooks' Python, not the reductions, was most of light
capture's cost on a small model.  So the kernels write straight into :class:`StepRows
<recorder.flight.lightstats.StepRows>`' slot array, an optimizer's tensors are measured by one
call over arrays of pointers (:class:`Plan`, kept from step to step while the tensors stay in
place), and an update row is read together with its parameter in one pass over the old and new
values, with no subtraction written to memory.

A slot is :data:`WORDS` 8-byte words: the kernel's ``tf_stats`` (sum, sum of squares, min, max
as float64; nonzero, -0.0, NaN and Inf counts as int64; the fingerprint) and the centred sum of
squares, NaN where the sums give it (the kernel computes it in a second pass where they would
cancel: a LayerNorm weight near 1).
"""

from __future__ import annotations

import ctypes
import functools
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from recorder.stats.native import entry_address, fused_stats

__all__ = ["CODES", "NAN_WORD", "ROW_FIELDS", "WORDS", "Kept", "Kernels", "Plan", "address"]
__all__ += ["native_kernels", "row_offsets"]

#: The kernels' dtype codes.
CODES = {torch.float32: 0, torch.bfloat16: 1}
#: Words of a slot, and where its counts and its centred sum of squares are.
WORDS = 10
NAN_WORD, INF_WORD, CENTRED_WORD = 6, 7, 9
_PLAIN = (torch.Tensor, torch.nn.Parameter)

_i64, _i32, _int, _ptr = ctypes.c_int64, ctypes.c_int32, ctypes.c_int, ctypes.c_void_p
#: ``stats(data, n, bf16, threads, slot) -> 0``: tf_stats_run, the pass alone (9 words)
Stats = Callable[[int, int, int, int, int], int]
#: ``run(data, n, bf16, threads, slot) -> NaN + Inf count, -1: sums overflowed``
Run = Callable[[int, int, int, int, int], int]
#: ``many(k, data[], n[], code[], threads, slots) -> rows whose sums overflowed``
Many = Callable[[int, int, int, int, int, int], int]
#: ``update(k, old[], new[], n[], code[], threads, update_slots, parameter_slots) -> overflows``
Update = Callable[[int, int, int, int, int, int, int, int], int]
#: ``copy(k, dst[], src[], bytes[], code[], threads)``: the tensors whose code is not negative
#: ``rows(k, slots, cols, offsets[], itemsize, counts_flag, moments_flag, out)``: light rows
Copy = Callable[[int, int, int, int, int, int], None]
Rows = Callable[[int, int, int, int, int, int, int, int], None]
_PROTOTYPES = {
    "tf_stats_run": ctypes.CFUNCTYPE(_int, _ptr, _i64, _int, _int, _ptr),
    "tf_light_run": ctypes.CFUNCTYPE(_i64, _ptr, _i64, _int, _int, _ptr),
    "tf_light_many": ctypes.CFUNCTYPE(_i64, _i64, _ptr, _ptr, _ptr, _int, _ptr),
    "tf_light_update": ctypes.CFUNCTYPE(_i64, _i64, _ptr, _ptr, _ptr, _ptr, _int, _ptr, _ptr),
    "tf_copy_many": ctypes.CFUNCTYPE(None, _i64, _ptr, _ptr, _ptr, _ptr, _int),
    "tf_light_rows": ctypes.CFUNCTYPE(None, _i64, _ptr, _ptr, _ptr, _i64, _i32, _i32, _ptr),
}


class Kernels(NamedTuple):
    """The entry points, as ctypes functions taking plain ints (addresses, counts)."""

    stats: Stats
    run: Run
    many: Many
    update: Update
    copy: Copy
    rows: Rows


@functools.cache
def native_kernels() -> Kernels | None:
    """The entry points, or None (no kernel library, or a slot that does not read as this
    module reads it: checked once against :func:`recorder.stats.native.fused_stats`)."""
    entries = {name: entry_address(name) for name in _PROTOTYPES}
    if not all(entries.values()):
        return None
    fns = Kernels(*(_PROTOTYPES[name](entry) for name, entry in entries.items()))
    x = torch.tensor([1.5, -2.0, 0.0, math.nan, math.inf, 4.0, -math.inf])
    slot = np.zeros(WORDS, dtype=np.float64)
    if fns.run(x.data_ptr(), x.numel(), 0, 1, slot.ctypes.data) != 3:
        return None
    ref = fused_stats(x)
    ints = slot.view(np.int64)
    ok = ref is not None and (
        (slot[0], slot[1], slot[2], slot[3]) == (ref.sum, ref.sumsq, ref.min, ref.max)
        and (int(ints[NAN_WORD]), int(ints[INF_WORD])) == (ref.nan, ref.inf) == (1, 2)
        and math.isnan(slot[CENTRED_WORD])
    )
    return fns if ok else None


#: The fields ``tf_light_rows`` writes, in the order of its offsets, with their types.
ROW_FIELDS = (
    ("name", "<i4"), ("kind", "|u1"), ("flags", "|u1"),
    ("min", "<f8"), ("max", "<f8"), ("mean", "<f8"), ("std", "<f8"), ("norm", "<f8"),
    ("nan", "<u8"), ("inf", "<u8"), ("numel", "<u8"),
)  # fmt: skip


def row_offsets(dtype: np.dtype) -> np.ndarray | None:
    """The offsets of :data:`ROW_FIELDS` in ``dtype`` (light rows), as ``tf_light_rows`` takes
    them; None when ``dtype`` holds other fields or types (the rows are then built by numpy)."""
    fields: Mapping[str, tuple[Any, ...]] = dtype.fields or {}
    if len(fields) != len(ROW_FIELDS) or any(
        name not in fields or fields[name][0].str != kind for name, kind in ROW_FIELDS
    ):
        return None
    return np.array([fields[name][1] for name, _ in ROW_FIELDS], dtype=np.int64)


def address(t: torch.Tensor) -> int:
    """``t``'s data pointer; 0 for a tensor subclass (which may have none)."""
    return t.data_ptr() if type(t) in _PLAIN else 0


class Plan:
    """How :class:`~recorder.flight.lightstats.StepRows` reads a list of tensors: per tensor
    its data pointer, elements and the kernel's dtype code (-1: the torch path, for other
    dtypes and devices, tensor subclasses, everything without the kernel), in the arrays the
    entry points take.  Valid while the tensors stay where they are (:meth:`holds`); a
    gradient's plan is :meth:`read` again at every step (a new gradient, a new pointer)."""

    def __init__(self, tensors: Sequence[torch.Tensor], native: bool) -> None:
        self.native = native
        self.numels = [t.numel() for t in tensors]
        k = len(self.numels)
        self.ptr = np.zeros(k, dtype=np.int64)
        self.numel = np.array(self.numels, dtype=np.int64)
        self.nbytes = np.array([t.nbytes if type(t) in _PLAIN else 0 for t in tensors], np.int64)
        self.code = np.full(k, -1, dtype=np.int32)
        #: the arrays' addresses, as the entry points take them
        self.ptr_at, self.numel_at = self.ptr.ctypes.data, self.numel.ctypes.data
        self.code_at, self.nbytes_at = self.code.ctypes.data, self.nbytes.ctypes.data
        self.ptrs: list[int] = []
        self.codes: list[int] = []
        self.read(tensors)

    def read(self, tensors: Sequence[torch.Tensor]) -> None:
        """Take ``tensors``' data pointers and dtype codes now (same numels as the plan's)."""
        ptrs: list[int] = []
        codes: list[int] = []
        native = self.native
        for t in tensors:
            if type(t) in _PLAIN:
                ptrs.append(t.data_ptr())
                ok = native and t.is_cpu and t.is_contiguous()
                codes.append(CODES.get(t.dtype, -1) if ok else -1)
            else:
                ptrs.append(0)
                codes.append(-1)
        self.ptr[:] = self.ptrs = ptrs
        if codes != self.codes:
            self.code[:] = self.codes = codes
            #: the tensors the kernel does not read, and per tensor 1 if it does
            self.torch = [j for j, c in enumerate(codes) if c < 0]
            self.counts = [int(c >= 0) for c in codes]
            self.any_native = len(self.torch) < len(codes)

    def holds(self, tensors: Sequence[torch.Tensor]) -> bool:
        """Whether ``tensors`` are still where the plan reads them (pointers and numels)."""
        ptrs = [t.data_ptr() if type(t) in _PLAIN else 0 for t in tensors]
        return ptrs == self.ptrs and [t.numel() for t in tensors] == self.numels


class Kept:
    """What light capture keeps of an optimizer from step to step: the parameters it steps
    (those with a gradient) and their name indices ``names``, how to read them (``where``) and
    their gradients (``grads``), and with ``updates`` the buffers for their old values (one
    contiguous copy of each) and how to write those (``buffer_where``)."""

    def __init__(
        self, params: list[torch.Tensor], names: list[int], native: bool, *, updates: bool
    ) -> None:
        self.params, self.names, self.native = params, names, native
        self.where, self.grads = Plan(params, native), Plan(params, native)
        self.buffers: list[torch.Tensor] = []
        if updates:
            self.buffers = [torch.empty_like(p, memory_format=torch.contiguous_format) for p in params]
        self.buffer_where = Plan(self.buffers, native)

    def steps(self, params: list[torch.Tensor]) -> bool:
        """Whether ``params`` are the parameters kept, in order."""
        return len(params) == len(self.params) and all(map(operator.is_, params, self.params))

    def in_place(self) -> bool:
        """Whether the parameters are where ``where`` reads them, after reading them again if
        they moved; False if one changed size (its buffer no longer fits)."""
        if self.where.holds(self.params):
            return True
        where = Plan(self.params, self.native)
        if where.numels != self.where.numels:
            return False
        self.where = where
        return True
