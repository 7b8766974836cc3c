"""Side B of a diff in Model Explorer: the relative difference of each op, the origin marked.

``replayer view --diff A B --viewer explorer`` and ``replayer diff A B --view`` diff the sides
(:func:`replayer.view.netron.prepare_diff`) and show side B's step with the overlay
:func:`divergence_overlay` first: each op of B that diverged, valued by its relative difference
(:attr:`replayer.diff.results.OpDivergence.score`, the largest over its outputs; an op in a
structural change 1), coloured on a log scale; the op where the divergence starts
(:attr:`replayer.diff.results.StepDiff.origin`) is coloured :data:`~replayer.view.nanpath.ORIGIN`
and the page opens on it (:meth:`replayer.view.webapp.ExplorerServer.url_for`).
"""

from __future__ import annotations

import math
import sys

from replayer.diff.results import RunDiff, StepDiff
from replayer.view.explorer import ExplorerGraph, export_step
from replayer.view.nanpath import ORIGIN
from replayer.view.netron import DiffView
from replayer.view.overlays import Overlay, node_id, scaled_colours
from tracefmt.progress import ProgressFn

__all__ = ["divergence_overlay", "explorer_diff", "origin_op", "step_diff"]

#: What a non-finite relative difference (NaN/Inf on one side) is shown as.
NONFINITE_REL = sys.float_info.max


def step_diff(result: StepDiff | RunDiff) -> StepDiff | None:
    """The step diff of a result (a run diff's first differing step), or None."""
    return result.diff if isinstance(result, RunDiff) else result


def origin_op(d: StepDiff, side: str = "b") -> int | None:
    """The index of ``side``'s op where the divergence starts, or None."""
    if d.origin is None:
        return None
    ref = d.origin.b if side == "b" else d.origin.a
    return None if ref is None else ref.index


def divergence_overlay(d: StepDiff, side: str = "b") -> Overlay:
    """Relative difference per diverged op of ``side`` (see the module docstring)."""
    values: dict[str, float] = {}
    for x in d.divergences:
        score = x.score
        values[node_id((x.b if side == "b" else x.a).index)] = (
            score if math.isfinite(score) else NONFINITE_REL
        )
    for c in d.structural:
        ref = c.b if side == "b" else c.a
        if ref is not None:
            values.setdefault(node_id(ref.index), 1.0)
    colours = scaled_colours(values, True)
    origin = origin_op(d, side)
    if origin is not None:
        values.setdefault(node_id(origin), 0.0)
        colours[node_id(origin)] = ORIGIN
    return Overlay("divergence", "relative difference (origin purple)", values, colours)


def explorer_diff(
    view: DiffView,
    *,
    phase: str = "all",
    module: str | None = None,
    progress: ProgressFn | None = None,
) -> ExplorerGraph:
    """Side B's step of ``view`` as a Model Explorer graph with the divergence overlay first and
    the page opening on the origin op (when it is among the ops shown)."""
    import tracefmt

    d = step_diff(view.result)
    extra = () if d is None else (divergence_overlay(d),)
    origin = None if d is None else origin_op(d)
    with tracefmt.open(view.path) as t:
        return export_step(
            t,
            view.step,
            rank=view.rank,
            phase=phase,
            module=module,
            progress=progress,
            extra=extra,
            focus=None if origin is None else node_id(origin),
        )
