"""Where a spike starts in a full step: the first op whose statistics departed from the step before.

:func:`replayer.diff.diff_steps` aligns the two steps' ops (structural changes included) and
pairs the tensors each aligned op wrote; this module reads those pairs.  A tensor's *departure*
is the factor by which its norm, or its largest magnitude, changed (:func:`departure`: NaN/Inf
that appears is an infinite one).  An op **departed** when its outputs moved by at least the
ratio and by the ratio more than its inputs did (so the ops downstream of the first do not count
again); an op only this step ran (the spike injected as ``loss * 20``) moved its output by how
much it scaled its input.  A parameter or optimizer state that entered the step already departed
counts just before its first reader.  The first of these in execution order is the origin; when
none moved by the ratio, the op that moved most is named instead.

Training moves every tensor a little from one step to the next: the diff's tolerances would call
them all different, so the factor, not the tolerance, decides here.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol

from replayer.diff import diff_steps
from replayer.why.stepflow import first_readers, is_floating
from tracefmt.model import Role, TensorRecord
from tracefmt.reader import Step

__all__ = ["Departure", "Measured", "departure", "find_departure"]

#: Roles of tensors entering a step that carry training state from the step before.
_CARRIED = frozenset({Role.PARAMETER, Role.BUFFER, Role.OPTIMIZER_STATE})
#: Magnitudes below this are zero for the ratio (a tensor at 0 then at 1e-40 did not depart).
_TINY = 1e-30


class Measured(Protocol):
    """Statistics as :class:`tracefmt.TensorStats` and :class:`tracefmt.LightRow` hold them."""

    @property
    def min(self) -> float | None: ...
    @property
    def max(self) -> float | None: ...
    @property
    def norm(self) -> float | None: ...
    @property
    def nan(self) -> int | None: ...
    @property
    def inf(self) -> int | None: ...


def _factor(x: float | None, y: float | None) -> float | None:
    if x is None or y is None or math.isnan(x) or math.isnan(y):
        return None
    lo, hi = sorted((abs(x), abs(y)))
    if hi <= _TINY or lo == hi:
        return 1.0
    return math.inf if lo <= _TINY else hi / lo


def _magnitude(s: Measured) -> float | None:
    if s.min is None or s.max is None or math.isnan(s.min) or math.isnan(s.max):
        return None
    return max(abs(s.min), abs(s.max))


def departure(before: Measured | None, after: Measured | None) -> float | None:
    """The factor (>= 1) by which ``after``'s norm or largest magnitude differs from
    ``before``'s; ``inf`` when NaN/Inf appears; None when nothing is measured on both sides."""
    if before is None or after is None:
        return None
    counted = before.nan is not None and after.nan is not None
    if counted and (after.nan or after.inf) and not (before.nan or before.inf):
        return math.inf
    factors = [
        f
        for f in (_factor(before.norm, after.norm), _factor(_magnitude(before), _magnitude(after)))
        if f is not None
    ]
    return max(factors) if factors else None


class Departure(NamedTuple):
    """A departure in a full step: ``kind`` (``departure``, ``state_departure`` or
    ``largest_departure``), the op (for a state: its first reader), the tensor that departed
    most there, its factor, the op of the step before aligned with it (None: this step alone
    ran it, or a state), and the tensors that departed (for the path to the loss)."""

    kind: str
    op: int | None
    tensor: int
    ratio: float
    before_op: int | None
    before_tensor: int | None
    departed: frozenset[int]
    added: bool = False


def _entered_state(prev: Step, cur: Step) -> dict[int, int]:
    """Tensors of ``cur`` entering it as carried state, paired by name with ``prev``'s."""
    named = {
        t.name: t.index
        for t in prev.tensors
        if t.meta.producer is None and t.name and t.role in _CARRIED
    }
    return {
        t.index: named[t.name]
        for t in cur.tensors
        if t.meta.producer is None and t.name in named and t.role in _CARRIED and is_floating(t)
    }


def _norm(t: TensorRecord) -> float:
    return 0.0 if t.stats is None or t.stats.norm is None else t.stats.norm


def find_departure(prev: Step, cur: Step, ratio: float) -> Departure | None:
    """The first op (or carried state) of ``cur`` whose statistics departed from ``prev``'s by
    ``ratio`` (see the module docstring); None when nothing moved at all."""
    d = diff_steps(prev, cur, values=False)
    pairs = {o.b: o for dv in d.divergences for o in dv.outputs}
    before_op = {dv.b.index: dv.a.index for dv in d.divergences}
    added = {c.b.index for c in d.structural if c.kind == "added" and c.b is not None}
    dep: dict[int, float] = {}
    found: list[tuple[float, int, Departure]] = []
    readers = first_readers(cur)
    for t, a in _entered_state(prev, cur).items():
        f = departure(prev.tensors[a].stats, cur.tensors[t].stats)
        dep[t] = 1.0 if f is None else f
        if f is not None and f >= ratio:
            reader = readers.get(t)
            at = math.inf if reader is None else reader
            found.append((at, 0, Departure("state_departure", reader, t, f, None, a, frozenset())))
    first_op: Departure | None = None
    best: tuple[float, int, int] | None = None  # factor, op, tensor
    for op in cur.ops:
        floats = [i for i in op.inputs if is_floating(cur.tensors[i])]
        moved_in = max((dep.get(i, 1.0) for i in floats), default=1.0)
        out_best: tuple[float, int] | None = None
        for t in op.outputs:
            rec = cur.tensors[t]
            if not is_floating(rec):
                continue
            if op.index in added:  # no counterpart: how much the op scaled its largest input
                scale = (
                    departure(max((cur.tensors[i] for i in floats), key=_norm).stats, rec.stats)
                    if floats
                    else None
                )
                f = moved_in * (1.0 if scale is None else scale)
            elif t in pairs:
                g = departure(pairs[t].stats_a, pairs[t].stats_b)
                f = moved_in if g is None else g
            else:
                f = 1.0  # bit-identical to the step before
            dep[t] = f
            if out_best is None or f > out_best[0]:
                out_best = (f, t)
        if out_best is None:
            continue
        f, t = out_best
        if best is None or f > best[0]:
            best = (f, op.index, t)
        if first_op is None and f >= ratio and f >= ratio * moved_in:
            pair = pairs.get(t)
            first_op = Departure(
                "departure",
                op.index,
                t,
                f,
                before_op.get(op.index),
                None if pair is None else pair.a,
                frozenset(),
                op.index in added,
            )
            found.append((op.index, 1, first_op))
    departed = frozenset(t for t, f in dep.items() if f >= ratio)
    if found:
        return min(found, key=lambda x: (x[0], x[1]))[2]._replace(departed=departed)
    if best is None or best[0] <= 1.0:
        return None
    f, k, t = best
    pair = pairs.get(t)
    return Departure(
        "largest_departure",
        k,
        t,
        f,
        before_op.get(k),
        None if pair is None else pair.a,
        departed,
        k in added,
    )
