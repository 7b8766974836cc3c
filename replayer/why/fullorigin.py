"""Where NaN/Inf entered a full step: the first op, in execution order, that let it in.

Three ways in, after :func:`tracefmt.nonfinite.classify_step` (spec section 6.5):

* an op **created** it (finite inputs and constants, non-finite output); one that is a
  collective (``c10d::allreduce_``) **received** it from another rank instead;
* an op **wrote it into state**: its output is a parameter, gradient or optimizer state, or it
  writes one in place through a view, and the NaN/Inf came from a constant argument (by design
  for an activation, the origin for a parameter) or from a constant tensor the step did not
  compute (``w.view(-1)[0] = inf`` copies a lifted scalar); a write that propagates a gradient's
  NaN into a parameter is not an origin;
* a parameter or optimizer state was **already non-finite when the step began** (the cause is
  in a step before: :func:`replayer.why.explain` looks there).

The first of these in execution order is the origin (a state tensor counts as met just before
its first reader).  Without one, non-finite data that entered the step (a batch) is named.
"""

from __future__ import annotations

from typing import NamedTuple

from replayer.why.stepflow import first_readers, written_state
from tracefmt.collective import is_c10d_op
from tracefmt.nonfinite import STATE_ROLES, NonfiniteOp, NonfiniteReport, Origin, classify_step
from tracefmt.reader import Step

__all__ = ["FullOrigin", "find_nonfinite_origin"]

#: Tie-break at one op: a state already non-finite is met before the op that reads it.
#: Tensors :func:`_from_constants` looks at, at most.
_MAX_WALK = 4096
_ORDER = {"state_at_start": 0, "input": 0, "state_write": 1, "created": 2, "received": 2}


class FullOrigin(NamedTuple):
    """An origin in a full step: its ``kind`` (a :data:`replayer.why.CAUSE_KINDS` key), the op
    (for a tensor that entered non-finite: its first reader, or None), and the tensor concerned
    (the output created, the state written, the state or input that entered)."""

    kind: str
    op: int | None
    tensor: int | None

    @property
    def position(self) -> tuple[float, int]:
        return (float("inf") if self.op is None else self.op, _ORDER[self.kind])


def _holds(step: Step, t: int) -> bool:
    s = step.tensors[t].stats
    return s is None or s.nan is None or bool(s.nan or s.inf)


def _from_constants(step: Step, sources: tuple[int, ...]) -> bool:
    """Whether the NaN/Inf in ``sources`` comes only from tensors the step did not compute and
    that are no state (a lifted Python scalar, a constant): no op of the step made it, no
    parameter or gradient carried it."""
    stack, seen = list(sources), set[int]()
    while stack:
        if len(seen) >= _MAX_WALK:
            return False  # too far to tell: not from a constant
        t = stack.pop()
        if t in seen or not 0 <= t < len(step.tensors):
            continue
        seen.add(t)
        rec = step.tensors[t]
        p = rec.meta.producer
        if p is None or not 0 <= p < len(step.ops):
            if rec.role in STATE_ROLES:
                return False
            continue
        if rec.stats is not None and rec.stats.nan is not None:
            return False  # measured, non-finite, computed by an op of the step
        stack.extend(i for i in step.ops[p].inputs if _holds(step, i))
    return bool(seen)


def _candidate(step: Step, o: NonfiniteOp) -> FullOrigin | None:
    op = step.ops[o.op]
    if o.origin is Origin.CREATED:
        kind = "received" if is_c10d_op(op.name) else "created"
        return FullOrigin(kind, o.op, o.outputs[0] if o.outputs else None)
    state = written_state(step, op)
    if state is None:
        return None
    if o.origin is Origin.BY_DESIGN or _from_constants(step, o.sources):
        return FullOrigin("state_write", o.op, state)
    return None


def find_nonfinite_origin(step: Step, report: NonfiniteReport | None = None) -> FullOrigin | None:
    """The origin of the step's NaN/Inf (see the module docstring), or None when no tensor of
    the step holds any (only the loss scalar, or nothing measured)."""
    report = classify_step(step) if report is None else report
    found: list[FullOrigin] = []
    for o in report.ops:
        c = _candidate(step, o)
        if c is not None:
            found.append(c)
            if c.kind in ("created", "received"):
                break  # ops come in execution order: nothing later can be earlier
    readers = first_readers(step) if report.entered else {}
    for t in report.entered:
        if step.tensors[t].role in STATE_ROLES:
            found.append(FullOrigin("state_at_start", readers.get(t), t))
    if found:
        return min(found, key=lambda f: f.position)
    data = [
        FullOrigin("input", readers.get(t), t)
        for t in report.entered
        if step.tensors[t].meta.numel > 1  # a one-element constant (a lifted -inf) is no data
    ]
    return min(data, key=lambda f: f.position) if data else None
