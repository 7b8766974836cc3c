"""The NaN-path overlay: the ops on the data flow from the op where NaN/Inf entered to the loss.

When a step's flags say it holds NaN or Inf (a flight-recorded run records the step a trigger
fired in, in full), :func:`replayer.why.find_nonfinite_origin` names where it entered (the op
that created it, wrote it into state, or first read a tensor that entered non-finite) and
:func:`replayer.diff.lineage.find_loss` the loss tensor.  The path is every op that lies on some
data-flow path from the origin op to the op that made the loss: reachable from the origin along
the tensors ops read, and reaching the loss the same way.  When the loss does not depend on the
origin (NaN created in the backward pass or the optimizer, after the loss), the path is the
origin and the ops downstream of it that hold NaN/Inf instead, and the overlay's name says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from replayer.diff.lineage import find_loss
from replayer.view.overlays import HIGH, Overlay, node_id
from replayer.why import find_nonfinite_origin
from tracefmt.model import OpNode
from tracefmt.reader import Step

__all__ = ["ORIGIN", "NanPath", "nan_path", "nan_path_overlay"]

#: The colour of the origin op (in the NaN-path and divergence overlays).
ORIGIN = "#7b3294"


@dataclass(frozen=True)
class NanPath:
    """Where NaN/Inf entered (``origin``, an op index; ``kind`` as :mod:`replayer.why` says),
    the ops of the path (``ops``, in execution order, the origin first) and whether it reaches
    the loss (false: the path is the origin's non-finite descendants)."""

    origin: int
    kind: str
    ops: tuple[int, ...]
    to_loss: bool


def _holds_nonfinite(step: Step, op: OpNode) -> bool:
    for t in op.outputs:
        if 0 <= t < len(step.tensors):
            st = step.tensors[t].stats
            if st is not None and (st.nan or st.inf):
                return True
    return False


def nan_path(step: Step) -> NanPath | None:
    """The path of the step's NaN/Inf (see the module docstring), or None when the step's flags
    say it holds none or no op is where it entered."""
    if not (step.has_nan or step.has_inf):
        return None
    origin = find_nonfinite_origin(step)
    if origin is None or origin.op is None or not 0 <= origin.op < len(step.ops):
        return None
    ops = step.ops
    start = origin.op
    # Downstream: ops after the origin that read a tensor made on the way.
    reached = {start}
    tainted = set(ops[start].outputs)
    for k in range(start + 1, len(ops)):
        if any(t in tainted for t in ops[k].inputs):
            reached.add(k)
            tainted.update(ops[k].outputs)
    loss = find_loss(step)
    target = None if loss is None else step.tensors[loss].meta.producer
    if target is not None and target in reached:
        # Upstream of the loss's producer, within the downstream set.
        path = {target}
        needed = set(ops[target].inputs)
        for k in range(target - 1, start - 1, -1):
            if k in reached and any(t in needed for t in ops[k].outputs):
                path.add(k)
                needed.update(ops[k].inputs)
        return NanPath(start, origin.kind, tuple(sorted(path)), True)
    held = {k for k in reached if k == start or _holds_nonfinite(step, ops[k])}
    return NanPath(start, origin.kind, tuple(sorted(held)), False)


def nan_path_overlay(path: NanPath, selected: Sequence[OpNode]) -> Overlay:
    """The overlay of ``path`` over the ``selected`` ops (those not shown are left out): the
    origin 2 (coloured :data:`ORIGIN`), the other ops of the path 1 (:data:`HIGH`)."""
    shown = {op.index for op in selected}
    values = {node_id(k): 2.0 if k == path.origin else 1.0 for k in path.ops if k in shown}
    colours = {n: ORIGIN if v == 2.0 else HIGH for n, v in values.items()}
    name = "NaN path to loss" if path.to_loss else "NaN path (loss not reached)"
    return Overlay("nan_path", name, values, colours)
