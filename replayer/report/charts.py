"""The report's timelines: loss and scalars, step time, and per-module norms across the run.

Each chart is ``replayer timeline``'s figure (:mod:`replayer.plots`) as PNG bytes.  Per-module
charts show the *leaf* modules (no module of the selection below them: the layers that hold the
parameters, not the containers whose norms add theirs up), the ``limit`` with the largest values.
A chart the run has no data for becomes a note saying why instead of failing the page.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from replayer.errors import ReplayError
from replayer.plots import Timeline, TimelineOptions, read_timeline, timeline_figure
from tracefmt.columns import Selection, scalar_names
from tracefmt.errors import TraceError
from tracefmt.reader import Trace

__all__ = ["Chart", "ChartSpec", "leaf_series", "run_charts"]


@dataclass(frozen=True)
class ChartSpec:
    """One chart: ``metric`` over ``selection``; ``leaves``: keep the ``limit`` leaf modules."""

    title: str
    metric: str
    selection: Selection = dataclasses.field(default_factory=Selection)
    leaves: bool = False


@dataclass(frozen=True)
class Chart:
    """A drawn chart (``png``) or why there is none (``png`` empty, ``note`` says why)."""

    title: str
    png: bytes
    caption: str
    note: str = ""


def leaf_series(tl: Timeline, limit: int) -> Timeline:
    """``tl`` with only its leaf modules' series (a label no other label extends with ``.``), the
    ``limit`` whose largest value is largest, in their original order."""
    labels = list(tl.labels)
    leaves = [
        i
        for i, label in enumerate(labels)
        if label != "<root>" and not any(o.startswith(label + ".") for o in labels if o != label)
    ]
    if not leaves:
        return tl
    with np.errstate(all="ignore"):
        peak = [
            np.nanmax(
                np.where(np.isfinite(tl.values[:, i, :]), tl.values[:, i, :], np.nan), initial=-np.inf
            )
            for i in leaves
        ]
    ranked = sorted(range(len(leaves)), key=lambda k: -peak[k])[:limit]
    keep = sorted(leaves[k] for k in ranked)
    left = len(leaves) - len(keep)
    notes = (*tl.notes, f"{left} more leaf modules not drawn (smaller values).") if left else tl.notes
    return dataclasses.replace(
        tl, labels=tuple(labels[i] for i in keep), values=tl.values[:, keep, :], notes=notes
    )


def _png(tl: Timeline) -> bytes:
    fig = timeline_figure(tl)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def _specs(trace: Trace, rank: int) -> list[ChartSpec]:
    specs = [ChartSpec("Loss", "loss"), ChartSpec("Step time", "step_time")]
    specs += [
        ChartSpec(f"Scalar {name!r}", f"scalar:{name}")
        for name in scalar_names(trace, rank=rank)
        if name != "loss"
    ][:4]
    every = Selection(module="*", phase="backward")
    specs.append(ChartSpec("Gradient norm per module", "norm", every, leaves=True))
    specs.append(
        ChartSpec("Output norm per module", "norm", Selection(module="*", phase="forward"), leaves=True)
    )
    if trace.light_summaries(rank):
        specs.append(
            ChartSpec(
                "Update / parameter norm per module", "update_ratio", Selection(module="*"), leaves=True
            )
        )
    return specs


def run_charts(
    trace: Trace, rank: int, limit: int, specs: Sequence[ChartSpec] | None = None
) -> list[Chart]:
    """The report's charts of ``rank`` (``specs``, default: loss, step time, up to four more
    scalars, per-module gradient and output norms, and update ratios where light steps exist)."""
    charts = []
    for spec in _specs(trace, rank) if specs is None else specs:
        options = TimelineOptions(
            metric=spec.metric,
            selection=spec.selection,
            ranks=(rank,),
            max_lines=10_000 if spec.leaves else 20,
        )
        try:
            tl = read_timeline(trace, options)
            if spec.leaves:
                tl = leaf_series(tl, limit)
            charts.append(
                Chart(spec.title, _png(tl), tl.title + ("; " + " ".join(tl.notes) if tl.notes else ""))
            )
        except (TraceError, ReplayError) as e:
            charts.append(Chart(spec.title, b"", "", note=f"{spec.title}: not drawn. {e}"))
    return charts
