"""The tensor pairs of one step diff: each pair compared once, and what the comparison decided.

:class:`TensorPairs` compares tensor ``i`` of side A with tensor ``j`` of side B (fingerprints
first, then :func:`replayer.diff.numeric.measure`), remembers the outcome, counts it by status and
marks the tensors that diverged.  The op walk (:mod:`replayer.diff.walk`) asks for the pairs in
the argument slots of each aligned op pair.  When both steps have the same graph shape, one pass
up front decides tensor ``i`` of A against tensor ``i`` of B from the fingerprints (bit-identical,
or a view with nothing to compare), so most ops need no comparison at all (:meth:`fast`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from replayer.diff.numeric import measure, tolerance_for
from replayer.diff.results import Counts, Distance, Status, TensorDiff, Tolerance
from tracefmt.dtypes import DType
from tracefmt.model import OpNode, Role, TensorRecord
from tracefmt.reader import Step

__all__ = ["PairResult", "TensorPairs"]

_FIRST_ROLES = (Role.PARAMETER, Role.GRADIENT, Role.OPTIMIZER_STATE)
_LABELS = {d: d.label for d in DType}
# What the same-index pass decided for a tensor index.
_LOOK, _IDENTICAL, _NOTHING = 0, 1, 2


class PairResult(NamedTuple):
    """One compared pair of tensors: its status, whether it counts as diverged, the details
    (``None`` when equal, or unknown with nothing to say)."""

    status: Status
    diverged: bool
    diff: TensorDiff | None


_EQUAL = PairResult(Status.EQUAL, False, None)
_UNKNOWN = PairResult(Status.UNKNOWN, False, None)


class TensorPairs:
    """Compared tensor pairs of steps ``a`` and ``b``.

    ``aligned(pa, pb)`` says whether op ``pa`` of A and op ``pb`` of B were aligned (an unknown
    pair made by ops that were not diverged: the data flow itself differs); ``same_graph`` turns
    on the same-index pass.
    """

    def __init__(
        self,
        a: Step,
        b: Step,
        rtol: float | None,
        atol: float | None,
        values: bool,
        aligned: Callable[[int, int], bool],
        same_graph: bool,
    ) -> None:
        self.rtol, self.atol, self.values = rtol, atol, values
        self.ta, self.tb = a.tensors, b.tensors
        self.fp_a, self.num_a = _numbers(a.tensors)
        self.fp_b, self.num_b = _numbers(b.tensors)
        self._aligned = aligned
        self.memo: dict[tuple[int, int], PairResult] = {}
        self.counts = [0, 0, 0, 0]
        #: The first differing tensor of each named role (parameter, gradient, optimizer state).
        self.firsts: dict[Role, TensorDiff] = {}
        self.diverged_a: set[int] = set()
        self.diverged_b: set[int] = set()
        #: Compared pairs whose dtype or shape differ, not yet reported as structural changes.
        self.pending: list[tuple[int, int]] = []
        self._tolerances: dict[tuple[DType, DType], Tolerance] = {}
        self.state: list[int] | None = None
        self.touched = bytearray(len(a.tensors))
        if same_graph and len(a.tensors) == len(b.tensors):
            self.state = self._same_index_states()

    def _same_index_states(self) -> list[int]:
        """Per tensor index: identical when A's and B's tensors are bit-identical (fingerprints),
        nothing when neither has anything to compare (views), else look closer."""
        out = []
        for ta, tb, fa, fb, na, nb in zip(
            self.ta, self.tb, self.fp_a, self.fp_b, self.num_a, self.num_b, strict=True
        ):
            ma, mb = ta.meta, tb.meta
            if ma.dtype is not mb.dtype or ma.shape != mb.shape:
                out.append(_LOOK)
            elif fa is not None and fb is not None:
                out.append(_IDENTICAL if fa == fb else _LOOK)
            else:
                out.append(_NOTHING if not (na and nb) else _LOOK)
        return out

    def fast(self, op: OpNode) -> bool:
        """True (and the op's tensors marked compared) when an op whose two sides have the same
        tensor indices needs no closer look: every input bit-identical or an undiverged view,
        every output bit-identical or a view."""
        state, diverged, touched = self.state, self.diverged_a, self.touched
        if state is None:
            return False
        for t in op.inputs:
            st = state[t]
            if st == _LOOK or (st == _NOTHING and t in diverged):
                return False
        for t in op.outputs:
            if state[t] == _LOOK:
                return False
        for t in op.inputs:
            touched[t] = 1
        for t in op.outputs:
            touched[t] = 1
        return True

    def _compare(self, i: int, j: int) -> tuple[Status, TensorDiff | None]:
        ta, tb = self.ta[i], self.tb[j]
        ma, mb = ta.meta, tb.meta
        same_kind = ma.dtype is mb.dtype and ma.shape == mb.shape
        if same_kind:
            fa, fb = self.fp_a[i], self.fp_b[j]
            if fa is not None and fb is not None and fa == fb:
                return Status.EQUAL, None
            if not (self.num_a[i] and self.num_b[j]):
                return Status.UNKNOWN, None
        tol = self._tolerances.get((ma.dtype, mb.dtype))
        if tol is None:
            tol = self._tolerances[ma.dtype, mb.dtype] = tolerance_for(
                ma.dtype, mb.dtype, self.rtol, self.atol
            )
        status, dist = measure(ta, tb, tol, self.values)
        if status is Status.EQUAL and not same_kind:
            status = Status.CLOSE
        if status is Status.EQUAL:
            return status, None
        if status is Status.UNKNOWN and same_kind:
            return status, None
        return status, self._tensor_diff(i, j, status, dist, inferred=False)

    def _tensor_diff(
        self, i: int, j: int, status: Status, dist: Distance | None, inferred: bool
    ) -> TensorDiff:
        ta, tb = self.ta[i], self.tb[j]
        ma, mb = ta.meta, tb.meta
        role = ma.role if ma.role is not Role.ACTIVATION else mb.role
        return TensorDiff(
            i,
            j,
            ma.name or mb.name,
            role,
            status,
            _LABELS[ma.dtype],
            _LABELS[mb.dtype],
            ma.shape,
            mb.shape,
            dist,
            ta.stats,
            tb.stats,
            inferred,
            ma.producer is None and mb.producer is None,
        )

    def _store(
        self, key: tuple[int, int], status: Status, diverged: bool, td: TensorDiff | None
    ) -> PairResult:
        i, j = key
        self.counts[status] += 1
        if status is not Status.EQUAL:
            ma, mb = self.ta[i].meta, self.tb[j].meta
            if ma.dtype is not mb.dtype or ma.shape != mb.shape:
                self.pending.append(key)
        if diverged:
            self.diverged_a.add(i)
            self.diverged_b.add(j)
            if td is None:
                td = self._tensor_diff(i, j, status, None, inferred=True)
            if not td.inferred and td.role in _FIRST_ROLES and td.role not in self.firsts:
                self.firsts[td.role] = td
        result = PairResult(status, diverged, td)
        self.memo[key] = result
        return result

    def _same(self, i: int, j: int, inputs_diverged: bool = False) -> PairResult | None:
        """The pair ``(i, i)`` decided by the same-index pass, if it was (a view made from
        diverged inputs is not: it diverged too)."""
        if i != j or self.state is None:
            return None
        st = self.state[i]
        if st == _LOOK or (st == _NOTHING and inputs_diverged):
            return None
        self.touched[i] = 1
        return _EQUAL if st == _IDENTICAL else _UNKNOWN

    def input(self, i: int, j: int) -> PairResult:
        """Tensor ``i`` of A and ``j`` of B, read by an aligned op pair."""
        key = (i, j)
        known = self.memo.get(key)
        if known is not None:
            return known
        same = self._same(i, j)
        if same is not None:
            return same
        status, td = self._compare(i, j)
        if td is not None:
            diverged = True
        elif status is Status.UNKNOWN:
            pa, pb = self.ta[i].meta.producer, self.tb[j].meta.producer
            # Entered the step on both sides: nothing says it differs.  Made by ops that were
            # not aligned with each other: the data flow itself differs.
            diverged = (pa is None) != (pb is None) or (
                pa is not None and pb is not None and not self._aligned(pa, pb)
            )
        else:
            diverged = False
        return self._store(key, status, diverged, td)

    def output(self, i: int, j: int, inputs_diverged: bool) -> PairResult:
        """Tensor ``i`` of A and ``j`` of B, written by an aligned op pair (an unknown pair
        diverged when the op read diverged inputs)."""
        key = (i, j)
        known = self.memo.get(key)
        if known is not None:
            return known
        same = self._same(i, j, inputs_diverged)
        if same is not None:
            return same
        status, td = self._compare(i, j)
        diverged = td is not None or (status is Status.UNKNOWN and inputs_diverged)
        return self._store(key, status, diverged, td)

    def take_pending(self) -> list[tuple[int, int]]:
        """The pairs with a dtype or shape change found since the last call."""
        out, self.pending = self.pending, []
        return out

    def counted(self) -> Counts:
        """Pairs compared, by status (the same-index pass's pairs counted once each)."""
        c = list(self.counts)
        if self.state is not None:
            touched = np.frombuffer(self.touched, dtype=np.uint8).astype(bool)
            for i, j in self.memo:  # counted when stored
                if i == j:
                    touched[i] = False
            state = np.asarray(self.state, dtype=np.int8)
            c[Status.EQUAL] += int(np.count_nonzero(touched & (state == _IDENTICAL)))
            c[Status.UNKNOWN] += int(np.count_nonzero(touched & (state == _NOTHING)))
        return Counts(c[Status.EQUAL], c[Status.CLOSE], c[Status.DIFFERENT], c[Status.UNKNOWN])


def _numbers(tensors: Sequence[TensorRecord]) -> tuple[list[int | None], list[bool]]:
    """Fingerprints, and whether each tensor has any numbers recorded (statistics or values;
    views and uninitialised tensors have none)."""
    fps: list[int | None] = []
    has: list[bool] = []
    for t in tensors:
        s = t.stats
        if s is None:
            fps.append(None)
            has.append(t.has_values)
        else:
            fps.append(s.fingerprint)
            has.append(
                s.fingerprint is not None
                or s.min is not None
                or s.mean is not None
                or s.norm is not None
                or t.has_values
            )
    return fps, has
