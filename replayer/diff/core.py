"""Diff two recorded steps: where they diverge first, and why.

:func:`diff_steps` aligns the ops of two steps (:mod:`replayer.diff.align`), compares every pair of
tensors the aligned ops read and write (:mod:`replayer.diff.numeric`), and walks them in
execution order to find the **origin**: the first op that read a tensor which already differed
when it entered the step (a parameter, a batch) or that read bit-identical inputs and wrote
different outputs (a random op with another seed, a nondeterministic kernel).  Structural
differences (ops only one side ran, changed dtypes, shapes, attributes) are reported apart.
The walk itself is :mod:`replayer.diff.walk`; graph helpers are in :mod:`replayer.diff.lineage`.

Tensors without statistics (views, uninitialised buffers) are *unknown*; they count as diverged
when the op that made them read diverged inputs, so a view of a changed parameter does not look
like a new origin.

Example::

    with tracefmt.open("runs/a") as ta, tracefmt.open("runs/b") as tb:
        d = diff_steps(ta.step(3), tb.step(3))
    if d.origin is not None:
        print(d.origin.message)
"""

from __future__ import annotations

import gc

from replayer.diff.lineage import attrs_differ, chain_to, find_loss
from replayer.diff.results import RunDiff, StepDiff
from replayer.diff.walk import StepWalk
from replayer.errors import ReplayError
from tracefmt.reader import Step

__all__ = ["attrs_differ", "chain_to", "diff_steps", "divergent_ops", "find_loss"]


def diff_steps(
    a: Step, b: Step, *, rtol: float | None = None, atol: float | None = None, values: bool = True
) -> StepDiff:
    """Compare step ``a`` with step ``b`` (two steps of a run, two runs, two ranks).

    ``rtol`` / ``atol`` override the per-dtype defaults of
    :data:`replayer.diff.numeric.DEFAULT_TOLERANCES`.  ``values=False`` ignores recorded values
    and measures from statistics only (faster on steps with many recorded values).
    """
    for name, x in (("rtol", rtol), ("atol", atol)):
        if x is not None and not x >= 0:
            raise ReplayError(f"{name} must be a number >= 0, not {x!r}.")
    # The walk allocates many small objects and frees none: the cyclic GC would rescan them
    # all again and again (superlinear on 100k-op steps) while finding nothing to collect.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        differ = StepWalk(a, b, rtol, atol, values)
        differ.run()
        return differ.finish()
    finally:
        if gc_was_enabled:
            gc.enable()


def divergent_ops(result: StepDiff | RunDiff, side: str = "b") -> set[int]:
    """Indices of ``side``'s ops (``"a"`` or ``"b"``) that diverge: ops with a non-identical
    output and ops involved in a structural change.  For ``replayer view --diff`` to mark.

    A :class:`RunDiff` contributes its first divergent step's diff (empty when identical).
    """
    if side not in ("a", "b"):
        raise ValueError(f"side must be 'a' or 'b', not {side!r}.")
    d = result.diff if isinstance(result, RunDiff) else result
    if d is None:
        return set()
    out = {(x.a if side == "a" else x.b).index for x in d.divergences}
    for c in d.structural:
        ref = c.a if side == "a" else c.b
        if ref is not None:
            out.add(ref.index)
    return out
